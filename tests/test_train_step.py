"""The jitted train step on one device: loss equals the reference on materialised logits for every
teacher, GRPO/hybrid endpoints, old log-probs, micro-batch invariance, zero-weight padding, EMA driver."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sdpo_jax import batch as batch_lib
from sdpo_jax import divergences, losses, models, teacher, train_step as ts

MODEL = models.ModelConfig(model_type="qwen3", vocab_size=96, hidden_size=32, num_layers=1, num_heads=2,
                           num_kv_heads=1, head_dim=16, intermediate_size=64, qk_norm="per_head")
N, PL, CL, PT = 8, 6, 5, 9


def make_params(seed=0, model=MODEL):
    return models.init_params(model, jax.random.key(seed), std=0.3)


def make_batch(seed=0, n=N, group=4):
    """Rows with left-padded prompts / teacher prompts, right-padded completions of varying length,
    some rows without teacher context, sampler log-probs near plausible values."""
    rng = np.random.default_rng(seed)
    v = MODEL.vocab_size

    def left_padded(length):
        ids = rng.integers(1, v, size=(n, length)).astype(np.int32)
        lens = rng.integers(2, length + 1, size=n)
        mask = (np.arange(length)[None, :] >= length - lens[:, None]).astype(np.int32)
        return ids * mask, mask

    prompt_ids, prompt_mask = left_padded(PL)
    teacher_ids, teacher_mask = left_padded(PT)
    comp = rng.integers(1, v, size=(n, CL)).astype(np.int32)
    clen = rng.integers(1, CL + 1, size=n)
    cmask = (np.arange(CL)[None, :] < clen[:, None]).astype(np.int32)
    sd = (rng.random(n) > 0.25).astype(np.float32)
    sd[0] = 1.0
    rewards = rng.integers(0, 2, size=n).astype(np.float32)
    gid = np.arange(n) // group
    return batch_lib.check(batch_lib.RolloutBatch(
        prompt_ids=prompt_ids, prompt_mask=prompt_mask, completion_ids=comp * cmask, completion_mask=cmask,
        teacher_prompt_ids=teacher_ids, teacher_prompt_mask=teacher_mask, sd_mask=sd,
        old_logprobs=np.zeros((n, CL), np.float32),
        sampler_logprobs=(-np.log(v) + rng.normal(size=(n, CL)) * 0.3).astype(np.float32) * cmask,
        rewards=rewards, group_ids=gid.astype(np.int32), advantages=losses.compute_grpo_advantages(rewards, gid)))


def reference_logits(params, teacher_params, batch, settings):
    """Materialised student / teacher logits at the completion positions via models.forward."""
    b = jax.tree.map(jnp.asarray, batch)
    ids = jnp.concatenate([b.prompt_ids, b.completion_ids], 1)
    mask = jnp.concatenate([b.prompt_mask, b.completion_mask], 1)
    zs = models.forward(MODEL, params, ids, mask)[:, PL - 1:PL - 1 + CL]
    t_ids = jnp.concatenate([b.teacher_prompt_ids, b.completion_ids], 1)
    t_mask = jnp.concatenate([b.teacher_prompt_mask, b.completion_mask], 1)
    zt = teacher.teacher_logits(MODEL, settings.teacher_kind, params, teacher_params, t_ids, t_mask,
                                mix=settings.trust_region_mix)[:, PT - 1:PT - 1 + CL]
    return zs, zt


@functools.partial(jax.jit, static_argnums=3)
def _reference_loss(params, teacher_params, b, settings):
    zs, zt = reference_logits(params, teacher_params, b, settings)
    cm = b.completion_mask.astype(jnp.float32)
    ls_y = jnp.take_along_axis(jax.nn.log_softmax(zs / settings.temperature), b.completion_ids[..., None], -1)[..., 0]
    sd_loss, _ = divergences.distillation_loss(
        zs, zt, b.completion_ids, cm * b.sd_mask[:, None], mode=settings.loss_mode, topk=settings.topk,
        add_tail=settings.add_tail, alpha=settings.alpha, temperature=settings.temperature,
        old_logprobs=b.old_logprobs, is_clip=settings.is_clip, sampler_logprobs=b.sampler_logprobs,
        rollout_is_clip=settings.rollout_is_clip, aggregation=settings.aggregation)
    pg_loss, _ = losses.grpo_loss(ls_y, b.old_logprobs, b.advantages, cm, clip_low=settings.clip_low,
                                  clip_high=settings.clip_high, dual_clip=settings.dual_clip,
                                  aggregation=settings.aggregation, sampler_logprobs=b.sampler_logprobs,
                                  rollout_is_clip=settings.rollout_is_clip)
    return {"sdpo": sd_loss, "grpo": pg_loss, "hybrid": losses.hybrid_loss(sd_loss, pg_loss, settings.hybrid_lambda)}[
        settings.objective]


def reference_loss(params, teacher_params, batch, settings):
    """The step's loss recomputed on materialised logits with divergences.distillation_loss / grpo_loss."""
    return _reference_loss(params, teacher_params, batch_lib.check(batch), settings)


