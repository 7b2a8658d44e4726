"""The jitted programs one RL run executes, built from its resolved settings alone (`ProgramShapes`, made by
`setup.program_shapes`): abstract arguments (shapes, dtypes, shardings), no weights, tokenizer or data.

    shapes = setup.program_shapes(cfg)                # the config resolved by set-up, nothing else
    programs = run_programs(shapes, model_cfg, mesh)
    compiled = programs[0].compile()

For each program the loop (`sdpo_jax.train`) calls: the loop's own jitted function, its arguments at
the largest shapes the config allows (the largest prompt / teacher-prompt / completion buckets; the
rows a mini-batch is padded to), how often one RL step calls it, and the arrays the loop keeps on
device while it runs that are not its arguments (`resident`, for the peak memory). Programs:

    prefill, decode            the rollout (sampling.generate), once per step
    old_logprobs               once per mini-batch, unless a generation batch is one optimizer step
    train_step                 once per mini-batch
    teacher_update             once per step with the EMA teacher
    eval_prefill, eval_decode  once per evaluation chunk, every eval.every steps

`tests/test_aot.py` checks that these are exactly the calls a short run of the loop makes
(`compiled_calls.capture`). Not listed: the warm start's and the `context/*` probes' programs (the
demo's synthetic task only), the decode copy's dtype cast, the start-up initialisation.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from sdpo_jax import batch as batch_lib
from sdpo_jax import compiled_calls, hlo_flops, rollout, sampling, sharding
from sdpo_jax import train_step as ts
from sdpo_jax.ttt import methods as ttt_methods
from sdpo_jax.sampling_ops import SamplingSpec

MAX_STOP_IDS = 8  # the stop-id vector of the tool's programs (a tokenizer's eos ids + the model's, padded)


@dataclasses.dataclass(frozen=True)
class ProgramShapes:
    """What the programs' abstract arguments depend on, resolved from a config by `setup.program_shapes`:
    the step's settings and optimizer, the rollout's and the evaluation's sampling, generation lengths and
    cache dtype, whether generate reads a gathered weight copy, the batch's buckets (and reprompt.max_len),
    questions per step, evaluation cadence and set size, and for a test-time config its settings."""
    step: ts.StepSettings
    optimizer: Any
    rollout_policy: rollout.SamplingPolicy
    eval_policy: rollout.SamplingPolicy
    max_new_tokens: int
    cache_dtype: str
    decode_gathered: bool
    batch: batch_lib.BatchSettings
    prompts_per_step: int
    eval_every: int
    eval_prompts: int
    ttt: ttt_methods.TTTSettings | None = None


@dataclasses.dataclass
class Program:
    """One jitted program of the run, made as set-up makes it: `jitted(*static_args, *args)` (static_args: its
    leading static arguments, e.g. the prefill's sampling spec); `noted` the static arguments the loop reports to
    `compiled_calls`; `calls_per_step` how often one RL step calls it (on average, for the evaluation);
    `resident` the tree of the loop's other arrays on device while it runs; `compiled` once compiled.
    `args` may be a function returning them (a decode's arguments are its prefill's compiled outputs:
    resolved on first use, so that the prefill is compiled, and can fail, under its own name)."""
    name: str
    jitted: Any
    static_args: tuple
    args: Any
    noted: dict
    calls_per_step: float
    resident: Any
    compiled: Any = None
    compile_s: float = 0.0
    flops: Any = None  # hlo_flops.HloFlops of the compiled program (per device, loops expanded)

    def arguments(self) -> tuple:
        if callable(self.args):
            self.args = self.args()
        return self.args

    def signature(self) -> compiled_calls.CallSignature:
        return compiled_calls.signature(self.name, self.arguments(), self.noted)

    def compile(self):
        """The compiled program (lowered under the mesh of its arguments), compiled once; `self.flops` its
        FLOPs per device with loops expanded."""
        if self.compiled is None:
            start = time.time()
            with jax.set_mesh(self.mesh):
                lowered = self.jitted.lower(*self.static_args, *self.arguments())
                self.compiled, self.flops = hlo_flops.compile_counting_flops(lowered)
            self.compile_s = time.time() - start
        return self.compiled

    def output_shapes(self):
        """The outputs as ShapeDtypeStructs in their compiled shardings."""
        compiled = self.compile()
        shapes = jax.eval_shape(lambda *a: self.jitted(*self.static_args, *a), *self.arguments())
        return jax.tree.map(lambda s, sh: _abstract(s.shape, s.dtype, sh), shapes, compiled.output_shardings)

    @property
    def mesh(self):
        for leaf in jax.tree.leaves(self.arguments()):
            mesh = getattr(getattr(leaf, "sharding", None), "mesh", None)
            if mesh is not None:
                return mesh
        raise ValueError(f"program {self.name}: no argument carries a mesh")


# ---------------------------------------------------------------------------------------------- shapes


def device_bytes(tree) -> int:
    """Bytes one device holds of a tree of arrays / ShapeDtypeStructs (the largest shard of each leaf)."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        shape = tuple(leaf.shape)
        sharding_ = getattr(leaf, "sharding", None)
        if sharding_ is not None:
            shape = sharding_.shard_shape(shape)
        try:
            itemsize = np.dtype(leaf.dtype).itemsize
        except TypeError:  # a PRNG key: two uint32 words
            itemsize = 8
        total += math.prod(shape) * itemsize
    return int(total)


def _abstract(shape, dtype, sharding_) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(tuple(shape), jnp.dtype(dtype), sharding=sharding_)


def abstract_train_state(model_cfg, settings, optimizer, mesh=None) -> ts.TrainState:
    """The TrainState as ShapeDtypeStructs, in the loop's shardings (`train_step.train_state_shardings`) when a
    mesh is given."""
    shapes = jax.eval_shape(lambda p: ts.init_train_state(model_cfg, settings, p, optimizer), ts.abstract_params(model_cfg))
    if mesh is None:
        return shapes
    shardings = ts.train_state_shardings(model_cfg, settings, optimizer, mesh)
    return jax.tree.map(lambda s, sh: _abstract(s.shape, s.dtype, sh), shapes, shardings)


def abstract_decode_params(shapes: ProgramShapes, model_cfg, state, mesh):
    """The weights `rollout.sample` decodes with: a compute-dtype copy without fsdp (rollout.decode_weights
    "gathered"), a compute-dtype copy in the parameters' sharding (bf16 compute of fp32 weights), or the
    train parameters themselves."""
    if shapes.decode_gathered:
        return jax.tree.map(lambda p, sh: _abstract(p.shape, model_cfg.compute_dtype, sh), state.params,
                            sampling.decode_param_shardings(model_cfg, mesh))
    if jnp.dtype(model_cfg.compute_dtype) == jnp.dtype(model_cfg.param_dtype):
        return state.params
    return jax.tree.map(lambda p: _abstract(p.shape, model_cfg.compute_dtype, p.sharding), state.params)


def buckets_used(shapes: ProgramShapes) -> dict[str, int]:
    """The largest prompt, teacher-prompt and completion widths the settings allow."""
    b = shapes.batch
    teacher_buckets, limit = b.teacher_prompt_buckets, b.reprompt.max_len
    teacher = (sampling.pick_bucket(limit, teacher_buckets) if limit and limit <= max(teacher_buckets)
               else max(teacher_buckets))
    return {"prompt": max(b.prompt_buckets), "teacher_prompt": teacher,
            "completion": sampling.pick_bucket(shapes.max_new_tokens, b.completion_buckets)}


def minibatch_layout(shapes: ProgramShapes, mesh) -> dict[str, int]:
    """Rows per mini-batch (real and padded to data-parallel size x micro-batches) and mini-batches per step."""
    groups = shapes.step.minibatch_groups or shapes.prompts_per_step
    real = groups * shapes.rollout_policy.n
    multiple = batch_lib.data_parallel_size(mesh) * shapes.step.micro_batches
    return {"rows": real, "padded_rows": -(-real // multiple) * multiple,
            "minibatches": shapes.prompts_per_step // groups}


def abstract_minibatch(rows: int, widths: dict[str, int], mesh=None) -> batch_lib.RolloutBatch:
    """A RolloutBatch of ShapeDtypeStructs: `rows` rows, prompt / teacher-prompt / completion widths from
    `widths`, in the train step's batch shardings when a mesh is given."""
    lengths = dict(prompt_ids=widths["prompt"], prompt_mask=widths["prompt"], teacher_prompt_ids=widths["teacher_prompt"],
                   teacher_prompt_mask=widths["teacher_prompt"])
    fields = {}
    for name in batch_lib.RolloutBatch._fields:
        ndim = batch_lib.FIELD_NDIM[name]
        shape = (rows,) if ndim == 1 else (rows, lengths.get(name, widths["completion"]))
        fields[name] = _abstract(shape, batch_lib.FIELD_DTYPES[name],
                                 None if mesh is None else sharding.batch_sharding(mesh, ndim))
    return batch_lib.RolloutBatch(**fields)


# ---------------------------------------------------------------------------------------------- programs


def _generate_programs(shapes: ProgramShapes, model_cfg, state, mesh, *, prompts: int, n: int, spec: SamplingSpec,
                       names: tuple[str, str], calls_per_step: float, with_decode: bool = True,
                       prompt_width: int | None = None) -> list[Program]:
    """prefill and decode of `sampling.generate` for `prompts` global prompts x n samples each, at the largest
    rollout prompt bucket unless `prompt_width` (the decode's arguments are the compiled prefill's outputs;
    with_decode=False: the prefill alone, not compiled)."""
    sampling_programs = sampling.SamplingPrograms(model_cfg, mesh, gathered=shapes.decode_gathered)  # as set-up does
    decode_cfg = sampling_programs.model_cfg
    params = abstract_decode_params(shapes, model_cfg, state, mesh)
    resident = state._replace(params=None) if params is state.params else state
    batch = sampling.padded_prompt_count(prompts, n, mesh)
    replicated = NamedSharding(mesh, P())
    ids = _abstract((batch, prompt_width or buckets_used(shapes)["prompt"]), jnp.int32, sampling.prompt_sharding(mesh, batch))
    stop_ids = _abstract((sampling.stop_id_slots(MAX_STOP_IDS),), jnp.int32, replicated)
    pad = _abstract((), jnp.int32, replicated)
    key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=replicated)
    cache_dtype = jnp.dtype(shapes.cache_dtype or model_cfg.compute_dtype)
    max_new = int(shapes.max_new_tokens)
    prefill = Program(names[0], sampling_programs.prefill, (spec, int(n), max_new, cache_dtype),
                      (params, ids, ids, stop_ids, pad, key),
                      dict(cfg=decode_cfg, spec=spec, n=int(n), max_new_tokens=max_new, cache_dtype=str(cache_dtype)),
                      calls_per_step, resident)
    if not with_decode:
        return [prefill]
    decode = Program(names[1], sampling_programs.decode, (spec,),
                     lambda: (params, prefill.output_shapes(), stop_ids, pad, key),
                     dict(cfg=decode_cfg, spec=spec), calls_per_step, resident)
    return [prefill, decode]


def _spec(policy: rollout.SamplingPolicy, vocab: int) -> SamplingSpec:
    return SamplingSpec(float(policy.temperature), int(policy.top_k), float(policy.top_p)).validate(vocab)


def run_programs(shapes: ProgramShapes, model_cfg, mesh, *, eval_questions: int | None = None,
                 only: set[str] | None = None) -> list[Program]:
    """Every program an RL run with these settings executes (see the module docstring), in call order, at the
    largest shapes they allow, on `mesh` (its shapes do not depend on how many hosts share it). Compiles a
    prefill when its decode is wanted (its outputs are the decode's arguments). eval_questions: the
    evaluation set's size (default data.eval_prompts); only: these program names (default all)."""
    wanted = set(compiled_calls.PROGRAM_NAMES if only is None else only)
    settings = shapes.step
    state = abstract_train_state(model_cfg, settings, shapes.optimizer, mesh)
    programs = []
    if wanted & {"prefill", "decode"}:
        programs += _generate_programs(shapes, model_cfg, state, mesh, prompts=shapes.prompts_per_step,
                                       n=shapes.rollout_policy.n, spec=_spec(shapes.rollout_policy, model_cfg.vocab_size),
                                       names=("prefill", "decode"), calls_per_step=1.0, with_decode="decode" in wanted)

    layout = minibatch_layout(shapes, mesh)
    minibatch = abstract_minibatch(layout["padded_rows"], buckets_used(shapes), mesh)
    count = layout["minibatches"]
    others = [minibatch] * (count - 1)  # split_minibatches places every mini-batch of the step at once
    step = ts.make_train_step(model_cfg, settings, shapes.optimizer, mesh)  # the loop's own three programs
    if not settings.old_logprobs_from_step:
        programs.append(Program("old_logprobs", step.old_logprobs, (), (state.params, minibatch),
                                {}, float(count), (state._replace(params=None), others)))
    programs.append(Program("train_step", step.jitted, (), (state, minibatch), {}, float(count), others))
    if step.teacher_update is not None:
        programs.append(Program("teacher_update", step.teacher_update, (), (state.teacher_params, state.params),
                                {}, 1.0, (state._replace(params=None, teacher_params=None), others + [minibatch])))

    questions = shapes.eval_prompts if eval_questions is None else eval_questions
    if shapes.eval_every and questions and wanted & {"eval_prefill", "eval_decode"}:
        per_call = max(shapes.prompts_per_step, 1)
        programs += _generate_programs(shapes, model_cfg, state, mesh, prompts=per_call, n=shapes.eval_policy.n,
                                       spec=_spec(shapes.eval_policy, model_cfg.vocab_size),
                                       names=("eval_prefill", "eval_decode"),
                                       calls_per_step=math.ceil(questions / per_call) / shapes.eval_every,
                                       with_decode="eval_decode" in wanted)
    return [p for p in programs if p.name in wanted]


def ttt_programs(shapes: ProgramShapes, model_cfg, mesh, *, questions: int, only: set[str] | None = None) -> list[Program]:
    """Every program `python -m sdpo_jax.ttt` runs with these settings on `questions` questions: SDPO's rollout
    (1 question x ttt.batch_size attempts), train step and EMA teacher update (`run_programs`; no evaluation),
    best-of-k / selection sampling (`ttt.methods.sample_success_counts`: its largest call of questions x
    samples), and multi-turn prompting (`ttt.methods.multi_turn`: one attempt per chain of questions x seeds,
    padded to a power of two, at the multi-turn prompt bucket of ttt.multi_turn_max_prompt_tokens).
    calls_per_step counts per SDPO step; the baselines' programs have 0 (they run once per comparison)."""
    t = shapes.ttt
    wanted = set(compiled_calls.PROGRAM_NAMES if only is None else only)
    programs = run_programs(shapes, model_cfg, mesh, only=wanted)
    state = abstract_train_state(model_cfg, shapes.step, shapes.optimizer, mesh)
    spec = _spec(shapes.rollout_policy, model_cfg.vocab_size)
    if "best_of_k" in t.methods and wanted & {"best_of_k_prefill", "best_of_k_decode"}:
        samples = max(t.best_of_k_samples, t.select_samples)
        per_call = max(1, min(samples, t.sample_rows // max(questions, 1) or 1))
        group = max(1, t.sample_rows // per_call)
        programs += _generate_programs(shapes, model_cfg, state, mesh, prompts=min(group, questions), n=per_call,
                                       spec=spec, names=("best_of_k_prefill", "best_of_k_decode"), calls_per_step=0.0,
                                       with_decode="best_of_k_decode" in wanted)
    if "multi_turn" in t.methods and wanted & {"multi_turn_prefill", "multi_turn_decode"}:
        chains = questions * t.seeds
        width = sampling.pick_bucket(t.multi_turn_max_prompt_tokens, tuple(t.multi_turn_prompt_buckets))
        programs += _generate_programs(shapes, model_cfg, state, mesh, prompts=1 << (chains - 1).bit_length(), n=1,
                                       spec=spec, names=("multi_turn_prefill", "multi_turn_decode"), calls_per_step=0.0,
                                       with_decode="multi_turn_decode" in wanted, prompt_width=width)
    return [p for p in programs if p.name in wanted]


# ---------------------------------------------------------------------------------------------- model FLOPs


def _forward_flops(model_cfg, rows: int, length: int, projected: int) -> float:
    """One forward over `rows` sequences of `length` tokens, `projected` positions per row to the vocabulary:
    2 N_nonembed per token, 2 V d per projected position, causal attention 2 L T^2 (heads x head_dim)."""
    d, vocab = model_cfg.hidden_size, model_cfg.vocab_size
    non_embedding = model_cfg.num_params - vocab * d * (1 if model_cfg.tie_word_embeddings else 2)
    attention = 2 * model_cfg.num_layers * length**2 * model_cfg.num_heads * model_cfg.head_dim
    return rows * (2 * non_embedding * length + 2 * vocab * d * projected + attention)


def model_flops(program: Program, shapes: ProgramShapes, model_cfg) -> float:
    """The model's own FLOPs of one call (global, all devices), counted at the program's shapes:
    train_step: the student's forward on [prompt | completion] x (1 + 2 backward + 1 remat) and the
    teacher's forward on [teacher prompt | completion] (SDPO objectives); old_logprobs: the student's
    forward; prefill: each distinct prompt once, its last position projected; decode: every row, every
    step up to max_new_tokens - 1, 2 N_nonembed + 2 V d + attention 4 L S (heads x head_dim) over the
    S cache slots; teacher_update: 0 (element-wise)."""
    name = next((kind for kind in ("prefill", "decode") if program.name.endswith(kind)), program.name)
    if name in ("train_step", "old_logprobs"):
        batch = program.arguments()[1]
        rows, prompt, completion = batch.completion_ids.shape[0], batch.prompt_ids.shape[1], batch.completion_ids.shape[1]
        student = _forward_flops(model_cfg, rows, prompt + completion, completion)
        if name == "old_logprobs":
            return student
        total = student * (3 + (1 if model_cfg.remat else 0))
        if shapes.step.uses_sdpo:
            total += _forward_flops(model_cfg, rows, batch.teacher_prompt_ids.shape[1] + completion, completion)
        return total
    if name == "prefill":
        ids = program.arguments()[1]
        return _forward_flops(model_cfg, ids.shape[0], ids.shape[1], 1)
    if name == "decode":
        tokens = program.arguments()[1]["tokens"]
        rows, width = tokens.shape
        slots = program.arguments()[1]["slot_mask"].shape[1]
        d, vocab = model_cfg.hidden_size, model_cfg.vocab_size
        non_embedding = model_cfg.num_params - vocab * d * (1 if model_cfg.tie_word_embeddings else 2)
        per_token = (2 * non_embedding + 2 * vocab * d
                     + 4 * model_cfg.num_layers * slots * model_cfg.num_heads * model_cfg.head_dim)
        return float(rows * (width - 1) * per_token)
    return 0.0
