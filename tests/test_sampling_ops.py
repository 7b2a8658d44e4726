"""Token choice, buckets and padding: the parts of the sampler that need no model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from sdpo_jax.sampling import pad_to_bucket, pick_bucket
from sdpo_jax.sampling_ops import (SamplingSpec, choose_tokens, first_argmax, inverse_cdf_sample,
                                   is_stop, truncation_mask)

LOGITS_V = np.array([2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -3.0], np.float32)  # tiny vocabulary
DRAWS = 40_000


def _softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def _intended(logits_v, temperature, top_k, top_p):
    """NumPy reference of the truncated sampling distribution (top-k, then top-p on the rest)."""
    z = logits_v.astype(np.float64) / temperature
    order = np.argsort(-z, kind="stable")
    keep = np.zeros(len(z), bool)
    keep[order[: top_k or len(z)]] = True
    if top_p < 1.0:
        probs = _softmax(np.where(keep, z, -np.inf))
        mass_before = np.cumsum(probs[order]) - probs[order]
        keep_sorted = (mass_before < top_p) & keep[order]
        keep_sorted[0] = True
        keep = np.zeros(len(z), bool)
        keep[order[keep_sorted]] = True
    return _softmax(np.where(keep, z, -np.inf)), keep


@pytest.mark.parametrize("temperature,top_k,top_p", [
    (1.0, 0, 1.0), (0.7, 0, 1.0), (1.5, 3, 1.0), (1.0, 0, 0.8), (1.0, 5, 0.9), (2.0, 0, 0.5)])
def test_sampling_frequencies_match_intended_distribution(temperature, top_k, top_p):
    """Empirical token frequencies from choose_tokens pass a chi-square test against the intended
    temperature/top-k/top-p distribution (fixed seed), and truncated tokens never appear."""
    spec = SamplingSpec(temperature, top_k, top_p).validate(len(LOGITS_V))
    logits_bv = jnp.broadcast_to(jnp.asarray(LOGITS_V), (DRAWS, len(LOGITS_V)))
    tokens, _ = jax.jit(choose_tokens, static_argnums=2)(logits_bv, jax.random.key(7), spec)
    counts = np.bincount(np.asarray(tokens), minlength=len(LOGITS_V))
    probs, keep = _intended(LOGITS_V, temperature, top_k, top_p)
    assert counts[~keep].sum() == 0, f"excluded tokens sampled: {counts[~keep]}"
    assert keep.sum() >= 2 or counts[keep].sum() == DRAWS
    expected = probs[keep] / probs[keep].sum() * counts.sum()
    stat, pvalue = stats.chisquare(counts[keep], expected)
    assert pvalue > 1e-3, f"chi2={stat:.1f}, p={pvalue:.2e}, counts={counts}, expected={expected}"


def test_sampling_is_deterministic_and_rows_independent():
    """The same key gives the same tokens; different rows of one call are distinct draws."""
    spec = SamplingSpec(1.0, 0, 1.0)
    logits_bv = jnp.zeros((64, 50))
    a, _ = choose_tokens(logits_bv, jax.random.key(3), spec)
    b, _ = choose_tokens(logits_bv, jax.random.key(3), spec)
    c, _ = choose_tokens(logits_bv, jax.random.key(4), spec)
    np.testing.assert_array_equal(a, b)
    assert len(set(np.asarray(a).tolist())) > 20  # uniform over 50: 64 draws hit many tokens
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("temperature,top_k,top_p", [(0.0, 0, 1.0), (0.5, 2, 1.0), (1.3, 0, 0.6)])
def test_logprob_is_full_vocab_log_softmax_at_temperature(temperature, top_k, top_p):
    """The returned log-prob is log_softmax(z/T)[token] over the whole vocabulary (T=1 for greedy),
    not the truncated distribution's."""
    rng = np.random.default_rng(0)
    logits_bv = rng.normal(size=(16, 40)).astype(np.float32) * 3
    spec = SamplingSpec(temperature, top_k, top_p)
    tokens, logprobs = choose_tokens(jnp.asarray(logits_bv), jax.random.key(1), spec)
    scaled = logits_bv / (temperature or 1.0)
    ref = scaled - np.log(np.exp(scaled - scaled.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - scaled.max(-1, keepdims=True)
    tokens = np.asarray(tokens)
    np.testing.assert_allclose(np.asarray(logprobs), ref[np.arange(16), tokens], atol=1e-5)
    if temperature == 0.0:
        np.testing.assert_array_equal(tokens, logits_bv.argmax(-1))


def test_truncation_mask_matches_reference_and_top_k_1_is_greedy():
    """truncation_mask keeps exactly the NumPy reference's set; top_k=1 sampling equals argmax."""
    rng = np.random.default_rng(1)
    logits_bv = rng.normal(size=(8, 30)).astype(np.float32)
    for top_k, top_p in [(4, 1.0), (0, 0.7), (6, 0.5), (0, 1.0)]:
        got = np.asarray(truncation_mask(jnp.asarray(logits_bv), top_k=top_k, top_p=top_p))
        for row in range(8):
            np.testing.assert_array_equal(got[row], _intended(logits_bv[row], 1.0, top_k, top_p)[1])
    tokens, _ = choose_tokens(jnp.asarray(logits_bv), jax.random.key(0), SamplingSpec(1.0, 1, 1.0))
    np.testing.assert_array_equal(np.asarray(tokens), logits_bv.argmax(-1))


def test_sampling_spec_rejects_bad_values():
    """Out-of-range temperature / top_p / top_k raise errors naming the field."""
    with pytest.raises(ValueError, match="temperature"):
        SamplingSpec(-1.0).validate(10)
    with pytest.raises(ValueError, match="top_p"):
        SamplingSpec(1.0, 0, 0.0).validate(10)
    with pytest.raises(ValueError, match="top_k"):
        SamplingSpec(1.0, -2, 1.0).validate(10)
    assert SamplingSpec(1.0, 10, 1.0).validate(10).top_k == 0  # k >= V is "off"


def test_is_stop_with_several_and_no_stop_ids():
    """is_stop marks rows whose token is any of the stop ids; an empty id list stops nothing."""
    tokens = jnp.array([1, 5, 7, 2], jnp.int32)
    np.testing.assert_array_equal(is_stop(tokens, jnp.array([5, 2], jnp.int32)),
                                  [False, True, False, True])
    np.testing.assert_array_equal(is_stop(tokens, jnp.zeros((0,), jnp.int32)), [False] * 4)


def test_pick_bucket_and_pad_to_bucket():
    """pick_bucket takes the smallest bucket that fits; pad_to_bucket left/right pads with a mask
    and names the index and length of a sequence longer than the largest bucket."""
    assert pick_bucket(5, [4, 8, 16]) == 8
    assert pick_bucket(8, [16, 8, 4]) == 8
    assert pick_bucket(17) == 32  # default powers of two
    with pytest.raises(ValueError, match="exceeds the largest bucket 16"):
        pick_bucket(17, [4, 8, 16])
    ids, mask = pad_to_bucket([[1, 2, 3], [4]], [2, 4, 8], pad_id=0)
    np.testing.assert_array_equal(ids, [[0, 1, 2, 3], [0, 0, 0, 4]])
    np.testing.assert_array_equal(mask, [[0, 1, 1, 1], [0, 0, 0, 1]])
    ids, mask = pad_to_bucket([[1, 2, 3], [4]], [2, 4, 8], pad_id=9, side="right")
    np.testing.assert_array_equal(ids, [[1, 2, 3, 9], [4, 9, 9, 9]])
    np.testing.assert_array_equal(mask, [[1, 1, 1, 0], [1, 0, 0, 0]])
    with pytest.raises(ValueError, match="sequence 1 has length 9"):
        pad_to_bucket([[1], list(range(9))], [4, 8], pad_id=0)


def test_inverse_cdf_never_returns_zero_weight_and_hits_the_right_interval():
    """inverse_cdf_sample returns the token whose cumulative interval holds u * total (checked in
    float64) and never a zero-weight token, at u = 0, u -> 1, exact interval edges, with zero
    weights at the start, a whole zero block and a zero tail (V = 300, not a block multiple)."""
    rng = np.random.default_rng(5)
    w = rng.exponential(size=300).astype(np.float32)
    w[:3], w[128:256], w[290:] = 0.0, 0.0, 0.0
    w[rng.random(300) < 0.3] = 0.0
    cum = np.cumsum(w.astype(np.float64))
    edges = (cum[w > 0][:-1] / cum[-1]).astype(np.float32)
    us = np.concatenate([[0.0, np.nextafter(np.float32(1), np.float32(0))], edges,
                         rng.random(500)]).astype(np.float32)
    got = np.asarray(inverse_cdf_sample(jnp.asarray(np.tile(w, (len(us), 1))), jnp.asarray(us)))
    assert np.all(w[got] > 0), "a zero-weight token was sampled"
    target = us.astype(np.float64) * cum[-1]
    lower = np.where(got > 0, cum[np.maximum(got - 1, 0)], 0.0)
    slack = 1e-5 * cum[-1]
    assert np.all(lower - slack <= target) and np.all(target <= cum[got] + slack)


def test_blocked_sampler_frequencies_on_a_vocabulary_of_several_blocks():
    """On V = 1000 (8 inverse-CDF blocks), grouped token frequencies pass a chi-square test
    against softmax(z)."""
    rng = np.random.default_rng(6)
    logits = rng.normal(size=1000).astype(np.float32)
    draws = 50_000
    tokens, _ = jax.jit(choose_tokens, static_argnums=2)(
        jnp.broadcast_to(jnp.asarray(logits), (draws, 1000)), jax.random.key(9),
        SamplingSpec(1.0, 0, 1.0))
    counts = np.bincount(np.asarray(tokens), minlength=1000).reshape(50, 20).sum(-1)
    probs = _softmax(logits.astype(np.float64)).reshape(50, 20).sum(-1)
    stat, pvalue = stats.chisquare(counts, probs / probs.sum() * counts.sum())
    assert pvalue > 1e-3, f"chi2={stat:.1f}, p={pvalue:.2e}"


def test_first_argmax_takes_the_first_of_ties():
    """first_argmax equals np.argmax (first index among ties), also on exact ties."""
    x = np.array([[1.0, 3.0, 3.0, 0.0], [5.0, 5.0, 5.0, 5.0], [-1.0, -2.0, -0.5, -0.5]], np.float32)
    np.testing.assert_array_equal(np.asarray(first_argmax(jnp.asarray(x))), np.argmax(x, -1))
