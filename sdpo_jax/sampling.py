"""On-device rollout: left-padded prompt buckets, a jitted prefill, and a jitted `lax.while_loop`
decode over a preallocated, donated KV cache.

    out = generate(cfg, params, prompts, max_new_tokens=256, eos_ids=[2], n=8, rng=0)

Layout (docs/ARCHITECTURE.md, "Generation"): row r of every output is prompt r // n, sample r % n. `tokens`
[B·n, C] int32 holds the completion, the stop token included, then `pad_id`; `logprobs` [B·n, C]
fp32 holds log_softmax(z / T)[token] over the FULL vocabulary (0 on padding; greedy uses T = 1) —
the quantity the trainer recomputes from its own forward for the importance ratio. With top-k/top-p
active the token was drawn from the truncated distribution, so these are the untruncated policy's
log-probs, not the behaviour distribution's. `lengths` [B·n] counts completion tokens (stop token
included); `finish_reason` [B·n] is FINISH_STOP or FINISH_LENGTH; `num_decode_steps` is how many
decode iterations ran (the first token comes from the prefill, so at most max_new_tokens - 1).

Programs (`SamplingPrograms`, made once at set-up with their shardings and donation): one prefill per
(prompt bucket, batch, max_new_tokens, sampling flags) and one decode per the same key, compiled lazily on
first use (`SamplingPrograms.compile_counts`). The prefill projects only the last prompt position to the
vocabulary, runs each distinct prompt once and repeats its cache n times. The decode feeds one token per row per step (positions continue from the
prompt's mask), writes its K/V at slot P + t, and stops when every row has hit a stop id. Both run
the layer stack under `lax.scan` whatever `cfg.scan_layers` says (one compiled layer body; faster
decode steps on XLA:CPU); stop ids are padded with -1 to a multiple of 8 so their count does not
recompile. Tokens are drawn by inverse CDF (sampling_ops), one uniform per row per step.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from sdpo_jax import compiled_calls, models
from sdpo_jax import sharding as sharding_lib
from sdpo_jax.sampling_ops import SamplingSpec, choose_tokens, is_stop

FINISH_STOP = 0  # the row emitted one of the stop ids
FINISH_LENGTH = 1  # the row reached max_new_tokens without a stop id

DEFAULT_PROMPT_BUCKETS = tuple(2**i for i in range(4, 16))  # 16 ... 32768

_ROW_AXES = ("data", "fsdp")  # the mesh axes that split the batch of rows


class GenerateOutput(NamedTuple):
    tokens: np.ndarray  # [B·n, C] int32, pad after the stop token
    logprobs: np.ndarray  # [B·n, C] float32, 0 on padding
    lengths: np.ndarray  # [B·n] int32, stop token included
    finish_reason: np.ndarray  # [B·n] int32: FINISH_STOP or FINISH_LENGTH
    num_decode_steps: int  # decode-loop iterations actually run (<= max_new_tokens - 1)


# ----------------------------------------------------------------------------- buckets and padding


def pick_bucket(length: int, buckets: Sequence[int] | None = None) -> int:
    """The smallest bucket >= length. Raises ValueError when the length exceeds every bucket."""
    buckets = tuple(sorted(DEFAULT_PROMPT_BUCKETS if buckets is None else buckets))
    if not buckets or buckets[0] < 1:
        raise ValueError(f"buckets={buckets} must be a non-empty list of positive lengths")
    for bucket in buckets:
        if length <= bucket:
            return int(bucket)
    raise ValueError(f"length {length} exceeds the largest bucket {buckets[-1]} "
                     f"(buckets={buckets}); add a larger bucket or shorten the sequence")


def pad_to_bucket(lists: Sequence[Sequence[int]], buckets: Sequence[int] | None, pad_id: int,
                  side: str = "left") -> tuple[np.ndarray, np.ndarray]:
    """Pad token lists to the bucket of the longest one: (ids int32 [B, L], mask int32 [B, L]).

    side="left" for prompts (the last real token sits in the last column), "right" for completions.
    A list longer than the largest bucket raises ValueError naming its index and length.
    """
    if side not in ("left", "right"):
        raise ValueError(f"pad_to_bucket: side={side!r} must be 'left' or 'right'")
    if not lists:
        raise ValueError("pad_to_bucket: got no sequences")
    lengths = [len(seq) for seq in lists]
    buckets = tuple(DEFAULT_PROMPT_BUCKETS if buckets is None else buckets)
    for index, length in enumerate(lengths):
        if length > max(buckets):
            raise ValueError(f"sequence {index} has length {length}, longer than the largest "
                             f"bucket {max(buckets)} (buckets={buckets}); add a larger bucket or "
                             f"truncate it")
    width = pick_bucket(max(lengths), buckets)
    ids = np.full((len(lists), width), pad_id, np.int32)
    mask = np.zeros((len(lists), width), np.int32)
    for row, seq in enumerate(lists):
        cols = slice(width - len(seq), width) if side == "left" else slice(0, len(seq))
        ids[row, cols] = np.asarray(seq, np.int32)
        mask[row, cols] = 1
    return ids, mask


# ----------------------------------------------------------------------------- shardings


def _row_sharding(mesh, ndim: int) -> NamedSharding | None:
    """Leading (row) dimension over ("data", "fsdp"), the rest replicated."""
    if mesh is None:
        return None
    return NamedSharding(mesh, PartitionSpec(_ROW_AXES, *([None] * (ndim - 1))))


def _cache_sharding(cfg, mesh) -> NamedSharding | None:
    """The cache (`models.init_kv_cache`, either layout): rows over ("data", "fsdp"), KV heads over
    "tensor" if they divide it."""
    if mesh is None:
        return None
    heads = "tensor" if cfg.num_kv_heads % mesh.shape["tensor"] == 0 else None
    if cfg.kv_cache_layout == "slots_major":  # [L, S, K, rows, H]
        return NamedSharding(mesh, PartitionSpec(None, None, heads, _ROW_AXES, None))
    return NamedSharding(mesh, PartitionSpec(None, _ROW_AXES, None, heads, None))  # [L, rows, S, K, H]


def decode_state_shardings(cfg, mesh) -> dict:
    """The decode state's shardings (a tree prefix of `_prefill`'s result): the cache as `_cache_sharding`,
    every per-row array's rows over ("data", "fsdp"), the step counter replicated."""
    rows = {name: _row_sharding(mesh, ndim) for name, ndim in
            (("tokens", 2), ("logprobs", 2), ("done", 1), ("lengths", 1), ("prompt_lengths", 1), ("slot_mask", 2))}
    return {"cache": _cache_sharding(cfg, mesh), **rows, "step": NamedSharding(mesh, PartitionSpec())}


