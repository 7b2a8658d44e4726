"""Pure token-choice functions for the sampler: greedy, temperature, top-k and top-p.

Every function here maps fp32 logits `[B, V]` (and a PRNG key) to one token per row, plus the
log-probability the trainer needs for that token. The log-prob is always taken over the FULL
vocabulary of the temperature-scaled distribution, `log_softmax(z / T)[token]` (greedy, T = 0:
`log_softmax(z)[token]`), because that is exactly what the trainer recomputes from its own forward
for the importance ratio. With top-k / top-p active the distribution the token was drawn from is the
truncated one, so this log-prob is NOT the behaviour policy's log-prob there; it is the untruncated
policy's, which is what SDPO/GRPO ratios compare against.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class SamplingSpec:
    """How tokens are chosen. Hashable, so it is a static argument of the jitted prefill/decode.

    temperature: 0 means greedy (argmax); > 0 divides the logits.
    top_k: 0 means off; otherwise keep the k most likely tokens (lax.top_k, no full sort).
    top_p: 1.0 means off; otherwise keep the smallest set of most likely tokens (after top-k) whose
      probability mass reaches top_p; the most likely token is always kept.
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def validate(self, vocab_size: int) -> "SamplingSpec":
        if not self.temperature >= 0.0:
            raise ValueError(f"generate: temperature={self.temperature} must be >= 0 (0 = greedy)")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"generate: top_p={self.top_p} must be in (0, 1] (1.0 = off)")
        if self.top_k < 0:
            raise ValueError(f"generate: top_k={self.top_k} must be >= 0 (0 = off)")
        if self.top_k >= vocab_size:  # keeping the whole vocabulary is the same as no top-k
            return dataclasses.replace(self, top_k=0)
        return self


def truncation_mask(logits_bv: jax.Array, *, top_k: int, top_p: float) -> jax.Array:
    """Boolean `[B, V]`: which tokens survive top-k then top-p (a reference for tests and analysis).

    Uses a full sort, so the decode loop does not call it; `sample_token` does the same selection on
    the top-k candidates only.
    """
    vocab = logits_bv.shape[-1]
    k = top_k if 0 < top_k < vocab else vocab
    vals_bk, ids_bk = jax.lax.top_k(logits_bv, k)
    keep_bk = _top_p_keep(vals_bk, top_p)
    rows_b1 = jnp.arange(logits_bv.shape[0])[:, None]
    return jnp.zeros(logits_bv.shape, bool).at[rows_b1, ids_bk].set(keep_bk)


def _top_p_keep(sorted_vals_bk: jax.Array, top_p: float) -> jax.Array:
    """Logits sorted in descending order: keep a token while the mass strictly before it < top_p."""
    if top_p >= 1.0:
        return jnp.ones(sorted_vals_bk.shape, bool)
    probs_bk = jax.nn.softmax(sorted_vals_bk, axis=-1)
    mass_before_bk = jnp.cumsum(probs_bk, axis=-1) - probs_bk
    return (mass_before_bk < top_p).at[:, 0].set(True)


_CDF_BLOCK = 128  # inverse-CDF sampling scans blocks of this many tokens, then one block


def first_argmax(x_bv: jax.Array, max_b: jax.Array | None = None) -> jax.Array:
    """argmax over the last axis (the first index among ties), int32 [B].

    Two plain reductions (max, then the smallest index holding it): XLA:CPU vectorises these,
    while `jnp.argmax`'s variadic (value, index) reduce runs several times slower.
    """
    if max_b is None:
        max_b = x_bv.max(axis=-1)
    vocab = x_bv.shape[-1]
    index_bv = jax.lax.broadcasted_iota(jnp.int32, x_bv.shape, x_bv.ndim - 1)
    first_b = jnp.min(jnp.where(x_bv == max_b[..., None], index_bv, vocab), axis=-1)
    return jnp.minimum(first_b, vocab - 1)  # NaN rows: stay in range


