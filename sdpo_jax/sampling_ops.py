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
    """For logits sorted in descending order: keep a token while the mass strictly before it < top_p."""
    if top_p >= 1.0:
        return jnp.ones(sorted_vals_bk.shape, bool)
    probs_bk = jax.nn.softmax(sorted_vals_bk, axis=-1)
    mass_before_bk = jnp.cumsum(probs_bk, axis=-1) - probs_bk
    return (mass_before_bk < top_p).at[:, 0].set(True)


def sample_token(scaled_bv: jax.Array, rng: jax.Array, *, top_k: int, top_p: float) -> jax.Array:
    """One token per row from softmax(scaled) truncated by top-k then top-p. int32 `[B]`.

    With neither truncation active, no sort at all: a Gumbel-max draw over the full vocabulary.
    With top-k, only the k candidates from `lax.top_k` are considered (top-p then works on them,
    renormalised, as Hugging Face's warpers do). Top-p alone needs the full descending order.
    """
    vocab = scaled_bv.shape[-1]
    if top_k == 0 and top_p >= 1.0:
        return jax.random.categorical(rng, scaled_bv, axis=-1).astype(jnp.int32)
    k = top_k if 0 < top_k < vocab else vocab
    vals_bk, ids_bk = jax.lax.top_k(scaled_bv, k)
    vals_bk = jnp.where(_top_p_keep(vals_bk, top_p), vals_bk, -jnp.inf)
    pick_b = jax.random.categorical(rng, vals_bk, axis=-1)
    return jnp.take_along_axis(ids_bk, pick_b[:, None], axis=-1)[:, 0].astype(jnp.int32)


def choose_tokens(logits_bv: jax.Array, rng: jax.Array, spec: SamplingSpec) -> tuple[jax.Array, jax.Array]:
    """(token int32 [B], logprob fp32 [B]) for one decode step.

    logprob = log_softmax(logits / T)[token] over the full vocabulary (T = 1 for greedy).
    """
    logits_bv = logits_bv.astype(jnp.float32)
    if spec.greedy:
        token_b = jnp.argmax(logits_bv, axis=-1).astype(jnp.int32)
        scaled_bv = logits_bv
    else:
        scaled_bv = logits_bv / jnp.float32(spec.temperature)
        token_b = sample_token(scaled_bv, rng, top_k=spec.top_k, top_p=spec.top_p)
    chosen_b = jnp.take_along_axis(scaled_bv, token_b[:, None], axis=-1)[:, 0]
    logprob_b = chosen_b - jax.nn.logsumexp(scaled_bv, axis=-1)
    return token_b, logprob_b


def is_stop(token_b: jax.Array, stop_ids_e: jax.Array) -> jax.Array:
    """bool [B]: the token is one of the stop ids (an empty `stop_ids_e` stops nothing)."""
    return jnp.any(token_b[:, None] == stop_ids_e[None, :], axis=-1)