def with_old_logprobs(batch, params, shift_seed=None):
    """old_logprobs = current log-probs, optionally shifted so IS weights are not all 1."""
    old = np.asarray(old_logprobs(ts.StepSettings(), params, batch))
    if shift_seed is not None:
        old = old + np.random.default_rng(shift_seed).normal(size=old.shape).astype(np.float32) * 0.7
    return batch._replace(old_logprobs=old * batch.completion_mask)


BASE = ts.StepSettings(teacher_kind="live", topk=7, alpha=0.5, temperature=0.8, vocab_chunk=40, trust_region_mix=0.3)


def run_step(settings, params, batch, mesh=None, optimizer=None):
    """One step from fresh state; AdamW(1e-3) unless an optimizer is given."""
    opt = optimizer or ts.make_optimizer(1e-3, 0)
    state = ts.init_train_state(MODEL, settings, jax.tree.map(jnp.array, params), opt, mesh)
    step = ts.make_train_step(MODEL, settings, opt, mesh)
    new_state, metrics = step(state, batch)
    return new_state, metrics, step


def sgd_step(settings, params, batch, mesh=None):
    """One plain-SGD (lr 1) step: the parameter change is exactly minus the gradient, which keeps
    parameter comparisons well-conditioned (Adam's first step is ~lr * sign(g))."""
    import optax

    return run_step(settings, params, batch, mesh, optimizer=optax.sgd(1.0))



def old_logprobs(settings, params, batch):
    """The train step's old-log-prob program on `batch` (its optimizer plays no part)."""
    return ts.make_train_step(MODEL, settings, ts.make_optimizer(1e-3, 0)).old_logprobs(params, batch_lib.check(batch))


@pytest.mark.parametrize("kind", ["live", "ema", "frozen", "trust_region"])
def test_step_loss_equals_reference_on_logits_for_every_teacher(kind):
    """The step's chunked loss (hidden states, vocab chunks) equals divergences.distillation_loss on
    models.forward logits to 1e-5, for each teacher kind (teacher parameters differing from the student's), with
    IS weights and rollout TIS active; the gradient is finite and non-zero; sd_mask_fraction is reported."""
    params = make_params(0)
    settings = dataclasses.replace(BASE, teacher_kind=kind)
    batch = with_old_logprobs(make_batch(0), params, shift_seed=1)
    opt = ts.make_optimizer(1e-3, 0)
    state = ts.init_train_state(MODEL, settings, jax.tree.map(jnp.array, params), opt)
    if state.teacher_params is not None:  # a teacher that differs from the student
        other = make_params(5)
        state = state._replace(teacher_params=jax.tree.map(
            lambda x: jnp.asarray(x, jnp.float32 if kind == "ema" else x.dtype), other))
    expected = reference_loss(params, state.teacher_params, batch, settings)
    _, metrics = ts.make_train_step(MODEL, settings, opt)(state, batch)
    np.testing.assert_allclose(float(metrics["loss"]), float(expected), rtol=1e-5, atol=1e-6)
    assert float(metrics["grad_norm"]) > 0 and np.isfinite(float(metrics["grad_norm"]))
    assert float(metrics["skipped_nonfinite"]) == 0
    np.testing.assert_allclose(float(metrics["sd_mask_fraction"]), batch.sd_mask.mean(), rtol=1e-6)


def test_grpo_and_hybrid_endpoints():
    """objective=grpo equals losses.grpo_loss on the reference log-probs; the hybrid with lambda=1 is the GRPO
    step and with lambda=0 the SDPO step (loss and updated parameters)."""
    params = make_params(2)
    batch = with_old_logprobs(make_batch(2), params, shift_seed=3)
    results = {}
    for name, extra in (("grpo", dict(objective="grpo")), ("sdpo", dict(objective="sdpo")),
                        ("h1", dict(objective="hybrid", hybrid_lambda=1.0)),
                        ("h0", dict(objective="hybrid", hybrid_lambda=0.0))):
        settings = dataclasses.replace(BASE, **extra)
        state, metrics, _ = run_step(settings, params, batch)
        results[name] = (float(metrics["loss"]), state.params, metrics)
        np.testing.assert_allclose(float(metrics["loss"]), float(reference_loss(params, None, batch, settings)),
                                   rtol=1e-5, atol=1e-6)
    for hybrid, pure in (("h1", "grpo"), ("h0", "sdpo")):
        assert results[hybrid][0] == pytest.approx(results[pure][0], rel=1e-6, abs=1e-7)
        for a, b in zip(jax.tree.leaves(results[hybrid][1]), jax.tree.leaves(results[pure][1])):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    assert results["grpo"][0] != pytest.approx(results["sdpo"][0])
    assert "pg_clipfrac" in results["grpo"][2] and "loss_grpo" in results["h0"][2]


