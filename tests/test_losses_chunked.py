"""The vocabulary/sequence-chunked SDPO loss from hidden states equals the reference on logits: every registered
divergence mode's chunked form equals its reference form, and the train step's assembly of the loss
(`divergences.token_quantities_from_hidden`, then `losses.sdpo_loss_and_sums`) equals
`divergences.distillation_loss`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sdpo_jax import chunked_losses, defaults, divergences, losses
from sdpo_jax import config as config_lib

B, T, D, V = 2, 5, 8, 37


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    f32 = lambda x: jnp.asarray(x, jnp.float32)
    h = f32(rng.normal(size=(B, T, D)))
    w = f32(rng.normal(size=(D, V)) * 0.8)
    h_ref, w_ref = f32(rng.normal(size=(B, T, D))), f32(rng.normal(size=(D, V)) * 0.8)
    h_live = h + f32(rng.normal(size=(B, T, D)) * 0.5)
    ids = jnp.asarray(rng.integers(0, V, size=(B, T)))
    mask = f32(rng.random((B, T)) > 0.3).at[0, 0].set(1.0)
    old = f32(rng.normal(size=(B, T)) - 3.0)
    sampler = old + f32(rng.normal(size=(B, T)) * 0.5)
    return h, w, h_ref, w_ref, h_live, ids, mask, old, sampler


def step_path_loss(h_btd, w_dv, teacher_h, teacher_w, ids, mask, *, mode, topk=defaults.TOPK,
                   add_tail=defaults.ADD_TAIL, alpha=defaults.ALPHA, adv_clip=None, temperature=1.0, vocab_chunk,
                   seq_chunk=None, **weight_options):
    """(loss, metrics) from hidden states the train step's way (`train_step._micro_loss`): the chunked per-token
    quantities, then the one assembly `losses.sdpo_loss_and_sums`; `weight_options` are its IS / TIS arguments."""
    divergence = divergences.make(mode, topk=topk, add_tail=add_tail, alpha=alpha, adv_clip=adv_clip)
    quantities = divergences.token_quantities_from_hidden(h_btd, w_dv, teacher_h, teacher_w, ids,
                                                          divergence=divergence, temperature=temperature,
                                                          vocab_chunk=vocab_chunk, seq_chunk=seq_chunk)
    loss, sums = losses.sdpo_loss_and_sums(quantities, mask, aggregation=defaults.AGGREGATION, **weight_options)
    return loss, {"loss": loss, **losses.finalize_metric_sums(sums)}


def assert_chunked_form_equals_reference_form(divergence: divergences.Divergence):
    """The per-token quantities from hidden states (vocab chunks of 10 that do not divide V, sequence blocks of
    4, a two-term teacher) equal those on the materialised logits, and so do the gradients in h and w of a
    weighted sum of the divergence."""
    h, w, h_ref, w_ref, h_live, ids, mask, _, _ = _inputs(3)
    mix, temperature = 0.3, 0.7
    teacher_logits = (1 - mix) * (h_ref @ w_ref) + mix * (h_live @ w)
    weight_bt = mask * jnp.arange(1.0, 1.0 + B * T).reshape(B, T) / (B * T)

    def reference(h_, w_):
        q = divergences.token_quantities_from_logits(h_ @ w_, teacher_logits, ids, divergence=divergence,
                                                     temperature=temperature)
        return jnp.sum(weight_bt * q["d"]), q

    def chunked(h_, w_):
        q = divergences.token_quantities_from_hidden(h_, w_, ((1 - mix) * h_ref, mix * h_live), (w_ref, w), ids,
                                                     divergence=divergence, temperature=temperature, vocab_chunk=10,
                                                     seq_chunk=4)
        return jnp.sum(weight_bt * q["d"]), q

    (v1, q1), g1 = jax.value_and_grad(reference, argnums=(0, 1), has_aux=True)(h, w)
    (v2, q2), g2 = jax.jit(jax.value_and_grad(chunked, argnums=(0, 1), has_aux=True))(h, w)
    np.testing.assert_allclose(float(v2), float(v1), rtol=1e-5, atol=1e-6)
    assert set(q2) == set(q1) == {"d", "ls_y", "lq_y", "entropy"}
    for name in q1:
        np.testing.assert_allclose(np.asarray(q2[name]), np.asarray(q1[name]), rtol=1e-5, atol=1e-5, err_msg=name)
    for a, b in zip(g1, g2):
        assert float(jnp.abs(a).max()) > 0
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", list(divergences.DIVERGENCES))
def test_every_registered_divergence_chunked_form_equals_reference_form(mode):
    """Every mode in divergences.DIVERGENCES (reverse KL, top-K 7): its chunked form from hidden states equals its
    reference form on logits in value (to 1e-5) and gradient in h and w (to 1e-4), so registering a mode tests it."""
    assert_chunked_form_equals_reference_form(divergences.make(mode, topk=7, alpha=1.0))


class _ArgmaxLogRatio(divergences.Divergence):
    """Test-only divergence: s(i) (log s(i) - log q(i)) at the student's most likely token i (that token's term of
    the reverse KL), written as one class; its chunked form reads the student pass's top-1 and the teacher's
    logit there."""

    @property
    def student_topk(self):
        return 1

    def reference(self, inputs):
        _, idx_bt1 = jax.lax.top_k(jax.lax.stop_gradient(inputs.student_z), 1)
        ls_bt = jnp.take_along_axis(inputs.student_z, idx_bt1, -1)[..., 0] - inputs.student_lse
        lq_bt = jnp.take_along_axis(inputs.teacher_z, idx_bt1, -1)[..., 0] - inputs.teacher_lse
        return jnp.exp(ls_bt) * (ls_bt - lq_bt)

    def chunked(self, inputs):
        ls_n = inputs.student["topk_z"][:, 0] - inputs.student["lse"]
        lq_n = inputs.teacher["z_idx"][:, 0] - inputs.teacher["lse"]
        return jnp.exp(ls_n) * (ls_n - lq_n)


def test_a_new_divergence_is_one_class_and_one_registry_line(monkeypatch):
    """Registering a Divergence subclass under a name (one line) makes it a valid loss.mode for the config and the
    step settings (an unregistered name stays refused), the reference entry point takes it (zero loss for a
    teacher equal to the student), and its chunked form equals its reference form like every registered mode's."""
    monkeypatch.setitem(divergences.DIVERGENCES, "argmax", _ArgmaxLogRatio)
    cfg = config_lib.base_config()
    cfg.loss.mode = "argmax"
    config_lib.validate(cfg)
    assert isinstance(config_lib.step_settings(cfg).divergence, _ArgmaxLogRatio)
    cfg.loss.mode = "argmin"
    with pytest.raises(config_lib.ConfigError, match="loss.mode='argmin' is not one of"):
        config_lib.validate(cfg)
    h, w, _, _, _, ids, mask, _, _ = _inputs(4)
    loss, _ = divergences.distillation_loss(h @ w, h @ w, ids, mask, mode="argmax")
    assert abs(float(loss)) < 1e-6
    assert_chunked_form_equals_reference_form(divergences.make("argmax"))


