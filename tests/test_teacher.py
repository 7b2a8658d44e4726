"""Teachers: trust-region geometric mixture, stop-gradient, EMA arithmetic and fp32 copies."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sdpo_jax import models, teacher

MODEL = models.ModelConfig(model_type="qwen3", vocab_size=96, hidden_size=32, num_layers=1, num_heads=2,
                           num_kv_heads=1, head_dim=16, intermediate_size=64, qk_norm="per_head")


def _inputs():
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(1, MODEL.vocab_size, size=(2, 7)), jnp.int32)
    mask = jnp.asarray([[0, 0, 1, 1, 1, 1, 1], [1] * 7], jnp.int32)
    live = models.init_params(MODEL, jax.random.key(1), std=0.3)
    ref = models.init_params(MODEL, jax.random.key(2), std=0.3)
    return live, ref, ids, mask


@functools.partial(jax.jit, static_argnums=(0, 4))
def _teacher_logits(kind, params, teacher_params, ids_mask, mix):
    return teacher.teacher_logits(MODEL, kind, params, teacher_params, *ids_mask, mix=mix)


def test_trust_region_teacher_is_the_normalised_geometric_mixture():
    """softmax((1 - mix) z_ref + mix z_live) = q_ref^(1 - mix) q_live^mix / Z, with q_ref and q_live from
    models.forward of the frozen and the live parameters (log-probs compared, 1e-5)."""
    live, ref, ids, mask = _inputs()
    mix = 0.3
    mixed = jax.nn.log_softmax(_teacher_logits("trust_region", live, ref, (ids, mask), mix), -1)
    fwd = jax.jit(lambda p: jax.nn.log_softmax(models.forward(MODEL, p, ids, mask), -1))
    log_geo = (1 - mix) * fwd(ref) + mix * fwd(live)
    expected = log_geo - jax.nn.logsumexp(log_geo, -1, keepdims=True)
    np.testing.assert_allclose(np.asarray(mixed), np.asarray(expected), atol=1e-5)
    assert float(jnp.abs(mixed - fwd(live)).max()) > 1e-2  # not just the live model


@pytest.mark.parametrize("kind", ["ema", "frozen"])
def test_ema_and_frozen_teachers_are_the_teacher_parameters_forward(kind):
    """ema / frozen teacher logits are models.forward of the teacher's own parameters."""
    live, ref, ids, mask = _inputs()
    got = _teacher_logits(kind, live, ref, (ids, mask), 0.0)
    np.testing.assert_allclose(np.asarray(got), np.asarray(models.forward(MODEL, ref, ids, mask)), atol=1e-5)


def test_live_and_trust_region_teachers_carry_no_gradient():
    """The teacher branch is under stop_gradient: d(sum of teacher logits)/d(student params) = 0."""
    live, ref, ids, mask = _inputs()
    for kind, tp in (("live", None), ("trust_region", ref)):
        grads = jax.grad(lambda p: jnp.sum(teacher.teacher_logits(MODEL, kind, p, tp, ids, mask, mix=0.5)))(live)
        assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads))


def test_teacher_parameter_copies_and_ema_update():
    """ema: an fp32 copy (from bf16 parameters too), distinct buffers; frozen / trust_region: a copy; live: None.
    ema_update is (1 - r) t + r s leaf by leaf and keeps fp32."""
    live, _, _, _ = _inputs()
    bf16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), live)
    ema = teacher.make("ema").init_params(bf16)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(ema))
    frozen = teacher.make("frozen").init_params(live)
    assert all(a is not b for a, b in zip(jax.tree.leaves(frozen), jax.tree.leaves(live)))
    assert teacher.make("live").init_params(live) is None
    t = jax.tree.map(lambda x: x.astype(jnp.float32), live)
    s = jax.tree.map(lambda x: x + 1.0, live)
    new = teacher.ema_update(t, s, 0.05)
    for a, b, c in zip(jax.tree.leaves(new), jax.tree.leaves(t), jax.tree.leaves(s)):
        assert a.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(a), 0.95 * np.asarray(b) + 0.05 * np.asarray(c), rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="teacher.kind"):
        teacher.make("moving_average").init_params(live)


class _HalfwayTeacher(teacher.Teacher):
    """Test-only teacher: logits halfway between the initial model's and the live student's (a trust-region
    teacher with its mix fixed at 0.5), written as one class."""

    def hidden_terms(self, model_cfg, params, teacher_params, ids_bl, mask_bl, positions=None):
        return teacher.TrustRegionTeacher(mix=0.5).hidden_terms(model_cfg, params, teacher_params, ids_bl, mask_bl,
                                                                positions)


def test_a_new_teacher_is_one_class_and_one_registry_line(monkeypatch):
    """Registering a Teacher subclass under a name (one line) makes it a valid teacher.kind for the config, the
    step settings and the train step: a generation batch trains with it, its loss equals the trust-region
    teacher's at mix 0.5 (the same teacher, spelt differently), and it never moves (no update program)."""
    from sdpo_jax import batch as batch_lib
    from sdpo_jax import config as config_lib
    from sdpo_jax import train_step as ts
    from tests.test_train_step import BASE, MODEL as STEP_MODEL, make_batch, make_params

    monkeypatch.setitem(teacher.TEACHERS, "halfway", _HalfwayTeacher)
    cfg = config_lib.base_config()
    cfg.teacher.kind = "halfway"
    config_lib.validate(cfg)
    losses_by_kind = {}
    for kind, mix in (("halfway", 0.05), ("trust_region", 0.5)):
        settings = dataclasses.replace(BASE, teacher_kind=kind, trust_region_mix=mix)
        optimizer = ts.make_optimizer(1e-3, 0)
        step = ts.make_train_step(STEP_MODEL, settings, optimizer)
        assert step.teacher_update is None
        state = ts.init_train_state(STEP_MODEL, settings, make_params(0), optimizer)
        state, metrics = ts.update_on_generation_batch(step, state, batch_lib.check(make_batch(3)))
        losses_by_kind[kind] = float(metrics["loss"][0])
    assert np.isfinite(losses_by_kind["halfway"])
    np.testing.assert_allclose(losses_by_kind["halfway"], losses_by_kind["trust_region"], rtol=1e-6)