def _row_parallelism(mesh) -> int:
    return 1 if mesh is None else mesh.shape["data"] * mesh.shape["fsdp"]


def padded_prompt_count(num_prompts: int, n: int, mesh) -> int:
    """The prompt count `generate` pads its prompts to (copies of the first), so that the rows
    count x n divide over the mesh's row axes."""
    count, rows_per = num_prompts, _row_parallelism(mesh)
    while (count * n) % rows_per:
        count += 1
    return count


def prompt_sharding(mesh, global_prompts: int) -> NamedSharding | None:
    """The prompts' sharding: rows over the row axes when they divide them, else replicated."""
    if mesh is None:
        return None
    if global_prompts % _row_parallelism(mesh) == 0:
        return _row_sharding(mesh, 2)
    return NamedSharding(mesh, PartitionSpec())


def _constrain(tree, sharding):
    if sharding is None:
        return tree
    return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, sharding), tree)


def decode_weights_program(cfg, mesh, *, gathered: bool):
    """The jitted copy of the weights `generate` reads, made once: floating leaves cast to `cfg.compute_dtype`,
    and with `gathered` the `fsdp` axis dropped from every sharding (kept on `tensor`), so the decode loop
    does no per-step all-gather of weights; its size is `tree_nbytes(result)`. None when no copy is needed
    (not gathered, and the parameters are already in the compute dtype)."""
    dtype = jnp.dtype(cfg.compute_dtype)
    if not gathered and dtype == jnp.dtype(cfg.param_dtype):
        return None

    def cast(params):
        return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, params)

    if gathered and mesh is not None:
        return jax.jit(cast, out_shardings=decode_param_shardings(cfg, mesh))
    return jax.jit(cast)