def test_identical_contexts_through_the_model_give_zero_loss_and_gradient():
    """Live teacher whose teacher prompt is the prompt (with more left padding): loss 0 and gradient norm 0."""
    params = make_params(3)
    batch = with_old_logprobs(make_batch(3), params)
    pad = ((0, 0), (PT - PL, 0))  # the same prompt, left-padded further to the teacher bucket
    batch = batch._replace(teacher_prompt_ids=np.pad(batch.prompt_ids, pad), teacher_prompt_mask=np.pad(batch.prompt_mask, pad))
    _, metrics, _ = run_step(BASE, params, batch)
    assert abs(float(metrics["loss"])) < 1e-6 and float(metrics["grad_norm"]) < 1e-5


def test_old_logprobs_equal_log_softmax_of_forward():
    """compute_old_logprobs = log softmax(logits / T) at the sampled tokens, 0 on padding, with micro-batches."""
    params = make_params(4)
    batch = make_batch(4)
    settings = ts.StepSettings(temperature=0.7, vocab_chunk=40, micro_batches=2)
    got = np.asarray(old_logprobs(settings, params, batch))
    zs, _ = jax.jit(reference_logits, static_argnums=3)(params, None, batch_lib.check(batch), BASE)
    want = jnp.take_along_axis(jax.nn.log_softmax(zs / 0.7), jnp.asarray(batch.completion_ids)[..., None], -1)[..., 0]
    np.testing.assert_allclose(got, np.asarray(want) * batch.completion_mask, rtol=1e-5, atol=1e-5)


def test_zero_weight_padding_rows_change_nothing():
    """Appending zero-weight copies of rows leaves the loss, gradient norm and every metric unchanged."""
    params = make_params(6)
    batch = with_old_logprobs(make_batch(6), params, shift_seed=5)
    _, plain, _ = run_step(BASE, params, batch)
    padded = batch_lib.RolloutBatch(*[np.concatenate([x, x[:4]]) for x in batch_lib.check(batch)])
    padded = padded._replace(row_weight=np.r_[np.ones(N), np.zeros(4)].astype(np.float32))
    _, with_pad, _ = run_step(BASE, params, padded)
    for key in plain:
        np.testing.assert_allclose(float(with_pad[key]), float(plain[key]), rtol=1e-5, atol=1e-7, err_msg=key)


def test_generation_batch_driver_ema_once_and_is_weight_on_second_minibatch():
    """Two mini-batches (one group each): IS weight 1 on the first, not 1 on the second (the parameters moved);
    the EMA teacher moves exactly once, to (1 - r) theta'_0 + r theta_final; two updates counted; one compile."""
    params = make_params(7)
    settings = dataclasses.replace(BASE, teacher_kind="ema", ema_rate=0.25, minibatch_groups=1)
    opt = ts.make_optimizer(3e-2, 0)
    state = ts.init_train_state(MODEL, settings, jax.tree.map(jnp.array, params), opt)
    teacher0 = jax.tree.map(np.asarray, state.teacher_params)
    step = ts.make_train_step(MODEL, settings, opt)
    state, metrics = ts.update_on_generation_batch(step, state, batch_lib.check(make_batch(7)))
    assert metrics["is_weight_mean"].shape == (2,)
    np.testing.assert_allclose(metrics["is_weight_mean"][0], 1.0, atol=1e-5)
    assert abs(metrics["is_weight_mean"][1] - 1.0) > 1e-4
    assert int(state.step) == 2 and float(metrics["ema_updated"][0]) == 1.0
    for t0, t1, p in zip(jax.tree.leaves(teacher0), jax.tree.leaves(state.teacher_params),
                         jax.tree.leaves(state.params)):
        np.testing.assert_allclose(np.asarray(t1), 0.75 * t0 + 0.25 * np.asarray(p), rtol=1e-6, atol=1e-7)
    assert step.jitted._cache_size() == 1


