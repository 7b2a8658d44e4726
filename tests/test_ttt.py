"""Test-time SDPO and its baselines (sdpo_jax/ttt/): multi-turn prompts, config checks, the loop."""

import json
import os

import jax
import numpy as np
import pytest

from configs import ttt_demo
from sdpo_jax import config as config_lib
from sdpo_jax import reprompt, setup
from sdpo_jax.ttt import methods as ttt
from sdpo_jax.envs import synthetic
from sdpo_jax.envs.base import Score
from sdpo_jax.tokenizer import apply_chat_template, load_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("demo")


def _feedbacks(n):
    return [f"Wrong answer {1000 + i}. Position {i % 4 + 1} should be {i % 10}." for i in range(n)]


def test_multi_turn_prompt_keeps_the_newest_feedback_and_fits(tokenizer):
    """With too much history the prompt keeps a suffix of the feedback list (the newest, oldest
    dropped first), fits the token budget, is maximal (one more old feedback would not fit), and the
    hint from the previous turn gives the same answer."""
    messages = synthetic.build_prompt(synthetic.make_problems(1, seed=0, difficulty=3)[0])
    feedbacks = _feedbacks(30)
    budget = 160
    ids, start = ttt.build_multi_turn_prompt(tokenizer, messages, feedbacks, max_prompt_tokens=budget)
    assert 0 < start < len(feedbacks) - 1
    assert len(ids) <= budget
    text = tokenizer.decode(ids)
    assert feedbacks[-1] in text and feedbacks[start] in text and feedbacks[start - 1] not in text
    assert text.index(feedbacks[start]) < text.index(feedbacks[-1])  # oldest kept first, newest last
    longer = apply_chat_template(tokenizer, ttt.multi_turn_messages(messages, feedbacks[start - 1:]),
                                 enable_thinking=False)
    assert len(longer) > budget
    hinted, hinted_start = ttt.build_multi_turn_prompt(tokenizer, messages, feedbacks, max_prompt_tokens=budget,
                                                       min_start=start - 3)
    assert (hinted, hinted_start) == (ids, start)
    few, few_start = ttt.build_multi_turn_prompt(tokenizer, messages, feedbacks[:2], max_prompt_tokens=budget)
    assert few_start == 0 and all(f in tokenizer.decode(few) for f in feedbacks[:2])
    bare, _ = ttt.build_multi_turn_prompt(tokenizer, messages, [], max_prompt_tokens=budget)
    assert bare == apply_chat_template(tokenizer, messages, enable_thinking=False)


def test_multi_turn_prompt_matches_the_sdpo_teacher_prompt_and_errors_when_too_long(tokenizer):
    """One feedback gives exactly the SDPO teacher's prompt (same texts, no past attempt); a question
    that alone exceeds the budget raises naming the config field."""
    problem = synthetic.make_problems(1, seed=1, difficulty=3)[0]
    messages = synthetic.build_prompt(problem)
    attempt = "12345"
    feedback = synthetic.score(problem, attempt).feedback
    teacher = reprompt.build_teacher_prompts(tokenizer, [messages], [attempt], [0.0], [feedback], [0])
    ids, _ = ttt.build_multi_turn_prompt(tokenizer, messages, [feedback], max_prompt_tokens=1000)
    assert ids == teacher.ids[0]
    assert attempt not in ttt.multi_turn_messages(messages, [feedback])[-1]["content"].replace(feedback, "")
    with pytest.raises(ValueError, match="multi_turn_max_prompt_tokens"):
        ttt.build_multi_turn_prompt(tokenizer, messages, [feedback], max_prompt_tokens=5)


def test_validate_ttt_names_the_bad_field(tmp_path):
    """validate_ttt rejects unknown ttt keys, N < budget for best-of-k, and a batch that is not one
    question x ttt.batch_size attempts; the shipped configs validate."""
    for module in (ttt_demo,):
        config_lib.validate_ttt(module.get_config())
    from configs import ttt_lcb_qwen3_8b

    paper = ttt_lcb_qwen3_8b.get_config()
    with pytest.raises(config_lib.ConfigError, match="ttt.questions"):
        config_lib.validate_ttt(paper)  # the question file is a placeholder until the user passes one
    questions = tmp_path / "hard.jsonl"
    questions.write_text("{}\n")
    paper.ttt.questions = str(questions)
    config_lib.validate_ttt(paper)
    cfg = ttt_demo.get_config()
    cfg.ttt.best_of_k_samples = 10
    with pytest.raises(config_lib.ConfigError, match="best_of_k_samples"):
        config_lib.validate_ttt(cfg)
    cfg = ttt_demo.get_config()
    cfg.rollout.n = 8
    with pytest.raises(config_lib.ConfigError, match="rollout.n"):
        config_lib.validate_ttt(cfg)
    cfg = ttt_demo.get_config()
    cfg.ttt.select_min_rate = 0.5
    with pytest.raises(config_lib.ConfigError, match="select_min_rate"):
        config_lib.validate_ttt(cfg)
    cfg = ttt_demo.get_config()
    with cfg.ttt.unlocked():
        cfg.ttt.budgett = 3
    with pytest.raises(config_lib.ConfigError, match="ttt.budgett"):
        config_lib.validate_ttt(cfg)


