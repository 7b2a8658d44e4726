"""Independent float64 NumPy references for the SDPO and GRPO losses (test helper, no JAX).

Written from docs/ALGORITHM.md §2 / §5 directly, loop by loop, to check `sdpo_jax.losses` against.
Stop-gradient quantities (top-K indices, IS weights, the token advantage) are computed from
`frozen_logits` when given, so that finite differences of these functions are the gradients that
the JAX code defines.
"""

import numpy as np


def log_softmax(z):
    z = np.asarray(z, np.float64)
    m = z.max(axis=-1, keepdims=True)
    return z - (m + np.log(np.exp(z - m).sum(axis=-1, keepdims=True)))


def logsumexp(z):
    m = np.max(z)
    return m + np.log(np.sum(np.exp(z - m)))


def divergence(ls, lq, alpha):
    """D over one position's categories; ls / lq log-probs."""
    s, q = np.exp(ls), np.exp(lq)
    if alpha == 0.0:
        return float(np.sum(q * (lq - ls)))
    if alpha == 1.0:
        return float(np.sum(s * (ls - lq)))
    m = (1.0 - alpha) * s + alpha * q
    return float(alpha * np.sum(q * (lq - np.log(m))) + (1.0 - alpha) * np.sum(s * (ls - np.log(m))))


def topk_categories(lp_full, idx, add_tail):
    sel = lp_full[idx]
    if not add_tail:
        return sel - logsumexp(sel)
    log_mass = min(logsumexp(sel), -1e-7)
    return np.concatenate([sel, [np.log(-np.expm1(log_mass))]])


def distill_ref(student_logits, teacher_logits, ids, mask, *, mode, topk=5, add_tail=True, alpha=0.5,
                temperature=1.0, old_logprobs=None, is_clip=None, sampler_logprobs=None, rollout_is_clip=None,
                aggregation="seq_mean_token_mean", row_weight=None, frozen_logits=None):
    zs = np.asarray(student_logits, np.float64) / temperature
    zt = np.asarray(teacher_logits, np.float64) / temperature
    z0 = zs if frozen_logits is None else np.asarray(frozen_logits, np.float64) / temperature
    b_n, t_n, v_n = zs.shape
    ls_all, lq_all, l0_all = log_softmax(zs), log_softmax(zt), log_softmax(z0)
    rw = np.ones(b_n) if row_weight is None else np.asarray(row_weight, np.float64)
    per_tok = np.zeros((b_n, t_n))
    for b in range(b_n):
        for t in range(t_n):
            y = int(ids[b, t])
            ls, lq = ls_all[b, t], lq_all[b, t]
            if mode == "topk":
                idx = np.argsort(-z0[b, t], kind="stable")[:min(topk, v_n)]
                d = divergence(topk_categories(ls, idx, add_tail), topk_categories(lq, idx, add_tail), alpha)
            elif mode == "full":
                d = divergence(ls, lq, alpha)
            else:
                d = (l0_all[b, t, y] - lq[y]) * ls[y]
            w = 1.0
            if is_clip is not None:
                w = min(np.exp(np.clip(l0_all[b, t, y] - old_logprobs[b, t], -20, 20)), is_clip)
            if rollout_is_clip is not None and sampler_logprobs is not None:
                w *= min(np.exp(np.clip(old_logprobs[b, t] - sampler_logprobs[b, t], -20, 20)), rollout_is_clip)
            per_tok[b, t] = d * w
    return aggregate(per_tok, np.asarray(mask, np.float64), rw, aggregation)


def aggregate(per_tok, mask, rw, aggregation):
    if aggregation == "seq_mean_token_mean":
        total = 0.0
        for b in range(per_tok.shape[0]):
            total += rw[b] * np.sum(mask[b] * per_tok[b]) / max(np.sum(mask[b]), 1.0)
        return total / max(np.sum(rw), 1.0)
    if aggregation == "token_mean":
        return np.sum(rw[:, None] * mask * per_tok) / max(np.sum(rw[:, None] * mask), 1.0)
    if aggregation == "seq_mean_token_sum":
        return np.sum(rw[:, None] * mask * per_tok) / max(np.sum(rw), 1.0)
    raise ValueError(aggregation)


def grpo_ref(logprobs, old, adv, mask, *, clip_low, clip_high, dual_clip, aggregation="seq_mean_token_mean",
             sampler_logprobs=None, rollout_is_clip=None):
    logprobs, old = np.asarray(logprobs, np.float64), np.asarray(old, np.float64)
    adv = np.asarray(adv, np.float64)
    if adv.ndim == 1:
        adv = np.repeat(adv[:, None], logprobs.shape[1], axis=1)
    per_tok = np.zeros_like(logprobs)
    clipped = np.zeros_like(logprobs)
    lower = np.zeros_like(logprobs)
    for b in range(logprobs.shape[0]):
        for t in range(logprobs.shape[1]):
            a = adv[b, t]
            ratio = np.exp(np.clip(logprobs[b, t] - old[b, t], -20, 20))
            unclipped = -a * ratio
            clipped_val = -a * min(max(ratio, 1 - clip_low), 1 + clip_high)
            loss = max(unclipped, clipped_val)
            clipped[b, t] = clipped_val > unclipped
            if dual_clip is not None and a < 0:
                lower[b, t] = loss > -a * dual_clip
                loss = min(loss, -a * dual_clip)
            if rollout_is_clip is not None and sampler_logprobs is not None:
                loss *= min(np.exp(np.clip(old[b, t] - sampler_logprobs[b, t], -20, 20)), rollout_is_clip)
            per_tok[b, t] = loss
    m = np.asarray(mask, np.float64)
    value = aggregate(per_tok, m, np.ones(logprobs.shape[0]), aggregation)
    return value, np.sum(m * clipped) / m.sum(), np.sum(m * lower) / m.sum()


def fd_directional(fn, x, direction, eps=1e-5):
    """Central finite difference of fn along `direction` at x (float64)."""
    x = np.asarray(x, np.float64)
    return (fn(x + eps * direction) - fn(x - eps * direction)) / (2 * eps)


def test_reference_divergences_are_sane():
    """The NumPy reference itself: KL >= 0, zero on equal inputs, symmetric JSD at alpha 0.5 bounded by
    log 2, and the top-K + tail categories form a distribution."""
    rng = np.random.default_rng(0)
    ls, lq = log_softmax(rng.normal(size=11)), log_softmax(rng.normal(size=11))
    for alpha in (0.0, 0.3, 0.5, 1.0):
        assert divergence(ls, lq, alpha) > 0
        assert abs(divergence(ls, ls, alpha)) < 1e-12
    assert abs(divergence(ls, lq, 0.5) - divergence(lq, ls, 0.5)) < 1e-12
    assert divergence(ls, lq, 0.5) <= np.log(2)
    assert abs(divergence(ls, lq, 0.0) - divergence(lq, ls, 1.0)) < 1e-12
    cats = topk_categories(ls, np.argsort(-ls)[:4], add_tail=True)
    assert abs(np.exp(cats).sum() - 1.0) < 1e-12
