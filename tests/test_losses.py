"""SDPO distillation loss and GRPO on materialised logits against float64 NumPy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sdpo_jax import divergences, losses
from tests import test_losses_reference as ref

B, T, V = 3, 4, 13


def _inputs(seed=0, scale=2.0):
    rng = np.random.default_rng(seed)
    zs = rng.normal(size=(B, T, V)) * scale
    zt = zs + rng.normal(size=(B, T, V))
    ids = rng.integers(0, V, size=(B, T))
    mask = (rng.random((B, T)) > 0.25).astype(np.float64)
    mask[0, 0] = 1.0
    # Behaviour log-probs around the current ones, some ratios above the clip of 2.
    ls = ref.log_softmax(zs)
    cur = np.take_along_axis(ls, ids[..., None], -1)[..., 0]
    old = cur + rng.normal(size=(B, T)) * 0.8
    sampler = old + rng.normal(size=(B, T)) * 0.8
    return zs, zt, ids, mask, old, sampler


def _jax_loss(zs, zt, ids, mask, old, sampler, **kw):
    f = lambda z: divergences.distillation_loss(z, jnp.asarray(zt, jnp.float32), jnp.asarray(ids),
                                                jnp.asarray(mask, jnp.float32), old_logprobs=jnp.asarray(old, jnp.float32),
                                                sampler_logprobs=jnp.asarray(sampler, jnp.float32), **kw)
    (value, metrics), grad = jax.value_and_grad(f, has_aux=True)(jnp.asarray(zs, jnp.float32))
    return float(value), metrics, np.asarray(grad, np.float64)


CASES = [(mode, tail, alpha, temp) for mode, tail in (("topk", True), ("topk", False), ("full", True))
         for alpha in (0.0, 0.5, 1.0) for temp in (1.0, 0.7)] + [("token", True, 1.0, 1.0), ("token", True, 1.0, 0.7),
                                                       ("topk", True, 0.3, 1.0)]  # 0.3: alpha is the teacher's weight


@pytest.mark.parametrize("mode,add_tail,alpha,temperature", CASES)
def test_distillation_loss_matches_float64_reference_in_value_and_gradient(mode, add_tail, alpha, temperature):
    """Every mode (topk with/without tail, full, token) x alpha x temperature equals the independent float64
    reference in value (IS weight and rollout TIS on), and its gradient matches central finite differences of
    the reference (stop-gradient parts frozen) along random directions."""
    zs, zt, ids, mask, old, sampler = _inputs()
    kw = dict(mode=mode, topk=5, add_tail=add_tail, alpha=alpha, temperature=temperature, is_clip=2.0,
              rollout_is_clip=2.0)
    value, _, grad = _jax_loss(zs, zt, ids, mask, old, sampler, **kw)
    ref_kw = dict(kw, old_logprobs=old, sampler_logprobs=sampler)
    expected = ref.distill_ref(zs, zt, ids, mask, **ref_kw)
    np.testing.assert_allclose(value, expected, rtol=2e-5, atol=1e-6)
    assert np.abs(grad).max() > 0
    rng = np.random.default_rng(1)
    for _ in range(2):
        direction = rng.normal(size=zs.shape)
        fd = ref.fd_directional(lambda z: ref.distill_ref(z, zt, ids, mask, frozen_logits=zs, **ref_kw), zs, direction)
        np.testing.assert_allclose(np.sum(grad * direction), fd, rtol=2e-4, atol=2e-6)


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean_token_sum"])
def test_other_aggregations_match_reference(aggregation):
    """token_mean and seq_mean_token_sum equal the reference's reductions (with a zero-weight row)."""
    zs, zt, ids, mask, old, sampler = _inputs(3)
    rw = np.array([1.0, 0.0, 1.0])
    value, _ = divergences.distillation_loss(jnp.asarray(zs, jnp.float32), jnp.asarray(zt, jnp.float32),
                                             jnp.asarray(ids), jnp.asarray(mask, jnp.float32), mode="topk", topk=5,
                                             alpha=0.5, aggregation=aggregation, row_weight=jnp.asarray(rw, jnp.float32))
    expected = ref.distill_ref(zs, zt, ids, mask, mode="topk", topk=5, alpha=0.5, aggregation=aggregation, row_weight=rw)
    np.testing.assert_allclose(float(value), expected, rtol=2e-5)


