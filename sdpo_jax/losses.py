"""The per-token math of the SDPO losses, their one assembly, and GRPO (docs/ALGORITHM.md §2 and §5).

Shapes: `B` rows (sequences), `T` completion positions, `V` vocabulary, `K` top-K categories,
`C` categories of the divergence (K+1 with the tail bucket, K without, V in `full` mode).

The per-token pieces (`category_logprobs_topk`, `divergence`, `token_surrogate`, `token_weights`,
`token_coefficients`, `token_metric_sums`) serve both forms of each divergence mode in `divergences.py`
(the reference on materialised logits, and the chunked one from hidden states in `chunked_losses.py`);
`sdpo_loss_and_sums` assembles the loss from either form's per-token quantities.

Semantics follow docs/ALGORITHM.md §2 and §5:
- both distributions are softmax(logits / temperature);
- `topk`: K indices from the student's current logits (no gradient through the indices), log-probs
  normalised over the full vocabulary, plus the tail bucket log(1 - sum p) computed stably, or
  renormalised within the K without the tail;
- alpha = 0: KL(teacher || student); alpha = 1: KL(student || teacher); in between the generalized
  JSD with mixture m = (1 - alpha) s + alpha q and D = alpha KL(q || m) + (1 - alpha) KL(s || m);
- `token`: the sampled-token surrogate sg(log s(y) - log q(y)) * log s(y) (alpha = 1 only);
- importance weight min(exp(clamp(log s(y) - log pi_old(y), -20, 20)), is_clip), detached; rollout
  TIS min(exp(clamp(log pi_old - log pi_sampler, -20, 20)), rollout_is_clip), detached;
- `adv_clip = c` (reverse KL / token mode only): the per-category advantage
  A(i) = sg(log q(i) - log s(i)) is clipped to [-c, c] inside the logit-level policy gradient
  -sum_i sg(s(i) A(i)) log s(i). The reported value stays the divergence itself; only the gradient
  is the clipped one (straight-through), so the logged loss keeps one meaning.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

AGGREGATIONS = ("seq_mean_token_mean", "token_mean", "seq_mean_token_sum")
TAIL_CLAMP = -1e-7  # log(sum of top-K probabilities) is clamped here before log(-expm1(.)).
LOG_RATIO_CLAMP = 20.0


# ----------------------------------------------------------------------------- per-token pieces


def category_logprobs_topk(z_topk_bk: jax.Array, lse_b: jax.Array, add_tail: bool) -> jax.Array:
    """Log-probs over the top-K categories (+ the tail bucket) from tempered logits at the K indices.

    `z_topk_bk` are logits / T at the K indices, `lse_b` the logsumexp of logits / T over the whole
    vocabulary. With the tail: [log p(i) for i in I] + [log(1 - sum_I p)], the tail computed as
    log(-expm1(min(logsumexp_I log p, -1e-7))). Without: log p renormalised within I.
    """
    logp_bk = z_topk_bk - lse_b[..., None]
    if not add_tail:
        return logp_bk - jax.nn.logsumexp(logp_bk, axis=-1, keepdims=True)
    log_mass_b = jnp.minimum(jax.nn.logsumexp(logp_bk, axis=-1), TAIL_CLAMP)
    tail_b = jnp.log(-jnp.expm1(log_mass_b))
    return jnp.concatenate([logp_bk, tail_b[..., None]], axis=-1)


def divergence_terms(ls_c: jax.Array, lq_c: jax.Array, alpha: float,
                     adv_clip: float | None = None) -> jax.Array:
    """Per-category contributions to D(student s, teacher q); sum them over the categories.

    `ls_c` carries the student's gradient; `lq_c` is the teacher (treated as constant). See the module
    docstring for alpha and adv_clip.
    """
    lq_c = jax.lax.stop_gradient(lq_c)
    s_c = jnp.exp(ls_c)
    if alpha == 1.0:
        kl_c = s_c * (ls_c - lq_c)
        if adv_clip is None:
            return kl_c
        adv_c = jax.lax.stop_gradient(jnp.clip(lq_c - ls_c, -adv_clip, adv_clip))
        surrogate_c = -jax.lax.stop_gradient(s_c) * adv_c * ls_c
        return jax.lax.stop_gradient(kl_c) + surrogate_c - jax.lax.stop_gradient(surrogate_c)
    q_c = jnp.exp(lq_c)
    if alpha == 0.0:
        return q_c * (lq_c - ls_c)
    lm_c = jnp.logaddexp(math.log(1.0 - alpha) + ls_c, math.log(alpha) + lq_c)
    return alpha * q_c * (lq_c - lm_c) + (1.0 - alpha) * s_c * (ls_c - lm_c)


def divergence(ls_bc: jax.Array, lq_bc: jax.Array, alpha: float, adv_clip: float | None = None) -> jax.Array:
    """D(s || q) summed over the last (category) axis."""
    return jnp.sum(divergence_terms(ls_bc, lq_bc, alpha, adv_clip), axis=-1)


def token_surrogate(ls_y: jax.Array, lq_y: jax.Array, adv_clip: float | None = None) -> jax.Array:
    """The sampled-token loss sg(log s(y) - log q(y)) * log s(y); with adv_clip, the advantage
    A = log q(y) - log s(y) is clipped to [-c, c] first (value then -sg(clip(A)) * log s(y))."""
    adv = jax.lax.stop_gradient(lq_y - ls_y)
    if adv_clip is not None:
        adv = jnp.clip(adv, -adv_clip, adv_clip)
    return -adv * ls_y


def token_weights(ls_y: jax.Array, old_logprobs: jax.Array | None, sampler_logprobs: jax.Array | None,
                  is_clip: float | None, rollout_is_clip: float | None) -> tuple[jax.Array, jax.Array]:
    """(distillation IS weight w, rollout TIS weight rho), both detached, shaped like `ls_y`."""
    ones = jnp.ones_like(ls_y)
    w = ones
    if is_clip is not None:
        if old_logprobs is None:
            raise ValueError("is_clip is set but old_logprobs is None; pass the behaviour log-probs or is_clip=None")
        log_ratio = jnp.clip(jax.lax.stop_gradient(ls_y) - old_logprobs, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
        w = jnp.minimum(jnp.exp(log_ratio), is_clip)
    rho = ones
    if rollout_is_clip is not None and sampler_logprobs is not None:
        if old_logprobs is None:
            raise ValueError("rollout TIS needs old_logprobs (pi_old) beside sampler_logprobs")
        log_ratio = jnp.clip(old_logprobs - sampler_logprobs, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
        rho = jnp.minimum(jnp.exp(log_ratio), rollout_is_clip)
    return jax.lax.stop_gradient(w), jax.lax.stop_gradient(rho)


def aggregation_denominators(mask_bt: jax.Array, row_weight_b: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(rows, tokens) of a whole mini-batch: sum of row weights, sum of row-weighted mask tokens.

    The train step computes these once per mini-batch so that its micro-batches add up to the same loss
    (and gradient) as one pass over the mini-batch."""
    rows = jnp.sum(row_weight_b)
    tokens = jnp.sum(mask_bt * row_weight_b[:, None])
    return rows, tokens


