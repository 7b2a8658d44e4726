"""Matmul FLOPs of a compiled XLA program per device, loop bodies counted as many times as they run.

XLA's `compiled.cost_analysis()` counts the body of a `while` loop (a layer scan, the vocabulary-chunk
and attention-block scans, the decode loop) once. `compile_counting_flops(lowered)` compiles with XLA
dumping the module right after SPMD partitioning (per-device shapes; matmuls still `dot`s: TPU's later
passes rewrite batched dots into windowed convolutions whose padded taps a simple count would include)
and `count_flops` sums 2 x (output elements) x (contracted elements) over every `dot` (and
`convolution`) of that text, each weighted by how often its computation runs: a fusion, call or
reduction computation once per call site, a `while` body (and condition) times its trip count. The
same weights give `collective_bytes`: the output bytes of every all-gather, all-reduce, reduce-scatter,
all-to-all and collective-permute (what crosses the interconnect, roughly).

Trip counts: the condition's `compare(counter, constant(N)), direction=LT` (what `lax.scan`, `fori_loop`
and a `while_loop` with a bound lower to). A condition that combines the bound with a data-dependent
test (the decode loop stops early when every row is done) still has that compare, so its count is the
bound: an upper limit, flagged in `HloFlops.bounded_loops`. A loop with no such compare counts once and
is listed in `HloFlops.unknown_loops`.

Not counted: element-wise work (norms, softmax, activations: a few percent of a transformer's FLOPs)
and custom calls (Pallas / Mosaic kernels such as splash attention, whose FLOPs XLA cannot see;
listed in `HloFlops.custom_calls`).
"""

from __future__ import annotations

import dataclasses
import glob
import math
import os
import re
import tempfile
from collections import defaultdict