def test_nonfinite_batch_skips_updates_and_the_ema():
    """A NaN in the batch makes every step non-finite: parameters and teacher stay, the skips are counted,
    the step count stays 0 and the EMA does not move."""
    params = make_params(8)
    settings = dataclasses.replace(BASE, teacher_kind="ema", ema_rate=0.25, minibatch_groups=1)
    opt = ts.make_optimizer(3e-2, 0)
    state = ts.init_train_state(MODEL, settings, jax.tree.map(jnp.array, params), opt)
    before = jax.tree.map(np.asarray, (state.params, state.teacher_params))
    batch = make_batch(8)
    batch = batch._replace(sampler_logprobs=np.full_like(batch.sampler_logprobs, np.nan))
    state, metrics = ts.update_on_generation_batch(ts.make_train_step(MODEL, settings, opt), state, batch_lib.check(batch))
    assert metrics["skipped_nonfinite"].tolist() == [1.0, 1.0] and float(metrics["ema_updated"][0]) == 0.0
    assert int(state.step) == 0
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves((state.params, state.teacher_params))):
        np.testing.assert_array_equal(a, np.asarray(b))


def test_bad_settings_and_batches_raise_clear_errors():
    """Unknown objective / teacher, and a batch whose rows do not divide by micro_batches, are refused."""
    with pytest.raises(ValueError, match="objective"):
        ts.StepSettings(objective="ppo")
    with pytest.raises(ValueError, match="teacher.kind"):
        ts.StepSettings(teacher_kind="moving")
    settings = dataclasses.replace(BASE, micro_batches=3)
    opt = ts.make_optimizer(1e-3, 0)
    state = ts.init_train_state(MODEL, settings, make_params(0), opt)
    with pytest.raises(ValueError, match="micro_batches"):
        ts.make_train_step(MODEL, settings, opt)(state, make_batch(0))
    with pytest.raises(ValueError, match="sd_mask"):
        batch_lib.check(make_batch(0)._replace(sd_mask=np.ones(3, np.float32)))


def test_lr_schedule_warmup_then_constant_or_cosine():
    """lr_schedule: linear warmup to lr; constant afterwards by default; with cosine_steps, lr at the end
    of the warmup, lr * (1 + r) / 2 half-way, lr * r from the last update on."""
    const = ts.lr_schedule(1.0, 4)
    assert [float(const(k)) for k in (0, 1, 3, 100)] == [0.25, 0.5, 1.0, 1.0]
    cos = ts.lr_schedule(2.0, 1, cosine_steps=10, final_lr_ratio=0.1)
    np.testing.assert_allclose([float(cos(k)) for k in (0, 5, 10, 50)], [2.0, 2.0 * 0.55, 0.2, 0.2], rtol=1e-6)
    warm_cos = ts.lr_schedule(1.0, 4, cosine_steps=8, final_lr_ratio=0.0)
    np.testing.assert_allclose([float(warm_cos(k)) for k in (0, 3, 7, 11)], [0.25, 1.0, 0.5, 0.0], atol=1e-6)


@pytest.mark.parametrize("objective", ["sdpo", "hybrid"])
def test_on_policy_old_logprobs_from_the_step_equal_the_separate_forward(objective):
    """old_logprobs_from_step (one mini-batch per generation batch): the step's own stop-gradient
    log-probs as pi_old give the same updated parameters and metrics (1e-5) as the separate old-log-prob
    forward, with the IS weight and rollout TIS active; with two mini-batches it refuses."""
    params = make_params(3)
    settings = dataclasses.replace(BASE, objective=objective, teacher_kind="ema", micro_batches=2)
    fast = dataclasses.replace(settings, old_logprobs_from_step=True)
    opt = ts.make_optimizer(1e-3, 0)
    results = []
    for s in (settings, fast):
        state = ts.init_train_state(MODEL, s, jax.tree.map(jnp.array, params), opt)
        step = ts.make_train_step(MODEL, s, opt)
        results.append(ts.update_on_generation_batch(step, state, batch_lib.check(make_batch(2))))
    (slow_state, slow_m), (fast_state, fast_m) = results
    for a, b in zip(jax.tree.leaves(slow_state.params), jax.tree.leaves(fast_state.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
    for name in ("loss", "grad_norm", "is_weight_mean"):
        np.testing.assert_allclose(slow_m[name], fast_m[name], rtol=1e-5, atol=1e-7)
    two = dataclasses.replace(fast, minibatch_groups=1)
    state = ts.init_train_state(MODEL, two, jax.tree.map(jnp.array, params), opt)
    with pytest.raises(ValueError, match="one mini-batch"):
        ts.update_on_generation_batch(ts.make_train_step(MODEL, two, opt), state, batch_lib.check(make_batch(2)))