@pytest.mark.parametrize("add_tail", [True, False])
def test_topk_equal_to_vocab_and_tail_mass_near_zero_stay_finite(add_tail):
    """K = V and a top-K mass of ~1 (tail near zero) give a finite loss and finite gradients."""
    zs, zt, ids, mask, old, sampler = _inputs(4)
    for k, logits in ((V, zs), (1, zs * 0 + np.eye(V)[ids] * 60.0)):
        value, metrics, grad = _jax_loss(logits, zt, ids, mask, old, sampler, mode="topk", topk=k, add_tail=add_tail,
                                         alpha=0.5, is_clip=2.0)
        assert np.isfinite(value) and np.all(np.isfinite(grad))
        assert all(np.isfinite(float(v)) for v in metrics.values())
    value, _, _ = _jax_loss(zs, zt, ids, mask, old, sampler, mode="topk", topk=V, add_tail=add_tail, alpha=1.0)
    full, _, _ = _jax_loss(zs, zt, ids, mask, old, sampler, mode="full", alpha=1.0)
    np.testing.assert_allclose(value, full, rtol=1e-4, atol=1e-5)  # K = V is the full divergence


def test_reverse_kl_gradient_is_the_logit_level_policy_gradient():
    """grad of KL(s||q) over all logits equals -sum_i s(i) sg(log q(i) - log s(i)) grad log s(i), i.e. in logit
    space -s*A + s*sum(s*A) per position, scaled by the aggregation weights."""
    zs, zt, ids, mask, _, _ = _inputs(5)
    _, grad = jax.value_and_grad(lambda z: divergences.distillation_loss(
        z, jnp.asarray(zt, jnp.float32), jnp.asarray(ids), jnp.asarray(mask, jnp.float32), mode="full", alpha=1.0)[0])(
        jnp.asarray(zs, jnp.float32))
    ls, lq = ref.log_softmax(zs), ref.log_softmax(zt)
    s, adv = np.exp(ls), lq - ls
    pg = -s * adv + s * np.sum(s * adv, axis=-1, keepdims=True)
    coef = mask / np.maximum(mask.sum(1, keepdims=True), 1) / B
    np.testing.assert_allclose(np.asarray(grad), coef[..., None] * pg, rtol=1e-4, atol=1e-7)


def test_advantage_clipping_clips_the_per_logit_advantage():
    """adv_clip=c: the gradient is the logit-level policy gradient with A(i) clipped to [-c, c] (full mode,
    analytic), the value stays the KL; a huge c reproduces the unclipped gradient in topk mode (K+1 categories)."""
    zs, zt, ids, mask, _, _ = _inputs(6, scale=3.0)
    args = (jnp.asarray(zt, jnp.float32), jnp.asarray(ids), jnp.asarray(mask, jnp.float32))

    def run(**kw):
        (v, _), g = jax.value_and_grad(lambda z: divergences.distillation_loss(z, *args, **kw), has_aux=True)(
            jnp.asarray(zs, jnp.float32))
        return float(v), np.asarray(g)

    c = 0.5
    v_clip, g_clip = run(mode="full", alpha=1.0, adv_clip=c)
    v_kl, g_kl = run(mode="full", alpha=1.0)
    ls, lq = ref.log_softmax(zs), ref.log_softmax(zt)
    s, adv = np.exp(ls), np.clip(lq - ls, -c, c)
    assert np.abs(lq - ls).max() > c  # clipping is active
    pg = -s * adv + s * np.sum(s * adv, axis=-1, keepdims=True)
    coef = mask / np.maximum(mask.sum(1, keepdims=True), 1) / B
    np.testing.assert_allclose(g_clip, coef[..., None] * pg, rtol=1e-4, atol=1e-7)
    assert abs(v_clip - v_kl) < 1e-6 and np.abs(g_clip - g_kl).max() > 1e-3
    v_big, g_big = run(mode="topk", topk=5, alpha=1.0, adv_clip=1e6)
    v_tk, g_tk = run(mode="topk", topk=5, alpha=1.0)
    assert abs(v_big - v_tk) < 1e-6
    np.testing.assert_allclose(g_big, g_tk, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="alpha=1.0"):
        divergences.distillation_loss(jnp.asarray(zs), *args, mode="full", alpha=0.5, adv_clip=c)