def _tiny_config(run_dir):
    c = ttt_demo.get_config()
    c.run_dir = str(run_dir)
    c.model.init.hidden_size = 64
    c.model.init.num_layers = 2
    c.model.init.head_dim = 16
    c.model.init.intermediate_size = 128
    c.warm_start.steps = 0  # a random tiny model: it never succeeds, so every batch trains
    c.rollout.n = 8
    c.optim.lr = 1e-2  # large enough that one step visibly moves the weights
    # one bucket per sequence kind: one compile of each program (tracing dominates this test's time)
    c.rollout.prompt_buckets = (64,)
    c.rollout.completion_buckets = (16,)
    c.reprompt.teacher_prompt_buckets = (256,)
    t = c.ttt
    t.num_questions, t.seeds, t.budget, t.batch_size = 2, 2, 16, 8
    t.best_of_k_samples, t.select_samples, t.candidate_questions = 16, 0, 2
    t.bootstrap_resamples, t.report_ks, t.multi_turn_max_prompt_tokens = 50, (1, 8, 16), 128
    t.multi_turn_prompt_buckets = (128,)
    config_lib.validate_ttt(c)
    return c


def test_two_question_run_completes_and_restores_weights_between_questions(tmp_path):
    """A 2-question, 2-seed, 16-attempt run of the CPU config finishes with every method; each
    (question, seed) SDPO run starts from the initial weights (fingerprint equal), really trains
    (end fingerprint differs, steps >= 1), and the initial weights are never modified."""
    cfg = _tiny_config(tmp_path)
    out = setup.run_ttt(cfg, devices=jax.devices()[:1], log=lambda *a: None)
    rows = out["rows"]
    sdpo = [r for r in rows if r["method"] == "sdpo"]
    assert len(sdpo) == 4 and {r["question_index"] for r in sdpo} == {0, 1}
    init = out["meta"]["initial_params_fingerprint"]
    for r in sdpo:
        assert r["start_fingerprint"] == pytest.approx(init, rel=1e-12)
        assert r["steps"] >= 1 and r["end_fingerprint"] != pytest.approx(init, rel=1e-9)
        assert r["attempts"] == 16 and r["first_success"] is None  # a random model never solves these
    assert out["meta"]["initial_params_unchanged"]
    assert len([r for r in rows if r["method"] == "multi_turn"]) == 4
    assert [r["samples"] for r in rows if r["method"] == "best_of_k"] == [16, 16]
    data = json.loads(open(os.path.join(cfg.run_dir, "discovery.json")).read())
    assert set(data["curves"]) == {"sdpo", "best_of_k", "multi_turn"}
    assert len(data["curves"]["sdpo"]["mean"]) == 16
    for name in ("results.csv", "discovery.png", "sdpo_steps.jsonl"):
        assert os.path.getsize(os.path.join(cfg.run_dir, name)) > 0


def test_first_success_counts_every_attempt_and_stops(tmp_path):
    """With a scorer that first accepts row 5 of the third batch of 8, SDPO reports attempt
    2*8 + 5 = 21 after exactly 2 training steps (24 attempts sampled); a multi-turn chain accepted
    on turn 3 reports 3 and has seen the 2 earlier feedbacks."""
    cfg = _tiny_config(tmp_path)
    cfg.ttt.budget = 32
    cfg.ttt.best_of_k_samples = 32
    run, params0, close = setup.build_ttt(cfg, devices=jax.devices()[:1], log=lambda *a: None)
    calls = {"n": 0}

    def scorer(problems, texts, truncated):
        calls["n"] += 1
        ok = [calls["n"] == 3 and i == 4 for i in range(len(texts))]
        return [Score(1.0 if good else 0.0, "" if good else f"fb{calls['n']}") for good in ok], {}

    try:
        run.actor.scorer = scorer
        problem = synthetic.make_problems(1, seed=3, difficulty=3)[0]
        result = ttt.sdpo_on_question(run, params0, problem, seed=0, question_index=0)
        assert (result["first_success"], result["steps"], result["attempts"]) == (21, 2, 24)

        calls["n"] = 0

        def chain_scorer(problems, texts, truncated):
            calls["n"] += 1
            good = calls["n"] == 3
            return [Score(1.0 if good else 0.0, "" if good else f"fb{calls['n']}") for _ in texts], {}

        run.actor.scorer = chain_scorer
        chains = ttt.multi_turn(run, params0, [problem], seeds=1, log=lambda *a: None)
        assert chains[0]["first_success"] == 3 and chains[0]["feedbacks_seen"] == 2

        run.actor.scorer = lambda problems, texts, truncated: ([Score(float(i % 4 == 0), "x") for i in
                                                          range(len(texts))], {})
        cfg.ttt.select_samples, cfg.ttt.candidate_questions = 8, 3
        cfg.ttt.select_min_rate, cfg.ttt.select_max_rate = 0.2, 0.3  # every question: 2 of 8
        run.settings = setup.ttt_settings(cfg)
        picked, info = ttt.select_questions(run, params0, setup.ttt_candidates(cfg), log=lambda *a: None)
        assert len(picked) == 2 and info["candidate_rates"] == [0.25] * 3  # num_questions=2 of 3 kept
        cfg.ttt.select_min_rate = 0.5
        run.settings = setup.ttt_settings(cfg)
        with pytest.raises(ValueError, match="select_min_rate"):
            ttt.select_questions(run, params0, setup.ttt_candidates(cfg), log=lambda *a: None)
    finally:
        close()
    assert np.isfinite(result["end_fingerprint"])