# (mode, add_tail, alpha, vocab_chunk, seq_chunk): every case uses chunks that do not divide V = 37; the
# chunkings alternate (one compile per case keeps the file fast).
CASES = [("topk", True, 0.0, 10, None), ("topk", True, 0.5, 16, 3), ("topk", True, 1.0, 10, 4),
         ("topk", False, 0.5, 16, None), ("full", True, 0.0, 16, 3), ("full", True, 0.5, 10, None),
         ("full", True, 1.0, 10, 4), ("token", True, 1.0, 16, 3)]


@pytest.mark.parametrize("mode,add_tail,alpha,vocab_chunk,seq_chunk", CASES)
def test_chunked_path_equals_reference_entry_point(mode, add_tail, alpha, vocab_chunk, seq_chunk):
    """From hidden states, with vocab chunks that do not divide V (last chunk overlaps), optional sequence
    chunks and a two-term (trust-region) teacher, loss, metrics and gradients in h and w of the train step's
    assembly equal `divergences.distillation_loss` on the materialised logits to 1e-5."""
    h, w, h_ref, w_ref, h_live, ids, mask, old, sampler = _inputs()
    mix = 0.3
    kw = dict(mode=mode, topk=7, add_tail=add_tail, alpha=alpha, temperature=0.7, old_logprobs=old, is_clip=2.0,
              sampler_logprobs=sampler, rollout_is_clip=2.0)
    teacher_logits = (1 - mix) * (h_ref @ w_ref) + mix * (h_live @ w)

    def reference(h_, w_):
        return divergences.distillation_loss(h_ @ w_, teacher_logits, ids, mask, **kw)

    def chunked(h_, w_):
        return step_path_loss(h_, w_, ((1 - mix) * h_ref, mix * h_live), (w_ref, w), ids, mask,
                              vocab_chunk=vocab_chunk, seq_chunk=seq_chunk, **kw)

    (v1, m1), g1 = jax.value_and_grad(reference, argnums=(0, 1), has_aux=True)(h, w)
    (v2, m2), g2 = jax.jit(jax.value_and_grad(chunked, argnums=(0, 1), has_aux=True))(h, w)
    np.testing.assert_allclose(float(v2), float(v1), rtol=1e-5, atol=1e-6)
    for name in m1:
        np.testing.assert_allclose(float(m2[name]), float(m1[name]), rtol=1e-5, atol=1e-5, err_msg=name)
    for a, b in zip(g1, g2):
        assert float(jnp.abs(a).max()) > 0
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-5)