def token_coefficients(mask_bt: jax.Array, row_weight_b: jax.Array | None, aggregation: str,
                       denominators: tuple[jax.Array, jax.Array] | None = None) -> jax.Array:
    """c[b, t] such that the aggregated loss is sum(c * per_token_loss).

    - seq_mean_token_mean: (1/N) sum_b [sum_t M l / max(sum_t M, 1)]  (masked rows count in N);
    - token_mean: sum M l / max(sum M, 1);
    - seq_mean_token_sum: (1/N) sum_b sum_t M l.
    N = sum of row weights (zero-weight padding rows do not count)."""
    mask_bt = mask_bt.astype(jnp.float32)
    if row_weight_b is None:
        row_weight_b = jnp.ones(mask_bt.shape[0], jnp.float32)
    if denominators is None:
        denominators = aggregation_denominators(mask_bt, row_weight_b)
    rows, tokens = denominators
    weighted_bt = mask_bt * row_weight_b[:, None]
    if aggregation == "seq_mean_token_mean":
        per_row = jnp.maximum(jnp.sum(mask_bt, axis=1, keepdims=True), 1.0)
        return weighted_bt / per_row / jnp.maximum(rows, 1.0)
    if aggregation == "token_mean":
        return weighted_bt / jnp.maximum(tokens, 1.0)
    if aggregation == "seq_mean_token_sum":
        return weighted_bt / jnp.maximum(rows, 1.0)
    raise ValueError(f"aggregation={aggregation!r} is not one of {AGGREGATIONS}")