def inverse_cdf_sample(weights_bv: jax.Array, uniform_b: jax.Array) -> jax.Array:
    """Index i with cumsum(w)[i-1] <= u * sum(w) < cumsum(w)[i], per row: a draw from w / sum(w).

    `weights_bv` >= 0 with a positive sum; `uniform_b` in [0, 1). Blocked: cumulative sums over
    blocks of `_CDF_BLOCK` tokens pick the block, a cumsum inside that block picks the token, so
    the cost is one pass over [B, V] plus O(B * (V / block + block)). A zero-weight token is never
    returned (both searches land on a strict increase; overflow from rounding falls back to the
    last block / token with positive weight).
    """
    batch, vocab = weights_bv.shape
    block = min(_CDF_BLOCK, vocab)
    num_blocks = -(-vocab // block)
    w_bnk = jnp.pad(weights_bv, ((0, 0), (0, num_blocks * block - vocab)))
    w_bnk = w_bnk.reshape(batch, num_blocks, block)
    block_sum_bn = w_bnk.sum(axis=-1)
    block_cum_bn = jnp.cumsum(block_sum_bn, axis=-1)
    target_b = uniform_b * block_cum_bn[:, -1]

    def last_positive(w_bx):
        index_bx = jax.lax.broadcasted_iota(jnp.int32, w_bx.shape, 1)
        return jnp.max(jnp.where(w_bx > 0, index_bx, 0), axis=-1)

    blk_b = jnp.sum(block_cum_bn <= target_b[:, None], axis=-1, dtype=jnp.int32)
    blk_b = jnp.minimum(blk_b, last_positive(block_sum_bn))
    before_b = jnp.where(blk_b > 0, jnp.take_along_axis(
        block_cum_bn, jnp.maximum(blk_b - 1, 0)[:, None], axis=-1)[:, 0], 0.0)
    w_bk = jnp.take_along_axis(w_bnk, blk_b[:, None, None], axis=1)[:, 0, :]
    cum_bk = before_b[:, None] + jnp.cumsum(w_bk, axis=-1)
    pos_b = jnp.sum(cum_bk <= target_b[:, None], axis=-1, dtype=jnp.int32)
    pos_b = jnp.minimum(pos_b, last_positive(w_bk))
    return blk_b * block + pos_b


def sample_token(scaled_bv: jax.Array, rng: jax.Array, *, top_k: int, top_p: float,
                 exp_bv: jax.Array | None = None) -> jax.Array:
    """One token per row from softmax(scaled) truncated by top-k then top-p. int32 `[B]`.

    One uniform per row and an inverse-CDF search (no per-token random numbers, no argmax).
    With neither truncation active, no sort at all (`exp_bv` = exp(scaled - max) may be passed in
    to reuse it). With top-k, only the k candidates from `lax.top_k` are considered (top-p then
    works on them, renormalised, as Hugging Face's warpers do); top-p alone sorts the vocabulary.
    """
    vocab = scaled_bv.shape[-1]
    uniform_b = jax.random.uniform(rng, scaled_bv.shape[:1], jnp.float32)
    if top_k == 0 and top_p >= 1.0:
        if exp_bv is None:
            exp_bv = jnp.exp(scaled_bv - scaled_bv.max(axis=-1, keepdims=True))
        return inverse_cdf_sample(exp_bv, uniform_b)
    k = top_k if 0 < top_k < vocab else vocab
    vals_bk, ids_bk = jax.lax.top_k(scaled_bv, k)
    weights_bk = jnp.where(_top_p_keep(vals_bk, top_p), jnp.exp(vals_bk - vals_bk[:, :1]), 0.0)
    pick_b = inverse_cdf_sample(weights_bk, uniform_b)
    return jnp.take_along_axis(ids_bk, pick_b[:, None], axis=-1)[:, 0].astype(jnp.int32)


def choose_tokens(logits_bv: jax.Array, rng: jax.Array,
                  spec: SamplingSpec) -> tuple[jax.Array, jax.Array]:
    """(token int32 [B], logprob fp32 [B]) for one decode step.

    logprob = log_softmax(logits / T)[token] over the full vocabulary (T = 1 for greedy). The max
    and exp(z - max) of the logsumexp are shared with the token choice.
    """
    scaled_bv = logits_bv.astype(jnp.float32)
    if not spec.greedy:
        scaled_bv = scaled_bv / jnp.float32(spec.temperature)
    max_b = scaled_bv.max(axis=-1)
    exp_bv = jnp.exp(scaled_bv - max_b[:, None])
    if spec.greedy:
        token_b = first_argmax(scaled_bv, max_b)
    else:
        token_b = sample_token(scaled_bv, rng, top_k=spec.top_k, top_p=spec.top_p, exp_bv=exp_bv)
    chosen_b = jnp.take_along_axis(scaled_bv, token_b[:, None], axis=-1)[:, 0]
    logprob_b = chosen_b - max_b - jnp.log(exp_bv.sum(axis=-1))
    return token_b, logprob_b


def is_stop(token_b: jax.Array, stop_ids_e: jax.Array) -> jax.Array:
    """bool [B]: the token is one of the stop ids (an empty `stop_ids_e` stops nothing)."""
    return jnp.any(token_b[:, None] == stop_ids_e[None, :], axis=-1)