def decode_param_shardings(cfg, mesh):
    """The parameter shardings with the `fsdp` axis dropped (kept on `tensor`): the layout of
    `decode_weights_program(cfg, mesh, gathered=True)`."""
    def without_fsdp(sharding):
        def drop(entry):
            if entry == "fsdp":
                return None
            if isinstance(entry, tuple):
                kept = tuple(axis for axis in entry if axis != "fsdp")
                return kept if len(kept) > 1 else (kept[0] if kept else None)
            return entry
        return NamedSharding(sharding.mesh, PartitionSpec(*[drop(e) for e in sharding.spec]))

    return jax.tree.map(without_fsdp, models.param_shardings(cfg, mesh))


def decode_weights_shardings(cfg, mesh, *, gathered: bool):
    """The shardings of the weights `generate` reads (see `decode_weights_program`): without `fsdp` when
    gathered, else the parameters' own; None without a mesh."""
    if mesh is None:
        return None
    return decode_param_shardings(cfg, mesh) if gathered else models.param_shardings(cfg, mesh)


def tree_nbytes(tree) -> dict:
    """{"total": bytes of the logical arrays, "per_device_max": the largest per-device share}."""
    total, per_device = 0, {}
    for leaf in jax.tree.leaves(tree):
        total += leaf.size * leaf.dtype.itemsize
        for shard in getattr(leaf, "addressable_shards", []):
            per_device[shard.device] = per_device.get(shard.device, 0) + shard.data.nbytes
    return {"total": int(total), "per_device_max": int(max(per_device.values(), default=total))}


# ----------------------------------------------------------------------------- the two programs


def _prefill(cfg, mesh, spec, n, max_new_tokens, cache_dtype, params, prompt_ids_bp, prompt_mask_bp, stop_ids_e,
             pad_id, rng):
    """Run the B distinct prompts once, choose each row's first token, and build the decode state
    for B·n rows with a KV cache of P + max_new_tokens slots (rows r = b·n + s)."""
    batch, prompt_len = prompt_ids_bp.shape
    rows, width = batch * n, max_new_tokens
    valid_bp = prompt_mask_bp.astype(bool)
    positions_bp = models.default_positions(valid_bp)
    cache = models.init_kv_cache(cfg, batch, prompt_len, cache_dtype)
    h_bpd, cache = models.forward_cached(cfg, params, prompt_ids_bp, positions_bp, cache, valid_bp,
                                         jnp.int32(0))
    logits_bv = models.logits_from_hidden(cfg, params, h_bpd[:, -1:, :])[:, 0, :]
    logits_rv = _constrain(jnp.repeat(logits_bv, n, axis=0), _row_sharding(mesh, 2))
    token_r, logprob_r = choose_tokens(logits_rv, jax.random.fold_in(rng, 0), spec)

    rows_axis, slots_axis = (3, 1) if cfg.kv_cache_layout == "slots_major" else (1, 2)

    def widen(x):  # repeat each prompt n times, then room for the completion
        x = jnp.repeat(x, n, axis=rows_axis)
        return jnp.pad(x, [(0, width if axis == slots_axis else 0) for axis in range(x.ndim)])

    state = {
        "cache": _constrain({name: widen(x) for name, x in cache.items()},
                            _cache_sharding(cfg, mesh)),
        "tokens": jnp.full((rows, width), pad_id, jnp.int32).at[:, 0].set(token_r),
        "logprobs": jnp.zeros((rows, width), jnp.float32).at[:, 0].set(logprob_r),
        "done": is_stop(token_r, stop_ids_e),
        "lengths": jnp.ones((rows,), jnp.int32),
        "prompt_lengths": jnp.repeat(prompt_mask_bp.astype(jnp.int32).sum(-1), n),
        # Completion slots are all marked valid: causality (slot <= write slot) hides the future.
        "slot_mask": jnp.concatenate(
            [jnp.repeat(valid_bp, n, axis=0), jnp.ones((rows, width), bool)], axis=1),
        "step": jnp.int32(1),  # columns filled so far
    }
    for name in ("tokens", "logprobs", "done", "lengths", "prompt_lengths", "slot_mask"):
        state[name] = _constrain(state[name], _row_sharding(mesh, state[name].ndim))
    return state