def test_student_pass_topk_matches_lax_top_k_and_logsumexp():
    """The running top-K merge over chunks gives the same K logits as lax.top_k on full logits, K larger
    than a chunk included, and the online logsumexp/entropy equal the dense ones."""
    h, w, *_ = _inputs(1)
    ids = jnp.zeros((B * T,), jnp.int32)
    z = (h @ w).reshape(B * T, V)
    for k, chunk in ((7, 10), (15, 4), (V, 16)):
        st = chunked_losses.student_vocab_pass(h.reshape(B * T, D), w, ids, k=k, vocab_chunk=chunk)
        np.testing.assert_allclose(np.asarray(st["topk_z"]), np.asarray(jax.lax.top_k(z, k)[0]), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(np.asarray(jnp.take_along_axis(z, st["topk_idx"], 1)), np.asarray(st["topk_z"]),
                                   rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(np.asarray(st["lse"]), np.asarray(jax.nn.logsumexp(z, -1)), rtol=1e-6)
        p = jax.nn.softmax(z, -1)
        np.testing.assert_allclose(np.asarray(st["entropy"]), np.asarray(-jnp.sum(p * jnp.log(p), -1)), rtol=1e-5)


def test_loss_from_hidden_at_qwen_vocab_never_materialises_logits():
    """V = 151936, T = 2048, B = 1, K = 100: the compiled value-and-grad of the chunked loss (student and EMA
    teacher hidden states in, gradient in h and W out) needs temporary memory below half of one fp32 [T, V]
    array (memory_analysis of the compiled program)."""
    t, d, v = 2048, 64, 151936
    f32 = jax.ShapeDtypeStruct
    args = (f32((1, t, d), jnp.float32), f32((d, v), jnp.float32), f32((1, t, d), jnp.float32), f32((d, v), jnp.float32),
            f32((1, t), jnp.int32), f32((1, t), jnp.float32), f32((1, t), jnp.float32))

    def loss(h, w, ht, wt, ids, mask, old):
        return step_path_loss(h, w, ht, wt, ids, mask, mode="topk", topk=100, alpha=0.5, old_logprobs=old,
                              is_clip=2.0, vocab_chunk=8192)[0]

    compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(*args).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes
    half_tv = t * v * 4 / 2
    print(f"loss-only temp {temp / 2**20:.1f} MiB, half [T,V] {half_tv / 2**20:.1f} MiB")
    assert 0 < temp < half_tv, f"temp {temp / 2**20:.0f} MiB vs half of [T, V] fp32 {half_tv / 2**20:.0f} MiB"


def test_chunked_advantage_clipping_equals_reference():
    """adv_clip in topk and full mode (the full mode's custom VJP uses the clipped surrogate): value and gradient
    of the chunked path equal the reference's, and the clip changes the gradient."""
    h, w, h_ref, w_ref, _, ids, mask, _, _ = _inputs(2)
    t_logits = h_ref @ w_ref
    for mode in ("topk", "full"):
        kw = dict(mode=mode, topk=7, alpha=1.0, adv_clip=0.3, temperature=0.9)
        ref = jax.value_and_grad(lambda h_, w_: divergences.distillation_loss(h_ @ w_, t_logits, ids, mask, **kw)[0],
                                 argnums=(0, 1))(h, w)
        got = jax.jit(jax.value_and_grad(lambda h_, w_: step_path_loss(
            h_, w_, h_ref, w_ref, ids, mask, vocab_chunk=16, seq_chunk=4, **kw)[0], argnums=(0, 1)))(h, w)
        np.testing.assert_allclose(float(got[0]), float(ref[0]), rtol=1e-5, atol=1e-6)
        for a, b in zip(ref[1], got[1]):
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-5)
        unclipped = jax.grad(lambda h_: step_path_loss(
            h_, w, h_ref, w_ref, ids, mask, vocab_chunk=16, **dict(kw, adv_clip=None))[0])(h)
        assert float(jnp.abs(unclipped - got[1][0]).max()) > 1e-4