def token_metric_sums(mask_bt: jax.Array, *, is_weight=None, advantage=None, entropy=None,
                      entropy_mask_bt=None) -> dict[str, jax.Array]:
    """Masked sums for the metrics (so micro-batches add up); `finalize_metric_sums` turns them into means."""
    m = jax.lax.stop_gradient(mask_bt.astype(jnp.float32))
    out = {"tokens": jnp.sum(m)}
    if is_weight is not None:
        out["is_weight_sum"] = jnp.sum(m * is_weight)
    if advantage is not None:
        a = jax.lax.stop_gradient(advantage)
        out["advantage_sum"] = jnp.sum(m * a)
        out["advantage_sq_sum"] = jnp.sum(m * a * a)
        out["advantage_pos_sum"] = jnp.sum(m * (a > 0))
    if entropy is not None:
        em = m if entropy_mask_bt is None else jax.lax.stop_gradient(entropy_mask_bt.astype(jnp.float32))
        out["entropy_sum"] = jnp.sum(em * jax.lax.stop_gradient(entropy))
        out["entropy_tokens"] = jnp.sum(em)
    return out


def finalize_metric_sums(sums: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Means from `token_metric_sums` (added over micro-batches)."""
    out = {}
    n = jnp.maximum(sums["tokens"], 1.0)
    if "is_weight_sum" in sums:
        out["is_weight_mean"] = sums["is_weight_sum"] / n
    if "advantage_sum" in sums:
        mean = sums["advantage_sum"] / n
        out["advantage_mean"] = mean
        out["advantage_std"] = jnp.sqrt(jnp.maximum(sums["advantage_sq_sum"] / n - mean * mean, 0.0))
        out["advantage_pos_frac"] = sums["advantage_pos_sum"] / n
    if "entropy_sum" in sums:
        out["entropy"] = sums["entropy_sum"] / jnp.maximum(sums["entropy_tokens"], 1.0)
    return out


def sdpo_loss_and_sums(quantities: dict[str, jax.Array], mask_bt: jax.Array, *, aggregation: str,
                       row_weight: jax.Array | None = None, old_logprobs=None, is_clip: float | None = None,
                       sampler_logprobs=None, rollout_is_clip: float | None = None,
                       denominators: tuple[jax.Array, jax.Array] | None = None,
                       entropy_mask_bt: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The SDPO loss sum(c * D * w * rho) and its metric sums (`token_metric_sums`) from per-token quantities.

    `quantities` holds `[B, T]` arrays `d` (the divergence), `ls_y` / `lq_y` (student / teacher log-prob of the
    sampled token) and `entropy`, as `divergences.token_quantities_from_logits` / `_from_hidden` return them;
    `mask_bt` is the completion mask x the self-distillation mask. c are `token_coefficients` (with
    mini-batch-wide `denominators` when given), w and rho the `token_weights`. The metrics count row-weighted
    `mask_bt` tokens, the entropy those of `entropy_mask_bt` (default: the same). The one assembly of the
    SDPO loss: the train step's and the reference entry point's (`divergences.distillation_loss`)."""
    ls_y = quantities["ls_y"]
    w_bt, rho_bt = token_weights(ls_y, old_logprobs, sampler_logprobs, is_clip, rollout_is_clip)
    coef_bt = token_coefficients(mask_bt, row_weight, aggregation, denominators)
    loss = jnp.sum(coef_bt * quantities["d"] * w_bt * rho_bt)
    metric_mask = mask_bt if row_weight is None else mask_bt * row_weight[:, None]
    sums = token_metric_sums(metric_mask, is_weight=w_bt, advantage=quantities["lq_y"] - ls_y,
                             entropy=quantities["entropy"],
                             entropy_mask_bt=metric_mask if entropy_mask_bt is None else entropy_mask_bt)
    return loss, sums


# ----------------------------------------------------------------------------- GRPO and the hybrid


def grpo_token_loss(logprobs, old_logprobs, advantages, *, clip_low=0.2, clip_high=0.28, dual_clip=3.0):
    """Per-token PPO loss (verl's `compute_policy_loss`, clip-higher and dual clip) and clip indicators.

    ratio = exp(clamp(log pi - log pi_old, -20, 20)); l1 = -A ratio; l2 = -A clip(ratio, 1 - eps_low,
    1 + eps_high); l = max(l1, l2); with dual clip c and A < 0: l = min(l, -A c).
    Returns (loss_bt, clipped_bt (l2 > l1), dual_clipped_bt)."""
    log_ratio = jnp.clip(logprobs - old_logprobs, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = jnp.exp(log_ratio)
    loss1 = -advantages * ratio
    loss2 = -advantages * jnp.clip(ratio, 1.0 - clip_low, 1.0 + clip_high)
    clipped_loss = jnp.maximum(loss1, loss2)
    clipped = (loss2 > loss1).astype(jnp.float32)
    if dual_clip is None:
        return clipped_loss, clipped, jnp.zeros_like(clipped)
    loss3 = -advantages * dual_clip
    negative = advantages < 0
    dual_clipped = ((clipped_loss > loss3) & negative).astype(jnp.float32)
    return jnp.where(negative, jnp.minimum(clipped_loss, loss3), clipped_loss), clipped, dual_clipped


def grpo_loss(logprobs, old_logprobs, advantages, mask, *, clip_low=0.2, clip_high=0.28, dual_clip=3.0,
              aggregation="seq_mean_token_mean", sampler_logprobs=None, rollout_is_clip=None,
              row_weight=None) -> tuple[jax.Array, dict[str, Any]]:
    """GRPO / PPO-clip policy loss on the sampled tokens (the paper's baseline).

    `logprobs`, `old_logprobs` `[B, T]`; `advantages` `[B]` (one per sequence, broadcast) or `[B, T]`
    (per token, e.g. the hybrid); `mask [B, T]` the completion mask. Rollout TIS (clip
    `rollout_is_clip`) multiplies each token's loss when `sampler_logprobs` is given.
    Metrics: loss, pg_clipfrac, pg_clipfrac_lower, ppo_kl (mean of log pi_old - log pi)."""
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation={aggregation!r} is not one of {AGGREGATIONS}")
    advantages = jnp.asarray(advantages, jnp.float32)
    if advantages.ndim == 1:
        advantages = advantages[:, None]
    advantages = jax.lax.stop_gradient(jnp.broadcast_to(advantages, logprobs.shape))
    old_logprobs = jax.lax.stop_gradient(old_logprobs)
    loss_bt, clipped, dual_clipped = grpo_token_loss(logprobs, old_logprobs, advantages, clip_low=clip_low,
                                                     clip_high=clip_high, dual_clip=dual_clip)
    _, rho_bt = token_weights(logprobs, old_logprobs, sampler_logprobs, None, rollout_is_clip)
    coef_bt = token_coefficients(mask, row_weight, aggregation)
    loss = jnp.sum(coef_bt * loss_bt * rho_bt)
    m = mask.astype(jnp.float32) * (1.0 if row_weight is None else row_weight[:, None])
    n = jnp.maximum(jnp.sum(m), 1.0)
    metrics = {"loss": loss, "pg_clipfrac": jnp.sum(m * clipped) / n,
               "pg_clipfrac_lower": jnp.sum(m * dual_clipped) / n,
               "ppo_kl": jnp.sum(m * jax.lax.stop_gradient(old_logprobs - logprobs)) / n}
    return loss, metrics


def hybrid_loss(sdpo_loss: jax.Array, grpo_loss_value: jax.Array, hybrid_lambda: float) -> jax.Array:
    """The paper's hybrid (docs/ALGORITHM.md §5, Eq. 3): A = lambda A_GRPO + (1 - lambda) A_SDPO.

    Both terms are policy gradients with their own advantages (GRPO's on the sampled token, SDPO's on
    every category, docs/ALGORITHM.md §2.4), so mixing the advantages is mixing the two surrogate losses with
    the same aggregation: lambda = 1 is GRPO exactly, lambda = 0 is SDPO exactly."""
    return hybrid_lambda * grpo_loss_value + (1.0 - hybrid_lambda) * sdpo_loss


def compute_grpo_advantages(rewards, group_ids=None, *, group_size: int | None = None,
                            norm_by_std: bool = False, eps: float = 1e-6) -> np.ndarray:
    """Outcome advantages per row: r - mean(group) (Dr.GRPO), optionally / (std(group) + eps).

    Groups come from `group_ids [N]` (any hashable ids) or contiguous blocks of `group_size`. As in verl,
    the std is the unbiased one, and a group of one sample has mean 0 and std 1. Host-side NumPy."""
    r = np.asarray(rewards, dtype=np.float64)
    if group_ids is None:
        if group_size is None or group_size < 1 or r.shape[0] % group_size:
            raise ValueError(f"compute_grpo_advantages: pass group_ids, or a group_size dividing N={r.shape[0]} "
                             f"(got group_size={group_size})")
        group_ids = np.arange(r.shape[0]) // group_size
    group_ids = np.asarray(group_ids)
    if group_ids.shape != r.shape:
        raise ValueError(f"compute_grpo_advantages: group_ids {group_ids.shape} must match rewards {r.shape}")
    out = np.zeros_like(r)
    for gid in np.unique(group_ids):
        rows = group_ids == gid
        vals = r[rows]
        mean, std = (vals.mean(), vals.std(ddof=1)) if vals.size > 1 else (0.0, 1.0)
        out[rows] = (vals - mean) / (std + eps) if norm_by_std else vals - mean
    return out.astype(np.float32)
