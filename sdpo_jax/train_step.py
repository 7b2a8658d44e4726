"""The SDPO / GRPO / hybrid train step: one `jax.jit` with explicit shardings and a donated state.

    settings = StepSettings(objective="sdpo", loss_mode="topk", topk=100, alpha=0.5, teacher_kind="ema")
    optimizer = make_optimizer(lr=1e-5, warmup_steps=10)
    step = make_train_step(model_cfg, settings, optimizer, mesh)  # the step's three jitted programs
    state = step.init_state(params)
    state, metrics = update_on_generation_batch(step, state, rollout_batch)

One optimizer step (`make_train_step`): for each micro-batch, the student's hidden states on
[prompt | completion] (with gradient) and the teacher's on [teacher prompt | completion] (no gradient),
both sliced to the completion positions (static offsets P - 1 and P_T - 1), go through the chunked
loss (`divergences.token_quantities_from_hidden`, never [B, T, V], then `losses.sdpo_loss_and_sums`);
gradients add up over micro-batches with mini-batch-wide denominators (so the split does not change them);
AdamW with global-norm clipping; a non-finite loss or gradient skips the update (`skipped_nonfinite = 1`).

One generation batch (`update_on_generation_batch`): old log-probs for all rows with the current
parameters first, then one optimizer step per mini-batch of whole groups (padded with zero-weight
rows to a multiple of data-parallel size x micro-batches), then the EMA teacher update once, if some
step was finite.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from sdpo_jax import compiled_calls, defaults, divergences, losses, models, sharding
from sdpo_jax import teacher as teacher_lib
from sdpo_jax.batch import RolloutBatch, data_parallel_size, shardings as batch_shardings, split_minibatches

OBJECTIVES = ("sdpo", "grpo", "hybrid")


class TrainState(NamedTuple):
    """params; optax state; the teacher's own parameters (EMA fp32 copy, or the frozen initial model for
    `frozen` / `trust_region`; None for `live`); step = optimizer updates applied (int32)."""
    params: Any
    opt_state: Any
    teacher_params: Any
    step: Any


@dataclasses.dataclass(frozen=True)
class StepSettings:
    """Static settings of the step (hashable; names mirror the config, `loss.*` / `teacher.*` / `optim.*`).

    objective: "sdpo" | "grpo" | "hybrid" (A = hybrid_lambda A_GRPO + (1 - hybrid_lambda) A_SDPO).
    loss_mode: a mode of `divergences.DIVERGENCES` (topk | full | token); topk: K; add_tail: the tail bucket
    (else renormalise in K).
    alpha: 0 forward KL, 1 reverse KL, between the generalized JSD (alpha = the teacher's weight).
    is_clip: distillation IS weight clip (None = no IS weight); rollout_is_clip: rollout TIS clip (None = off).
    aggregation: seq_mean_token_mean | token_mean | seq_mean_token_sum. temperature: the rollout's.
    clip_low / clip_high / dual_clip: PPO clip (GRPO and hybrid). adv_clip: per-logit advantage clip
    (reverse KL / token mode; None = off). norm_adv_by_std: GRPO advantage normalisation (`batch.build` applies it).
    teacher_kind: ema | trust_region | frozen | live; ema_rate; trust_region_mix.
    vocab_chunk: vocabulary columns per chunk; seq_chunk: at most this many tokens (of a micro-batch's
    flattened B*T) per logits block, so a block is at most seq_chunk x vocab_chunk fp32 (None/0 = all
    tokens at once); micro_batches: gradient-accumulation splits of a mini-batch; minibatch_groups: whole groups
    (questions) per optimizer step (0 = the whole generation batch); an update whose loss or gradient norm is
    not finite is always skipped. old_logprobs_from_step: one optimizer step per generation batch
    (on-policy), so pi_old is the current policy: the step uses stop_gradient of its own log-probs and
    `update_on_generation_batch` skips the separate old-log-prob forward (TRL does the same)."""
    objective: str = defaults.OBJECTIVE
    hybrid_lambda: float = defaults.HYBRID_LAMBDA
    loss_mode: str = defaults.LOSS_MODE
    topk: int | None = defaults.TOPK
    add_tail: bool = defaults.ADD_TAIL
    alpha: float = defaults.ALPHA
    is_clip: float | None = defaults.IS_CLIP
    rollout_is_clip: float | None = defaults.ROLLOUT_IS_CLIP
    aggregation: str = defaults.AGGREGATION
    temperature: float = 1.0
    clip_low: float = defaults.CLIP_LOW
    clip_high: float = defaults.CLIP_HIGH
    dual_clip: float | None = defaults.DUAL_CLIP
    adv_clip: float | None = None
    norm_adv_by_std: bool = False
    teacher_kind: str = defaults.TEACHER_KIND
    ema_rate: float = defaults.EMA_RATE
    trust_region_mix: float = defaults.TRUST_REGION_MIX
    vocab_chunk: int = defaults.VOCAB_CHUNK
    seq_chunk: int | None = defaults.SEQ_CHUNK
    micro_batches: int = 1
    minibatch_groups: int = 0
    old_logprobs_from_step: bool = False

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ValueError(f"loss.objective={self.objective!r} is not one of {OBJECTIVES}")
        if self.objective != "grpo":
            divergences.check_loss_options(mode=self.loss_mode, topk=self.topk, alpha=self.alpha,
                                           temperature=self.temperature, aggregation=self.aggregation,
                                           adv_clip=self.adv_clip)
        elif self.aggregation not in losses.AGGREGATIONS:
            raise ValueError(f"loss.aggregation={self.aggregation!r} is not one of {losses.AGGREGATIONS}")
        teacher_lib.make(self.teacher_kind)  # ValueError naming teacher.kind and the registered kinds
        if not 0.0 <= self.hybrid_lambda <= 1.0:
            raise ValueError(f"loss.hybrid_lambda={self.hybrid_lambda} must be in [0, 1]")
        if not 0.0 <= self.ema_rate <= 1.0 or not 0.0 <= self.trust_region_mix <= 1.0:
            raise ValueError(f"teacher.ema_rate={self.ema_rate} and teacher.trust_region_mix="
                             f"{self.trust_region_mix} must be in [0, 1]")
        if self.micro_batches < 1 or self.minibatch_groups < 0 or self.vocab_chunk < 1:
            raise ValueError(f"optim.micro_batches={self.micro_batches} must be >= 1, optim.minibatch_prompts="
                             f"{self.minibatch_groups} >= 0, loss.vocab_chunk={self.vocab_chunk} >= 1")

    @property
    def teacher(self) -> teacher_lib.Teacher:
        return teacher_lib.make(self.teacher_kind, rate=self.ema_rate, mix=self.trust_region_mix)

    @property
    def divergence(self) -> divergences.Divergence:
        """The divergence mode `loss_mode` with its options (`divergences.make`)."""
        return divergences.make(self.loss_mode, topk=self.topk, add_tail=self.add_tail, alpha=self.alpha,
                                adv_clip=self.adv_clip)

    @property
    def uses_sdpo(self) -> bool:
        return self.objective != "grpo"

    @property
    def uses_grpo(self) -> bool:
        return self.objective != "sdpo"


# ----------------------------------------------------------------------------- optimizer and state


def lr_schedule(lr: float, warmup_steps: int, *, cosine_steps: int = 0, final_lr_ratio: float = 1.0):
    """Learning rate at update `count`: a linear rise over `warmup_steps` updates (lr * (k + 1) / warmup
    at update k), then `lr` (constant), or with `cosine_steps` > 0 a cosine from `lr` down to
    `lr * final_lr_ratio` over that many updates after the warmup, then that floor."""
    warmup = max(int(warmup_steps), 1)

    def schedule(count):
        rise = lr * jnp.minimum(1.0, (count + 1) / warmup)
        if cosine_steps <= 0:
            return rise
        progress = jnp.clip((count + 1 - warmup) / cosine_steps, 0.0, 1.0)
        decay = final_lr_ratio + (1.0 - final_lr_ratio) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
        return jnp.where(count + 1 < warmup, rise, lr * decay)

    return schedule


def make_optimizer(lr: float, warmup_steps: int, weight_decay: float = 0.01, b1: float = 0.9, b2: float = 0.999,
                   grad_clip: float | None = 1.0, eps: float = 1e-8, *, cosine_steps: int = 0,
                   final_lr_ratio: float = 1.0) -> optax.GradientTransformation:
    """AdamW (decoupled weight decay on all parameters) after global-norm clipping, at `lr_schedule`."""
    schedule = lr_schedule(lr, warmup_steps, cosine_steps=cosine_steps, final_lr_ratio=final_lr_ratio)
    adamw = optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
    return optax.chain(optax.clip_by_global_norm(grad_clip), adamw) if grad_clip else adamw


def abstract_params(model_cfg):
    """The parameters as ShapeDtypeStructs (param dtype, no sharding): nothing allocated."""
    dtype = jnp.dtype(model_cfg.param_dtype)
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(tuple(s), dtype), models.param_shapes(model_cfg),
                        is_leaf=lambda x: isinstance(x, tuple))


def train_state_shardings(model_cfg, settings: StepSettings, optimizer, mesh) -> TrainState:
    """TrainState of NamedShardings: parameters (and the teacher, same layout) by the sharding rules,
    the optimizer's moments like the parameters, its counters and the step replicated."""
    param_sh = models.param_shardings(model_cfg, mesh)
    replicated = NamedSharding(mesh, P())
    opt_abstract = jax.eval_shape(optimizer.init, abstract_params(model_cfg))
    opt_sh = optax.tree_map_params(optimizer, lambda _, s: s, opt_abstract, param_sh,
                                   transform_non_params=lambda _: replicated)
    teacher_sh = param_sh if settings.teacher.owns_params else None
    return TrainState(param_sh, opt_sh, teacher_sh, replicated)


def init_train_state(model_cfg, settings: StepSettings, params, optimizer, mesh=None) -> TrainState:
    """params (consumed: they become `state.params`), a fresh optimizer state, the teacher's parameters
    (`Teacher.init_params`) and step 0; placed by `train_state_shardings` when a mesh is given."""
    state = TrainState(params, optimizer.init(params), settings.teacher.init_params(params),
                       jnp.zeros((), jnp.int32))
    if mesh is not None:
        state = jax.device_put(state, train_state_shardings(model_cfg, settings, optimizer, mesh))
    return state


# ----------------------------------------------------------------------------- the loss of one micro-batch


def _rows_and_columns(prefix_ids, prefix_mask, completion_ids, completion_mask):
    """Row [prefix | completion] (ids, mask) and the columns P-1+t whose hidden states predict token t."""
    p_len, c_len = prefix_ids.shape[1], completion_ids.shape[1]
    ids = jnp.concatenate([prefix_ids, completion_ids], axis=1)
    mask = jnp.concatenate([prefix_mask, completion_mask], axis=1)
    return ids, mask, slice(p_len - 1, p_len - 1 + c_len)


def token_quantities_for_batch(model_cfg, settings: StepSettings, params, teacher_params, mb: RolloutBatch,
                               need_teacher: bool):
    """Student (and teacher) forwards of one micro-batch and the chunked per-token quantities [B, C]."""
    ids, mask, cols = _rows_and_columns(mb.prompt_ids, mb.prompt_mask, mb.completion_ids, mb.completion_mask)
    h_s = models.hidden_states(model_cfg, params, ids, mask)[:, cols]
    w_s = models.unembedding(model_cfg, params)
    t_h, t_w = (), ()
    if need_teacher:
        t_ids, t_mask, t_cols = _rows_and_columns(mb.teacher_prompt_ids, mb.teacher_prompt_mask, mb.completion_ids,
                                                  mb.completion_mask)
        t_h, t_w = settings.teacher.hidden_terms(model_cfg, params, teacher_params, t_ids, t_mask, positions=t_cols)
    return divergences.token_quantities_from_hidden(
        h_s, w_s, t_h, t_w, mb.completion_ids, divergence=settings.divergence if need_teacher else None,
        temperature=settings.temperature, vocab_chunk=settings.vocab_chunk, seq_chunk=settings.seq_chunk)


def _micro_loss(model_cfg, settings: StepSettings, params, teacher_params, mb: RolloutBatch, dens):
    """(loss, metric sums) of one micro-batch; `dens` are the mini-batch-wide aggregation denominators."""
    q = token_quantities_for_batch(model_cfg, settings, params, teacher_params, mb, settings.uses_sdpo)
    rw = mb.row_weight
    cm = mb.completion_mask.astype(jnp.float32)
    sd_m = cm * mb.sd_mask[:, None]
    ls_y = q["ls_y"]
    if settings.old_logprobs_from_step:  # on-policy: pi_old is the policy being updated, before this step
        mb = mb._replace(old_logprobs=jax.lax.stop_gradient(ls_y))
    sums = {"sd_rows": jnp.sum(rw * mb.sd_mask), "rows": jnp.sum(rw)}
    loss_sd = loss_pg = jnp.float32(0.0)
    if settings.uses_sdpo:
        loss_sd, sd_sums = losses.sdpo_loss_and_sums(
            q, sd_m, aggregation=settings.aggregation, row_weight=rw, old_logprobs=mb.old_logprobs,
            is_clip=settings.is_clip, sampler_logprobs=mb.sampler_logprobs, rollout_is_clip=settings.rollout_is_clip,
            denominators=dens["sd"], entropy_mask_bt=cm * rw[:, None])
        sums.update(sd_sums)
    else:
        sums.update(losses.token_metric_sums(cm * rw[:, None], entropy=q["entropy"]))
    if settings.uses_grpo:
        adv = jnp.broadcast_to(mb.advantages[:, None], ls_y.shape)
        pg_bt, clipped, dual = losses.grpo_token_loss(ls_y, mb.old_logprobs, adv, clip_low=settings.clip_low,
                                                      clip_high=settings.clip_high, dual_clip=settings.dual_clip)
        _, rho = losses.token_weights(ls_y, mb.old_logprobs, mb.sampler_logprobs, None, settings.rollout_is_clip)
        loss_pg = jnp.sum(losses.token_coefficients(cm, rw, settings.aggregation, dens["pg"]) * pg_bt * rho)
        pm = cm * rw[:, None]
        sums.update(pg_tokens=jnp.sum(pm), pg_clip_sum=jnp.sum(pm * clipped), pg_lower_sum=jnp.sum(pm * dual),
                    ppo_kl_sum=jnp.sum(pm * jax.lax.stop_gradient(mb.old_logprobs - ls_y)))
    if settings.objective == "sdpo":
        loss = loss_sd
    elif settings.objective == "grpo":
        loss = loss_pg
    else:
        loss = losses.hybrid_loss(loss_sd, loss_pg, settings.hybrid_lambda)
    sums.update(loss_sdpo=loss_sd, loss_grpo=loss_pg)
    return loss, jax.tree.map(jax.lax.stop_gradient, sums)


def _finalize(sums, loss, grad_norm, skipped, settings: StepSettings):
    out = {"loss": loss, "grad_norm": grad_norm, "skipped_nonfinite": skipped.astype(jnp.float32),
           "sd_mask_fraction": sums["sd_rows"] / jnp.maximum(sums["rows"], 1.0),
           **losses.finalize_metric_sums(sums)}
    if settings.objective == "hybrid":
        out.update(loss_sdpo=sums["loss_sdpo"], loss_grpo=sums["loss_grpo"])
    if settings.uses_grpo:
        n = jnp.maximum(sums["pg_tokens"], 1.0)
        out.update(pg_clipfrac=sums["pg_clip_sum"] / n, pg_clipfrac_lower=sums["pg_lower_sum"] / n,
                   ppo_kl=sums["ppo_kl_sum"] / n)
    return out


# ----------------------------------------------------------------------------- the jitted step


def _split_micro(x, m: int):
    """[N, ...] -> [m, N/m, ...] with micro-batch j = rows j, j+m, ... (each takes rows from every shard)."""
    return jnp.swapaxes(x.reshape((x.shape[0] // m, m) + x.shape[1:]), 0, 1)


class TrainStep:
    """The update's three jitted programs, made once (`make_train_step`), each with its in / out shardings
    and donation at its `jax.jit`:

    - `jitted(state, batch) -> (state, metrics)`: one optimizer step on one mini-batch (old_logprobs filled),
      the state donated; rows must be a multiple of data-parallel size x micro_batches;
    - `old_logprobs(params, batch) -> [N, C]`: log pi(y_t) at the rollout temperature (0 on padding),
      chunked like the step (no [N, C, V]), `micro_batches` row chunks at a time when they divide N;
    - `teacher_update(teacher_params, params) -> teacher_params` (None when the teacher never moves), the
      teacher's parameters donated.
    Calling the object runs one optimizer step under the mesh."""

    def __init__(self, model_cfg, settings: StepSettings, optimizer, mesh=None):
        self.model_cfg, self.settings, self.optimizer, self.mesh = model_cfg, settings, optimizer, mesh
        m = settings.micro_batches
        step_fn = functools.partial(_step, model_cfg, settings, optimizer,
                                    models.param_shardings(model_cfg, mesh) if mesh is not None else None)
        old_fn = functools.partial(_old_logprobs, model_cfg, settings)
        teacher = settings.teacher
        update_fn = teacher.update if teacher.updates else None
        if mesh is None:
            self.jitted = jax.jit(step_fn, donate_argnums=(0,))
            self.old_logprobs = jax.jit(old_fn)
            self.teacher_update = update_fn and jax.jit(update_fn, donate_argnums=(0,))
        else:
            state_sh = train_state_shardings(model_cfg, settings, optimizer, mesh)
            batch_sh, replicated = batch_shardings(mesh), NamedSharding(mesh, P())
            self.jitted = jax.jit(step_fn, in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, replicated),
                                  donate_argnums=(0,))
            self.old_logprobs = jax.jit(old_fn, in_shardings=(state_sh.params, batch_sh),
                                        out_shardings=sharding.batch_sharding(mesh, 2))
            self.teacher_update = update_fn and jax.jit(
                update_fn, in_shardings=(state_sh.teacher_params, state_sh.params),
                out_shardings=state_sh.teacher_params, donate_argnums=(0,))
        self.rows_multiple = data_parallel_size(mesh) * m

    def init_state(self, params) -> TrainState:
        """A fresh TrainState from `params` (consumed) in this step's shardings (`init_train_state`)."""
        return init_train_state(self.model_cfg, self.settings, params, self.optimizer, self.mesh)

    def __call__(self, state: TrainState, batch: RolloutBatch):
        rows = batch.rewards.shape[0]
        if rows % self.rows_multiple:
            raise ValueError(f"train step: {rows} rows is not a multiple of data-parallel size x micro_batches = "
                             f"{self.rows_multiple}; pad with zero-weight rows (batch.split_minibatches does)")
        compiled_calls.note("train_step", (state, batch))
        with sharding.use_mesh(self.mesh):
            return self.jitted(state, batch)


def make_train_step(model_cfg, settings: StepSettings, optimizer, mesh=None) -> TrainStep:
    """The `TrainStep` (its three jitted programs) for this model, settings, optimizer and mesh."""
    return TrainStep(model_cfg, settings, optimizer, mesh)


def _step(model_cfg, settings: StepSettings, optimizer, param_sh, state: TrainState, batch: RolloutBatch):
    """One optimizer step (the body of `TrainStep.jitted`)."""
    m = settings.micro_batches
    cm = batch.completion_mask.astype(jnp.float32)
    sd_m = cm * batch.sd_mask[:, None]
    dens = {"sd": losses.aggregation_denominators(sd_m, batch.row_weight),
            "pg": losses.aggregation_denominators(cm, batch.row_weight)}
    grad_fn = jax.value_and_grad(
        lambda p, mb: _micro_loss(model_cfg, settings, p, state.teacher_params, mb, dens), has_aux=True)
    if m == 1:
        (loss, sums), grads = grad_fn(state.params, batch)
    else:
        micro = jax.tree.map(lambda x: _split_micro(x, m), batch)

        def body(carry, mb):
            (loss_i, sums_i), grads_i = grad_fn(state.params, mb)
            loss_acc, sums_acc, grads_acc = carry
            grads_acc = jax.tree.map(lambda a, g: a + g.astype(jnp.float32), grads_acc, grads_i)
            if param_sh is not None:
                grads_acc = jax.lax.with_sharding_constraint(grads_acc, param_sh)
            return (loss_acc + loss_i, jax.tree.map(jnp.add, sums_acc, sums_i), grads_acc), None

        zero_grads = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), state.params)
        zero_sums = jax.tree.map(jnp.zeros_like, jax.eval_shape(
            lambda: grad_fn(state.params, jax.tree.map(lambda x: x[0], micro))[0][1]))
        (loss, sums, grads), _ = jax.lax.scan(body, (jnp.float32(0.0), zero_sums, zero_grads), micro)
        grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, state.params)
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, new_opt = optimizer.update(grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)  # noqa: E731
    new_params, new_opt = keep(new_params, state.params), keep(new_opt, state.opt_state)
    new_state = TrainState(new_params, new_opt, state.teacher_params, state.step + finite.astype(jnp.int32))
    return new_state, _finalize(sums, loss, grad_norm, ~finite, settings)