@pytest.mark.parametrize("mode,alpha", [("topk", 0.0), ("topk", 0.5), ("topk", 1.0), ("full", 0.5), ("token", 1.0)])
def test_identical_contexts_give_zero_loss_and_zero_gradient(mode, alpha):
    """Student and teacher with the same logits: loss 0 and gradient 0."""
    zs, _, ids, mask, _, _ = _inputs(7)
    z = jnp.asarray(zs, jnp.float32)
    (value, _), grad = jax.value_and_grad(
        lambda x: divergences.distillation_loss(x, z, jnp.asarray(ids), jnp.asarray(mask, jnp.float32), mode=mode,
                                                topk=5, alpha=alpha), has_aux=True)(z)
    assert abs(float(value)) < 1e-6
    assert np.abs(np.asarray(grad)).max() < 1e-6


def test_masked_sequence_contributes_nothing_but_counts_in_the_denominator():
    """seq_mean_token_mean: a fully masked row (sd_mask = 0) adds zero loss and zero gradient but counts in N."""
    zs, zt, ids, mask, _, _ = _inputs(8)
    mask[1] = 0.0
    f = lambda z, m, zt_, ids_: divergences.distillation_loss(z, zt_, ids_, m, mode="topk", topk=5, alpha=0.5)[0]
    value, grad = jax.value_and_grad(f)(jnp.asarray(zs, jnp.float32), jnp.asarray(mask, jnp.float32),
                                        jnp.asarray(zt, jnp.float32), jnp.asarray(ids))
    keep = np.array([0, 2])
    alone = f(jnp.asarray(zs[keep], jnp.float32), jnp.asarray(mask[keep], jnp.float32), jnp.asarray(zt[keep], jnp.float32),
              jnp.asarray(ids[keep]))
    np.testing.assert_allclose(float(value), float(alone) * 2 / 3, rtol=1e-6)
    assert np.abs(np.asarray(grad)[1]).max() == 0.0 and np.abs(np.asarray(grad)).max() > 0


def test_metrics_report_is_weight_advantage_and_entropy():
    """Metrics: IS weight mean over the loss mask, teacher-student sampled log-prob advantage stats, entropy."""
    zs, zt, ids, mask, old, sampler = _inputs(9)
    _, metrics, _ = _jax_loss(zs, zt, ids, mask, old, sampler, mode="topk", topk=5, alpha=0.5, is_clip=2.0)
    ls, lq = ref.log_softmax(zs), ref.log_softmax(zt)
    ly = np.take_along_axis(ls, ids[..., None], -1)[..., 0]
    adv = np.take_along_axis(lq, ids[..., None], -1)[..., 0] - ly
    w = np.minimum(np.exp(ly - old), 2.0)
    ent = -np.sum(np.exp(ls) * ls, -1)
    mean = lambda x: np.sum(mask * x) / mask.sum()
    np.testing.assert_allclose(float(metrics["is_weight_mean"]), mean(w), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["advantage_mean"]), mean(adv), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["advantage_std"]), np.sqrt(mean(adv ** 2) - mean(adv) ** 2), rtol=1e-4)
    np.testing.assert_allclose(float(metrics["advantage_pos_frac"]), mean(adv > 0), rtol=1e-6)
    np.testing.assert_allclose(float(metrics["entropy"]), mean(ent), rtol=1e-5)


