"""The train step on 8 fake devices (data 2 x fsdp 2 x tensor 2) against one device, and micro-batching."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec as P

from sdpo_jax import batch as batch_lib
from sdpo_jax import models, sharding, train_step as ts
from tests.test_train_step import BASE, MODEL, make_batch, make_params, run_step, with_old_logprobs

HYBRID = dataclasses.replace(BASE, objective="hybrid", hybrid_lambda=0.5)  # both loss terms exercised
KEYS = ("loss", "grad_norm", "is_weight_mean", "advantage_mean", "entropy", "pg_clipfrac", "loss_sdpo", "loss_grpo")


def _sgd_step(settings, params, batch, mesh=None):
    # Plain SGD (lr 1): the parameter change is minus the gradient, so comparing updated parameters compares
    # gradients; Adam's first step (~lr * sign(g)) would amplify summation-order noise on near-zero entries.
    return run_step(settings, params, batch, mesh, optimizer=optax.sgd(1.0))


def _assert_same(metrics_a, params_a, metrics_b, params_b):
    for key in KEYS:
        np.testing.assert_allclose(float(metrics_a[key]), float(metrics_b[key]), rtol=1e-5, atol=1e-7, err_msg=key)
    for a, b in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_eight_devices_equal_one_device_with_rule_shardings_and_one_compile():
    """On a 2x2x2 mesh with 2 micro-batches, the step equals the single-device step (loss, metrics and
    updated parameters, fp32, 1e-5); the compiled state shardings are the parameter rules (not all
    replicated), the batch rows are split over ('data', 'fsdp'); three calls compile once."""
    mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
    params = make_params(11)
    batch = with_old_logprobs(make_batch(11), params, shift_seed=12)
    one_state, one_metrics, _ = _sgd_step(HYBRID, params, batch)
    mesh_settings = dataclasses.replace(HYBRID, micro_batches=2)
    state, metrics, step = _sgd_step(mesh_settings, params, batch, mesh)
    _assert_same(metrics, state.params, one_metrics, one_state.params)

    expected = models.param_specs(MODEL, mesh)
    got = jax.tree.map(lambda x: x.sharding.spec, state.params)
    assert jax.tree.leaves(got, is_leaf=lambda x: isinstance(x, P)) == \
        jax.tree.leaves(expected, is_leaf=lambda x: isinstance(x, P))
    assert any(spec != P() and any(s is not None for s in spec)
               for spec in jax.tree.leaves(got, is_leaf=lambda x: isinstance(x, P)))
    compiled = step.jitted.lower(state, batch_lib.check(batch)).compile()
    batch_in = compiled.input_shardings[0][1]
    assert batch_in.prompt_ids.spec == P(("data", "fsdp"), None)
    out_state = compiled.output_shardings[0]
    assert jax.tree.leaves(jax.tree.map(lambda s: s.spec, out_state.params)) == \
        jax.tree.leaves(jax.tree.map(lambda s: s.spec, jax.tree.map(lambda x: x.sharding, state.params)))
    for _ in range(2):
        state, metrics = step(state, batch)
    assert np.isfinite(float(metrics["loss"])) and step.jitted._cache_size() == 1


def test_gradient_does_not_change_with_the_micro_batch_split():
    """micro_batches 1 and 4 (hybrid objective, seq_mean_token_mean with mini-batch-wide denominators) give the
    same loss, metrics and gradient (SGD-updated parameters) to 1e-5."""
    params = make_params(11)
    batch = with_old_logprobs(make_batch(11), params, shift_seed=12)
    s1, m1, _ = _sgd_step(HYBRID, params, batch)
    s4, m4, _ = _sgd_step(dataclasses.replace(HYBRID, micro_batches=4), params, batch)
    _assert_same(m4, s4.params, m1, s1.params)
    assert float(m1["grad_norm"]) > 0


def test_adamw_state_is_sharded_like_the_parameters():
    """init_train_state on the mesh places AdamW's moments with the parameters' shardings, the EMA teacher
    likewise, and the counters replicated."""
    mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
    opt = ts.make_optimizer(1e-3, 2)
    settings = dataclasses.replace(BASE, teacher_kind="ema")
    state = ts.init_train_state(MODEL, settings, make_params(0), opt, mesh)
    specs = jax.tree.map(lambda x: x.sharding.spec, state.params)
    mu = state.opt_state[1][0].mu
    assert jax.tree.map(lambda x: x.sharding.spec, mu) == specs
    assert jax.tree.map(lambda x: x.sharding.spec, state.teacher_params) == specs
    assert state.teacher_params["embed"].dtype == jnp.float32 and state.step.sharding.spec == P()


def test_generation_batch_on_eight_devices_is_weight_moves_on_the_second_minibatch():
    """update_on_generation_batch on the 2x2x2 mesh with one group per mini-batch: IS weight 1 on the first
    mini-batch (old log-probs = current), not 1 on the second; the EMA teacher moves once and keeps the
    parameter shardings; the step compiled once."""
    mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
    settings = dataclasses.replace(BASE, teacher_kind="ema", ema_rate=0.5, minibatch_groups=1)
    opt = ts.make_optimizer(3e-2, 0)
    state = ts.init_train_state(MODEL, settings, make_params(13), opt, mesh)
    teacher0 = jax.tree.map(np.asarray, state.teacher_params)
    step = ts.make_train_step(MODEL, settings, opt, mesh)
    state, metrics = ts.update_on_generation_batch(step, state, batch_lib.check(make_batch(13)))
    np.testing.assert_allclose(metrics["is_weight_mean"][0], 1.0, atol=1e-5)
    assert abs(metrics["is_weight_mean"][1] - 1.0) > 1e-4 and float(metrics["ema_updated"][0]) == 1.0
    for t0, t1, p in zip(jax.tree.leaves(teacher0), jax.tree.leaves(state.teacher_params),
                         jax.tree.leaves(state.params)):
        np.testing.assert_allclose(np.asarray(t1), 0.5 * t0 + 0.5 * np.asarray(p), rtol=1e-6, atol=1e-7)
        assert t1.sharding.is_equivalent_to(p.sharding, p.ndim)
    assert step.jitted._cache_size() == 1