def _old_logprobs(model_cfg, settings: StepSettings, params, batch: RolloutBatch):
    """The body of `TrainStep.old_logprobs` (micro-batches when they divide the rows, else one pass)."""
    micro = settings.micro_batches if batch.rewards.shape[0] % settings.micro_batches == 0 else 1

    def rows_logprobs(mb: RolloutBatch):
        q = token_quantities_for_batch(model_cfg, settings, params, None, mb, need_teacher=False)
        return q["ls_y"] * mb.completion_mask.astype(jnp.float32)

    if micro == 1:
        return rows_logprobs(batch)
    out = jax.lax.map(rows_logprobs, jax.tree.map(lambda x: _split_micro(x, micro), batch))
    return jnp.swapaxes(out, 0, 1).reshape(batch.completion_ids.shape)


# ----------------------------------------------------------------------------- the generation-batch driver


def update_on_generation_batch(step: TrainStep, state: TrainState, batch: RolloutBatch):
    """Old log-probs for every row, then one optimizer step per mini-batch of whole groups, then the teacher.

    `batch` is a checked host-side batch (`batch.build` / `batch.check`). Mini-batches hold
    `settings.minibatch_groups` groups (0 = all), padded with zero-weight rows to a multiple of data-parallel
    size x micro_batches (`batch.split_minibatches`; on several processes every process passes the same global
    batch). A step with a non-finite loss or gradient leaves the state unchanged; a teacher that moves
    (`Teacher.updates`, e.g. EMA) moves once, after the last step, only if some step was applied. Returns
    (state, metrics): each metric an array over the mini-batches, plus `ema_updated` (0/1)."""
    settings, mesh = step.settings, step.mesh
    minibatches = split_minibatches(batch, minibatch_groups=settings.minibatch_groups,
                                    micro_batches=settings.micro_batches, mesh=mesh)
    if settings.old_logprobs_from_step:
        if len(minibatches) != 1:
            raise ValueError(f"old_logprobs_from_step needs one mini-batch per generation batch, got {len(minibatches)}")
    else:
        with sharding.use_mesh(mesh):
            for i, mb in enumerate(minibatches):
                compiled_calls.note("old_logprobs", (state.params, mb))
                minibatches[i] = mb._replace(old_logprobs=step.old_logprobs(state.params, mb))
    per_step = []
    for mb in minibatches:
        state, metrics = step(state, mb)
        per_step.append(metrics)
    per_step = jax.device_get(per_step)  # one transfer for every mini-batch's metrics
    metrics = {k: np.array([m[k] for m in per_step], np.float64) for k in per_step[0]}
    any_applied = bool(np.any(metrics["skipped_nonfinite"] == 0))
    moved = step.teacher_update is not None and any_applied
    if moved:
        compiled_calls.note("teacher_update", (state.teacher_params, state.params))
        with sharding.use_mesh(mesh):
            state = state._replace(teacher_params=step.teacher_update(state.teacher_params, state.params))
    metrics["ema_updated"] = np.array([float(moved)])
    return state, metrics