@pytest.mark.parametrize("dual_clip", [3.0, None])
def test_grpo_loss_matches_reference_with_clip_higher_and_dual_clip(dual_clip):
    """PPO-clip with eps_low 0.2 / eps_high 0.28 and dual clip c=3 (or none), rollout TIS: value, clip
    fractions and the gradient (finite differences) equal the float64 reference."""
    rng = np.random.default_rng(10)
    old = rng.normal(size=(4, 6)) - 2.0
    logp = old + rng.normal(size=(4, 6)) * 0.6
    logp[0, 0] = old[0, 0] + 2.0  # ratio e^2 > c with A < 0 below: dual clip active
    adv = np.array([-1.0, 0.5, -0.3, 2.0])
    sampler = old + rng.normal(size=(4, 6)) * 0.5
    mask = (rng.random((4, 6)) > 0.2).astype(np.float64)
    mask[0, 0] = 1.0
    kw = dict(clip_low=0.2, clip_high=0.28, dual_clip=dual_clip)
    f = lambda lp: losses.grpo_loss(lp, jnp.asarray(old, jnp.float32), jnp.asarray(adv, jnp.float32),
                                    jnp.asarray(mask, jnp.float32), sampler_logprobs=jnp.asarray(sampler, jnp.float32),
                                    rollout_is_clip=2.0, **kw)
    (value, metrics), grad = jax.value_and_grad(f, has_aux=True)(jnp.asarray(logp, jnp.float32))
    expected, clipfrac, lower = ref.grpo_ref(logp, old, adv, mask, sampler_logprobs=sampler, rollout_is_clip=2.0, **kw)
    np.testing.assert_allclose(float(value), expected, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["pg_clipfrac"]), clipfrac, rtol=1e-6)
    np.testing.assert_allclose(float(metrics["pg_clipfrac_lower"]), lower, rtol=1e-6)
    assert clipfrac > 0 and (lower > 0) == (dual_clip is not None)
    direction = np.random.default_rng(11).normal(size=logp.shape)
    fd = ref.fd_directional(lambda lp: ref.grpo_ref(lp, old, adv, mask, sampler_logprobs=sampler, rollout_is_clip=2.0,
                                                    **kw)[0], logp, direction, eps=1e-6)
    np.testing.assert_allclose(float(np.sum(np.asarray(grad) * direction)), fd, rtol=1e-3, atol=1e-6)


def test_hybrid_mixes_grpo_and_sdpo_endpoints():
    """hybrid_loss with lambda 1 is the GRPO loss, with lambda 0 the SDPO loss, linear in between."""
    a, b = jnp.float32(0.7), jnp.float32(-0.2)
    assert float(losses.hybrid_loss(a, b, 1.0)) == float(b)
    assert float(losses.hybrid_loss(a, b, 0.0)) == float(a)
    np.testing.assert_allclose(float(losses.hybrid_loss(a, b, 0.9)), 0.9 * -0.2 + 0.1 * 0.7, rtol=1e-6)


def test_grpo_advantages_are_group_centred_with_optional_std():
    """Dr.GRPO: r - group mean (no std); with norm_by_std, / (unbiased std + eps); group_size == contiguous ids."""
    rewards = np.array([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.5, 0.0])
    ids = np.array([7, 7, 7, 7, 3, 3, 3, 3])
    adv = losses.compute_grpo_advantages(rewards, ids)
    np.testing.assert_allclose(adv, [0.5, -0.5, -0.5, 0.5, 0.375, 0.375, -0.125, -0.625], rtol=1e-6)
    np.testing.assert_allclose(losses.compute_grpo_advantages(rewards, group_size=4), adv)
    normed = losses.compute_grpo_advantages(rewards, ids, norm_by_std=True)
    np.testing.assert_allclose(normed[:4], adv[:4] / (np.std(rewards[:4], ddof=1) + 1e-6), rtol=1e-5)
    with pytest.raises(ValueError, match="group_size"):
        losses.compute_grpo_advantages(rewards, group_size=3)


def test_bad_options_raise_clear_errors():
    """Unknown mode / aggregation, token mode with alpha != 1 and is_clip without old log-probs are refused."""
    z = jnp.zeros((1, 2, 5))
    ids, m = jnp.zeros((1, 2), jnp.int32), jnp.ones((1, 2))
    with pytest.raises(ValueError, match="mode"):
        divergences.distillation_loss(z, z, ids, m, mode="sequence")
    with pytest.raises(ValueError, match="alpha=1.0"):
        divergences.distillation_loss(z, z, ids, m, mode="token", alpha=0.5)
    with pytest.raises(ValueError, match="aggregation"):
        divergences.distillation_loss(z, z, ids, m, aggregation="mean")
    with pytest.raises(ValueError, match="old_logprobs"):
        divergences.distillation_loss(z, z, ids, m, is_clip=2.0)
