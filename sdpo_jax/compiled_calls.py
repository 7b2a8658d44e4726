"""A recorder of the jitted programs a run calls, and with which argument shapes, dtypes and shardings.

Every call site of an RL-loop program reports itself here just before the call:

    compiled_calls.note("train_step", (state, batch))

which costs nothing unless a `capture()` is active. `tests/test_aot.py` captures a short run of the loop
and checks that `sdpo_jax.programs.run_programs` (what the ahead-of-time tool compiles) builds exactly
these calls, so a change to the loop's shapes cannot leave the tool behind. The names are those of
`PROGRAM_NAMES`.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

import jax

PROGRAM_NAMES = ("train_step", "old_logprobs", "teacher_update", "prefill", "decode", "eval_prefill",
                 "eval_decode", "best_of_k_prefill", "best_of_k_decode", "multi_turn_prefill", "multi_turn_decode")

_active: list | None = None


@dataclasses.dataclass(frozen=True)
class CallSignature:
    """One program call: its name, the flat (shape, dtype, sharding) of every array argument, and the
    static arguments (by value)."""
    name: str
    arrays: tuple
    static: tuple

    def matches(self, other: "CallSignature") -> bool:
        """Same name, statics, shapes and dtypes, and equivalent shardings (device lists may differ)."""
        if (self.name, self.static, len(self.arrays)) != (other.name, other.static, len(other.arrays)):
            return False
        for (shape, dtype, sharding), (shape2, dtype2, sharding2) in zip(self.arrays, other.arrays):
            if (shape, dtype) != (shape2, dtype2):
                return False
            if (sharding is None) != (sharding2 is None):
                return False
            if sharding is not None and _spec(sharding, len(shape)) != _spec(sharding2, len(shape)):
                return False
        return True


def _spec(sharding, ndim: int) -> tuple:
    """A device-independent view of a sharding: "replicated", or the mesh axis sizes and, per dimension,
    the mesh axes (of size > 1) that split it."""
    if sharding.is_fully_replicated:
        return ("replicated",)
    mesh = getattr(sharding, "mesh", None)
    if mesh is None:  # not a NamedSharding: compare its text
        return (str(sharding),)
    sizes = dict(mesh.shape)
    spec = tuple(sharding.spec) + (None,) * (ndim - len(sharding.spec))
    dims = []
    for entry in spec:
        axes = entry if isinstance(entry, tuple) else (() if entry is None else (entry,))
        dims.append(tuple(a for a in axes if sizes[a] > 1))
    return tuple(sorted(sizes.items())), tuple(dims)


def signature(name: str, args: Any, static: dict | None = None) -> CallSignature:
    """The CallSignature of calling program `name` on `args` (arrays or ShapeDtypeStructs)."""
    arrays = tuple((tuple(x.shape), str(x.dtype), getattr(x, "sharding", None)) for x in jax.tree.leaves(args))
    return CallSignature(name, arrays, tuple(sorted((static or {}).items())))


def note(name: str, args: Any, static: dict | None = None) -> None:
    """Report a call of program `name` (recorded only inside `capture()`)."""
    if _active is not None:
        if name not in PROGRAM_NAMES:
            raise ValueError(f"compiled_calls.note: unknown program {name!r}; one of {PROGRAM_NAMES}")
        _active.append(signature(name, args, static))


@contextlib.contextmanager
def capture():
    """Record every `note` inside the block; yields the list of CallSignatures (in call order)."""
    global _active
    previous, _active = _active, []
    try:
        yield _active
    finally:
        _active = previous
