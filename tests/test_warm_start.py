"""The demo's warm start: its examples, its held-out probe, its stopping rule, and its reuse rule."""
import random
import types

import jax
import numpy as np
import pytest

from sdpo_jax import checkpoint as ckpt_lib
from sdpo_jax import context_probe, models, setup, warm_start as ws
from sdpo_jax.envs import synthetic
from sdpo_jax.tokenizer import build_demo_tokenizer

MODEL = models.ModelConfig(model_type="qwen3", vocab_size=64, hidden_size=32, num_layers=1, num_heads=2,
                           num_kv_heads=1, head_dim=16, intermediate_size=64, qk_norm="per_head")


@pytest.fixture(scope="module")
def tok():
    return build_demo_tokenizer()


def test_first_token_probs_reads_the_softmax_after_left_padded_prompts():
    """p is the softmax probability of the given token after each prompt (computed one unpadded prompt
    at a time); hit is True exactly where that token is the argmax."""
    params = models.init_params(MODEL, jax.random.key(0), std=0.5)
    rng = np.random.default_rng(0)
    prompts = [list(rng.integers(1, 64, size=int(n))) for n in rng.integers(3, 12, size=8)]
    alone = [np.asarray(jax.nn.softmax(models.forward(MODEL, params, np.array([p], np.int32),
                                                      np.ones((1, len(p)), np.int32))[0, -1])) for p in prompts]
    targets = [int(np.argmax(a)) if i % 2 else (int(np.argmax(a)) + 1) % 64 for i, a in enumerate(alone)]
    p, hit = context_probe.first_token_probs(MODEL, params, prompts, targets, pad_id=0, buckets=(16,))
    np.testing.assert_allclose(p, [a[t] for a, t in zip(alone, targets)], rtol=1e-5, atol=1e-7)
    assert hit.tolist() == [i % 2 == 1 for i in range(8)]


def test_training_examples_mix_kinds_with_the_envs_own_feedback(tok):
    """Feedback examples hold the env's default feedback on a plausible wrong answer, solution examples
    the answer itself, both with new random op words; the target is the answer + eos; the kinds come in
    about the configured fractions."""
    builder = ws.ExampleBuilder(tok, synthetic, {})
    problems = synthetic.make_problems(400, seed=0, final_ops=("max", "min", "first", "last"), uniform_answers=True)
    examples = ws.training_examples(builder, problems, feedback_fraction=0.3, solution_fraction=0.5, seed=1)
    texts = [tok.decode(p) for p, _ in examples]
    feedback = [t for t in texts if "Test case:" in t]
    solution = [t for t in texts if "Correct solution:" in t]
    assert 0.2 < len(feedback) / 400 < 0.4 and 0.4 < len(solution) / 400 < 0.6
    assert all(" means " in t and "is wrong" in t for t in feedback)
    pool_words = set(synthetic.NAME_POOL)
    assert all(t.split("user\n")[1].split()[0] in pool_words for t in feedback + solution)
    for (prompt, target), problem in zip(examples, problems):
        assert tok.decode(target) == problem["answer"] + tok.eos_token
    question_only = [t for t in texts if "Test case:" not in t and "Correct solution:" not in t]
    assert all(t.split("user\n")[1].split()[0] in synthetic.OPS for t in question_only)


def _check(solution, feedback, question):
    return ws.ContextCheck(solution, feedback, question, 0.0, 0.0, 0.0, 10)


def test_warm_start_stops_at_the_first_passing_check_or_reports_the_cap():
    """With a check that passes from its third call, training stops after 3 x check_every steps; a check
    that never passes runs to the cap and `passed` is False, and the cap message names the fields."""
    params = models.init_params(MODEL, jax.random.key(0))
    example = [([1, 2, 3, 4], [5, 6])] * 4
    calls = []

    def check(p):
        calls.append(1)
        return _check(0.95, 0.6, 0.3) if len(calls) >= 3 else _check(0.95, 0.35, 0.3)

    common = dict(lr=1e-3, check_every=2, min_solution_accuracy=0.9, min_feedback_gain=0.2, pad_id=0,
                  prompt_buckets=(8,), answer_buckets=(4,), log=lambda s: None)
    result = ws.warm_start(MODEL, params, lambda i: example, check, steps=20, **common)
    assert result.passed and result.steps == 6 and [s for s, _ in result.checks] == [2, 4, 6]
    params = models.init_params(MODEL, jax.random.key(0))
    capped = ws.warm_start(MODEL, params, lambda i: example, lambda p: _check(0.5, 0.4, 0.3), steps=5, **common)
    assert not capped.passed and capped.steps == 5 and [s for s, _ in capped.checks] == [2, 4, 5]
    message = ws.cap_message(capped, min_solution_accuracy=0.9, min_feedback_gain=0.2)
    for field in ("warm_start.steps", "warm_start.min_solution_accuracy", "warm_start.min_feedback_gain", "0.50"):
        assert field in message


def test_context_check_passes_needs_both_parts():
    """passes: (a) >= the solution floor and (b) >= (c) + the gain, each alone is not enough."""
    assert _check(0.9, 0.5, 0.3).passes(0.9, 0.2)
    assert not _check(0.89, 0.9, 0.3).passes(0.9, 0.2)
    assert not _check(1.0, 0.49, 0.3).passes(0.9, 0.2)


def test_a_warm_start_made_with_other_settings_is_not_reused(tmp_path, tok):
    """A directory whose saved fingerprint differs (or is missing) raises StaleWarmStart naming the
    differing settings; the matching one is restored without training."""
    from configs import demo

    cfg = demo.get_config()
    cfg.checkpoint.warm_start_dir = str(tmp_path / "ws")
    params = models.init_params(MODEL, jax.random.key(0))
    run = types.SimpleNamespace(tokenizer=tok, env=synthetic, model_cfg=MODEL)
    saved = setup.warm_start_settings(cfg).fingerprint
    ckpt_lib.save_params(cfg.checkpoint.warm_start_dir, params, {"settings": saved, "steps": 7, "check_line": "ok"})
    lines = []
    restored = ws.warm_started_params(setup.warm_start_settings(cfg), run, params, {}, lines.append)
    assert "reusing" in lines[0] and jax.tree.all(jax.tree.map(lambda a, b: bool((a == b).all()), restored, params))
    cfg.warm_start.lr = 1e-4
    with pytest.raises(ws.StaleWarmStart, match="warm_start"):
        ws.warm_started_params(setup.warm_start_settings(cfg), run, params, {}, lines.append)


def test_corrupt_digits_never_returns_the_answer():
    """The fallback wrong attempt differs from the answer."""
    rng = random.Random(0)
    assert all(ws.corrupt_digits({}, a, rng) != a for a in ["0", "7", "12", "999"] * 50)