def _decode(cfg, spec, params, state, stop_ids_e, pad_id, rng):
    """`lax.while_loop` over completion columns 1..C-1; exits when every row is done."""
    width = state["tokens"].shape[1]
    prompt_len = state["slot_mask"].shape[1] - width

    def keep_going(st):
        return (st["step"] < width) & ~jnp.all(st["done"])

    def one_token(st):
        t = st["step"]
        prev_r = jax.lax.dynamic_index_in_dim(st["tokens"], t - 1, axis=1, keepdims=False)
        positions_r1 = (st["prompt_lengths"] + t - 1)[:, None]
        h_r1d, cache = models.forward_cached(cfg, params, prev_r[:, None], positions_r1,
                                             st["cache"], st["slot_mask"], prompt_len + t - 1)
        logits_rv = models.logits_from_hidden(cfg, params, h_r1d)[:, 0, :]
        token_r, logprob_r = choose_tokens(logits_rv, jax.random.fold_in(rng, t), spec)
        live_r = ~st["done"]
        token_r = jnp.where(live_r, token_r, pad_id)
        logprob_r = jnp.where(live_r, logprob_r, 0.0)
        return {
            **st,
            "cache": cache,
            "tokens": jax.lax.dynamic_update_slice(st["tokens"], token_r[:, None], (0, t)),
            "logprobs": jax.lax.dynamic_update_slice(st["logprobs"], logprob_r[:, None], (0, t)),
            "done": st["done"] | (live_r & is_stop(token_r, stop_ids_e)),
            "lengths": st["lengths"] + live_r.astype(jnp.int32),
            "step": t + 1,
        }

    final = jax.lax.while_loop(keep_going, one_token, state)
    # The whole final state is returned so every donated buffer (the cache above all) aliases an
    # output: the loop then updates it in place with no copy. The caller drops the cache.
    return final, jnp.where(final["done"], FINISH_STOP, FINISH_LENGTH).astype(jnp.int32)


class SamplingPrograms:
    """The rollout's jitted programs for one model, mesh and weight layout, made once (`setup.build_actor`;
    `programs.py` lowers the same ones from abstract arguments):

    - `weights_copy(params) -> weights` (`decode_weights_program`): the weights generate reads, with `gathered`
      (rollout.decode_weights) without fsdp, else in the parameters' sharding; None when the parameters
      themselves are read (`gathered=None`: whatever weights are passed, as they are placed);
    - `prefill(spec, n, max_new_tokens, cache_dtype, weights, prompt_ids, prompt_mask, stop_ids, pad_id, key)
      -> state` (`_prefill`), the first four static;
    - `decode(spec, weights, state, stop_ids, pad_id, key) -> (state, finish_reason)` (`_decode`), `spec`
      static, the state donated (the loop writes the cache in place).

    On a mesh prefill and decode carry their shardings at the jit: the weights in `decode_weights_shardings`
    (as placed when `gathered` is None), the stop ids, pad id and key replicated, the prompts as `generate`
    places them (`prompt_sharding`: rows split when they divide the row axes), the state in
    `decode_state_shardings`. `model_cfg` is the decode configuration (`decode_model_config`). Each compiles
    lazily, once per (prompt bucket, rows, max_new_tokens, sampling spec, cache dtype)."""

    def __init__(self, model_cfg, mesh=None, *, gathered: bool | None = None):
        self.model_cfg, self.mesh = decode_model_config(model_cfg, mesh), mesh
        self.weights_copy = None if gathered is None else decode_weights_program(model_cfg, mesh, gathered=gathered)
        weights_shardings = None if gathered is None else decode_weights_shardings(model_cfg, mesh, gathered=gathered)
        prefill_fn = functools.partial(_prefill, self.model_cfg, mesh)
        decode_fn = functools.partial(_decode, self.model_cfg)
        if mesh is None:
            self.prefill = jax.jit(prefill_fn, static_argnums=(0, 1, 2, 3))
            self.decode = jax.jit(decode_fn, static_argnums=(0,), donate_argnums=(2,))
            return
        replicated = NamedSharding(mesh, PartitionSpec())
        state_sh = decode_state_shardings(self.model_cfg, mesh)
        self.prefill = jax.jit(prefill_fn, static_argnums=(0, 1, 2, 3),
                               in_shardings=(weights_shardings, None, None, replicated, replicated, replicated),
                               out_shardings=state_sh)
        self.decode = jax.jit(decode_fn, static_argnums=(0,), donate_argnums=(2,),
                              in_shardings=(weights_shardings, state_sh, replicated, replicated, replicated),
                              out_shardings=(state_sh, _row_sharding(mesh, 1)))

    def compile_counts(self) -> dict[str, int]:
        """{"prefill": programs compiled so far, "decode": ...}."""
        return {"prefill": self.prefill._cache_size(), "decode": self.decode._cache_size()}