_COMPUTATION = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s+\(.*\)\s+->\s+.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(ROOT\s+)?%?([\w.\-]+)\s+=\s+(.*?)\s+([\w\-]+)\((.*)$")
_ARRAY = re.compile(r"^[a-z]\w*\[([\d,]*)\]")
_CALLS = re.compile(r"(?:calls|to_apply|body|condition)=%?([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_TARGET = re.compile(r'custom_call_target="([^"]+)"')
_COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")
_ITEM_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2, "f32": 4, "s32": 4, "u32": 4,
               "f64": 8, "s64": 8, "u64": 8}


def _array_bytes(shape_text: str) -> int:
    """Bytes of an array shape or of every array in a tuple shape."""
    return sum(_ITEM_BYTES.get(kind, 4) * math.prod(int(d) for d in dims.split(",") if d)
               for kind, dims in re.findall(r"([a-z]\w*)\[([\d,]*)\]", shape_text))


@dataclasses.dataclass
class HloFlops:
    """flops: matmul FLOPs per device with loops expanded; collective_bytes: what its collectives produce per
    device (a proxy for interconnect traffic); the rest say what the count could not see."""
    flops: float
    collective_bytes: float  # bytes the device's collectives produce (all-gather, all-reduce, ...), loops expanded
    bounded_loops: list[str]  # while loops that may stop before their bound (counted at the bound)
    unknown_loops: list[str]  # while loops without a constant bound (counted once)
    custom_calls: list[str]  # custom-call targets (their FLOPs are not counted)


def _dims(shape_text: str) -> list[int] | None:
    match = _ARRAY.match(shape_text.strip())
    if match is None:
        return None
    return [int(d) for d in match.group(1).split(",") if d]


def _operands(args: str) -> list[str]:
    """Operand names of `op(%a, %b), attr=...` (the text after the opening parenthesis)."""
    depth, end = 1, len(args)
    for i, ch in enumerate(args):
        depth += ch == "("
        depth -= ch == ")"
        if depth == 0:
            end = i
            break
    return re.findall(r"%([\w.\-]+)", args[:end])


def _attr(args: str, name: str) -> str | None:
    match = re.search(name + r"=\{?([^},\s]*(?:,[^},\s]*)*)\}?", args)
    return match.group(1) if match else None


def _matmul_flops(op: str, out: list[int], args: str, shapes: dict[str, list[int]]) -> float:
    names = _operands(args)
    if op == "dot":
        lhs = shapes.get(names[0]) if names else None
        contracting = _attr(args, "lhs_contracting_dims")
        if lhs is None or contracting is None:
            return 0.0
        inner = math.prod(lhs[int(d)] for d in contracting.split(",") if d)
        return 2.0 * math.prod(out) * inner
    # convolution: every output element is a dot over the kernel's input-feature and spatial dims
    kernel = shapes.get(names[1]) if len(names) > 1 else None
    labels = re.search(r"dim_labels=\w*_(\w+)->", args)
    if kernel is None or labels is None:
        return 0.0
    kernel_labels = labels.group(1)
    reduced = math.prod(size for size, label in zip(kernel, kernel_labels) if label != "o")
    return 2.0 * math.prod(out) * reduced


def _trip_count(condition_lines: list[str]) -> tuple[int | None, bool]:
    """(bound N of `counter < N`, whether the condition also tests something else)."""
    constants, bound, root_is_compare = {}, None, False
    for line in condition_lines:
        match = _INSTRUCTION.match(line)
        if match is None:
            continue
        root, name, _, op, args = match.groups()
        if op == "constant":
            value = re.match(r"\s*(-?\d+)\)", args)
            if value:
                constants[name] = int(value.group(1))
        elif op == "compare" and "direction=LT" in args:
            names = _operands(args)
            if len(names) == 2 and names[1] in constants:
                bound = constants[names[1]]
                root_is_compare = root_is_compare or bool(root)
    return bound, bound is not None and not root_is_compare


def count_flops(hlo_text: str) -> HloFlops:
    """Matmul FLOPs and collective bytes per device of an HLO module's text, loops expanded."""
    bodies: dict[str, list[str]] = {}
    entry, current = None, None
    for line in hlo_text.splitlines():
        header = _COMPUTATION.match(line)
        if header:
            current = header.group(2)
            bodies[current] = []
            entry = current if header.group(1) else entry
        elif line.strip() == "}":
            current = None
        elif current is not None:
            bodies[current].append(line)
    if entry is None:
        raise ValueError("count_flops: no ENTRY computation in the HLO text")

    shapes: dict[str, list[int]] = {}
    parsed: dict[str, list[tuple]] = {}
    for name, lines in bodies.items():
        parsed[name] = []
        for line in lines:
            match = _INSTRUCTION.match(line)
            if match is None:
                continue
            _, inst, shape_text, op, args = match.groups()
            dims = _dims(shape_text)
            if dims is not None:
                shapes[inst] = dims
            parsed[name].append((inst, op, dims, args, shape_text))

    flops_of, calls_of = defaultdict(float), defaultdict(list)  # computation -> own FLOPs / (callee, times)
    moved_of = defaultdict(float)  # computation -> bytes its collectives produce
    bounded, unknown, custom = [], [], []
    for name, instructions in parsed.items():
        for inst, op, dims, args, shape_text in instructions:
            if op in ("dot", "convolution") and dims is not None:
                flops_of[name] += _matmul_flops(op, dims, args, shapes)
            if op.removesuffix("-start") in _COLLECTIVES:
                moved_of[name] += _array_bytes(shape_text)
            if op == "custom-call":
                target = _TARGET.search(args)
                custom.append(target.group(1) if target else inst)
            if op == "while":
                cond = re.search(r"condition=%?([\w.\-]+)", args).group(1)
                body = re.search(r"body=%?([\w.\-]+)", args).group(1)
                trips, early_exit = _trip_count(bodies.get(cond, []))
                if trips is None:
                    unknown.append(inst)
                elif early_exit:
                    bounded.append(f"{inst} (<= {trips} trips)")
                calls_of[name] += [(body, trips or 1), (cond, (trips or 0) + 1)]
                continue
            branches = _BRANCHES.search(args)
            if branches:  # a conditional runs one branch: count the costliest
                calls_of[name].append((tuple(b.strip().lstrip("%") for b in branches.group(1).split(",")), 1))
            calls_of[name] += [(callee, 1) for callee in _CALLS.findall(args)]

    def expanded(own: dict) -> float:
        memo: dict[str, float] = {}

        def total(name: str, depth: int = 0) -> float:
            if name not in memo:
                if depth > 200:
                    raise ValueError(f"count_flops: call depth over 200 at {name}")
                memo[name] = own[name]
                for callee, times in calls_of[name]:
                    options = callee if isinstance(callee, tuple) else (callee,)
                    memo[name] += times * max((total(c, depth + 1) for c in options if c in bodies), default=0.0)
            return memo[name]

        return total(entry)

    return HloFlops(expanded(flops_of), expanded(moved_of), bounded, unknown, sorted(set(custom)))


def compile_counting_flops(lowered):
    """(compiled, HloFlops): `lowered.compile()` with the module dumped after SPMD partitioning (a
    temporary directory, removed), counted by `count_flops`."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    cache_was_on = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)  # a cached executable is not compiled: no dump
    compilation_cache.reset_cache()  # JAX decides once per process whether the cache is used
    try:
        with tempfile.TemporaryDirectory(prefix="sdpo_jax_hlo_") as directory:
            compiled = lowered.compile(compiler_options={
                "xla_dump_to": directory, "xla_dump_hlo_as_text": True, "xla_dump_hlo_pass_re": "spmd-partitioning"})
            return compiled, _count_dump(directory, compiled)
    finally:
        jax.config.update("jax_enable_compilation_cache", cache_was_on)
        compilation_cache.reset_cache()


def _count_dump(directory: str, compiled) -> HloFlops:
    dumps = sorted(glob.glob(os.path.join(directory, "*after_spmd-partitioning*.txt"))
                   + glob.glob(os.path.join(directory, "*after_tpu-spmd-partitioning*.txt")))
    if not dumps:  # a backend without an SPMD pass (one device): the optimized module
        return count_flops(compiled.as_text())
    with open(dumps[-1]) as f:
        return count_flops(f.read())