@functools.lru_cache(maxsize=None)
def default_programs(model_cfg, mesh=None) -> SamplingPrograms:
    """The programs `generate` runs when it is given none: one set per (model, mesh), the weights as placed."""
    return SamplingPrograms(model_cfg, mesh)


# ----------------------------------------------------------------------------- the public entry


def stop_id_slots(num_stop_ids: int) -> int:
    """Length of the stop-id vector the programs take: the count rounded up to a multiple of 8."""
    return -(-max(num_stop_ids, 1) // 8) * 8


def decode_model_config(cfg, mesh=None):
    """The ModelConfig both programs run with: the layer stack under `lax.scan`, no remat, and the KV cache
    layout of the platform (the mesh's devices, else the default backend): "slots_major" on TPU, whose
    decode loop would otherwise relayout (copy) the whole cache it receives from the prefill,
    "rows_major" elsewhere (on CPU it decodes faster: 2,230 vs 1,674 tokens/s at batch 32 in bench/decode.py)."""
    device = mesh.devices.flat[0] if mesh is not None else jax.devices()[0]
    layout = "slots_major" if device.platform == "tpu" else "rows_major"
    return cfg.replace(scan_layers=True, remat=False, kv_cache_layout=layout)


def _as_key(rng):
    if isinstance(rng, (int, np.integer)):
        return jax.random.key(int(rng))
    return rng


def _resolve_dtype(cfg, cache_dtype):
    if cache_dtype is None:
        cache_dtype = getattr(cfg, "compute_dtype", "float32")
    return jnp.dtype(cache_dtype)


def generate(cfg, params, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
             temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
             eos_ids: Sequence[int], n: int = 1, rng, prompt_buckets: Sequence[int] | None = None,
             mesh=None, cache_dtype=None, pad_id: int | None = None,
             program_names: tuple[str, str] = ("prefill", "decode"),
             programs: SamplingPrograms | None = None) -> GenerateOutput:
    """Sample n completions for each prompt (token-id lists of any lengths) on device.

    temperature=0 is greedy. eos_ids may hold several stop ids (or none: fixed-length runs).
    rng: an int seed or a jax PRNG key; the result is a deterministic function of it. With `mesh`,
    rows are split over ("data", "fsdp") and params must already be placed on that mesh
    (`sharding.shard_params` or `decode_weights_program`); B·n is padded with copies of prompt 0 up to a
    multiple of the row parallelism and the extra rows are dropped. cache_dtype defaults to
    cfg.compute_dtype; pad_id to cfg.pad_token_id (0 when unset). See the module docstring for the
    output layout and the exact meaning of the log-probs.

    Several processes (a mesh that spans them): every process calls this with the SAME arguments (the
    global prompts; checked, a ValueError otherwise), feeds its own devices' rows, and gets back every
    row, as one process would: sampling depends only on the global row position (threefry is
    partitionable in this JAX), so P processes draw exactly what one process draws, whatever the
    number of prompts or how the mesh's row axes fall on hosts. `program_names`: what the two programs
    are called in `compiled_calls` (the evaluation's are "eval_prefill" / "eval_decode"). `programs`: the
    `SamplingPrograms` made at set-up for this model and mesh (default: `default_programs(cfg, mesh)`).
    """
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"generate: n={n!r} must be an integer >= 1 (samples per prompt)")
    if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
        raise ValueError(f"generate: max_new_tokens={max_new_tokens!r} must be an integer >= 1")
    vocab = cfg.vocab_size
    prompts = [list(p) for p in prompts]
    if not prompts:
        raise ValueError("generate: prompts is empty; pass at least one token-id list")
    for index, prompt in enumerate(prompts):
        if not prompt:
            raise ValueError(f"generate: prompt {index} is empty; every prompt needs at least "
                             f"one token")
        bad = [t for t in prompt if not 0 <= t < vocab]
        if bad:
            raise ValueError(f"generate: prompt {index} has token id {bad[0]} outside the "
                             f"vocabulary [0, {vocab})")
    stop_ids = [int(s) for s in eos_ids]
    for s in stop_ids:
        if not 0 <= s < vocab:
            raise ValueError(f"generate: stop id {s} in eos_ids={stop_ids} is outside the "
                             f"vocabulary [0, {vocab})")
    spec = SamplingSpec(float(temperature), int(top_k), float(top_p)).validate(vocab)
    if pad_id is None:
        pad_id = getattr(cfg, "pad_token_id", None)
        pad_id = 0 if pad_id is None else int(pad_id)

    # Pad the prompt list so that B·n divides over the row axes of the mesh; the extra rows are dropped.
    num_prompts = len(prompts)
    batch = padded_prompt_count(num_prompts, n, mesh)
    ids_bp, mask_bp = pad_to_bucket(prompts + [prompts[0]] * (batch - num_prompts), prompt_buckets,
                                    pad_id, side="left")
    multi_process = mesh is not None and jax.process_count() > 1
    if multi_process:
        sharding_lib.check_same_on_every_process("generate: the prompts", ids_bp)

    prompts_sharding = prompt_sharding(mesh, batch)
    replicated = None if mesh is None else NamedSharding(mesh, PartitionSpec())
    put = (lambda x, s: jnp.asarray(x)) if mesh is None else sharding_lib.global_from_host
    ids_bp, mask_bp = put(ids_bp, prompts_sharding), put(mask_bp, prompts_sharding)
    # -1 pads the stop ids to a multiple of 8 (never a token), so their count does not recompile.
    stop_pad = np.full((stop_id_slots(len(stop_ids)),), -1, np.int32)
    stop_pad[: len(stop_ids)] = stop_ids
    stop_ids_e = put(stop_pad, replicated)
    pad = put(np.int32(pad_id), replicated)
    key = _as_key(rng)
    if mesh is not None:
        key = sharding_lib.replicated_key(key, mesh)
    programs = programs or default_programs(cfg, mesh)
    if programs.mesh != mesh:
        raise ValueError("generate: `programs` were made for another mesh than `mesh`")
    decode_cfg = programs.model_cfg  # the layer stack under lax.scan, the platform's cache layout
    cache_dtype = _resolve_dtype(decode_cfg, cache_dtype)
    compiled_calls.note(program_names[0], (params, ids_bp, mask_bp, stop_ids_e, pad, key),
                        dict(cfg=decode_cfg, spec=spec, n=int(n), max_new_tokens=int(max_new_tokens),
                             cache_dtype=str(cache_dtype)))
    with sharding_lib.use_mesh(mesh):  # the model's activation constraints apply while sampling too
        state = programs.prefill(spec, int(n), int(max_new_tokens), cache_dtype, params, ids_bp, mask_bp, stop_ids_e,
                                 pad, key)
        compiled_calls.note(program_names[1], (params, state, stop_ids_e, pad, key), dict(cfg=decode_cfg, spec=spec))
        final, finish = programs.decode(spec, params, state, stop_ids_e, pad, key)
    del final["cache"]
    keep = num_prompts * n  # the real rows (padding rows dropped)
    out = dict(tokens=final["tokens"], logprobs=final["logprobs"], lengths=final["lengths"], finish_reason=finish)
    out = sharding_lib.host_copy(out) if multi_process else jax.tree.map(np.asarray, out)
    return GenerateOutput(**{k: v[:keep] for k, v in out.items()}, num_decode_steps=int(final["step"]) - 1)
