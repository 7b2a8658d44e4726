"""The batched scorer: parallel, ordered, a timeout per item, and a crashing / hanging / raising
environment call becomes Score(0, explanation, {"error": ...}) -- never an exception -- with the
pool alive for the next call.  This module doubles as the misbehaving environment (import path
"tests.test_envs_base")."""

import os
import signal
import time

import pytest

from sdpo_jax.envs import Score, Scorer, get_env

ENV = "tests.test_envs_base"


# ---- the environment under test (runs in the scorer's workers) ----
def build_prompt(problem):
    return [{"role": "user", "content": str(problem["mode"])}]


def score(problem, completion, *, truncated=False, bonus=0.0):
    mode = problem["mode"]
    if mode == "raise":
        raise ValueError("boom")
    if mode == "hang":
        time.sleep(1000)
    if mode == "crash":
        os.kill(os.getpid(), signal.SIGKILL)
    if mode == "print":
        print("not a protocol line")
    if mode == "not_json":
        return Score(1.0, "", {"x": object()})
    if mode == "sleep":
        time.sleep(0.5)
    return Score(1.0 + bonus, f"ok {completion} {truncated}", {"pid": os.getpid()})


def test_get_env_by_import_path_and_errors():
    """get_env takes import paths (module or module:attr) and names what is missing."""
    env = get_env(ENV)
    assert env.score is score
    with pytest.raises(ValueError, match="no attribute"):
        get_env(ENV + ":nothing_here")
    with pytest.raises(ValueError, match="no callable"):
        get_env("os.path")


def test_failures_become_scores_and_the_pool_survives():
    """Raise, hang (past the 2 s limit), SIGKILL, stray prints and non-JSON info each give reward 0
    with an explanation and a counter; the other items keep their order; the pool then works."""
    modes = ["ok", "raise", "ok", "hang", "crash", "print", "not_json", "ok"]
    problems = [{"mode": m} for m in modes]
    with Scorer(ENV, num_workers=2, timeout_s=2.0, env_options={"bonus": 0.5}) as s:
        start = time.monotonic()
        scores, stats = s.score(problems, [f"c{i}" for i in range(8)], [i == 2 for i in range(8)])
        assert time.monotonic() - start < 20
        assert [x.reward for x in scores] == [1.5, 0, 1.5, 0, 0, 1.5, 0, 1.5]
        assert scores[2].feedback == "ok c2 True" and scores[0].feedback == "ok c0 False"
        assert scores[1].info["error"] == "errors" and "ValueError: boom" in scores[1].feedback
        assert scores[3].info["error"] == "timeouts" and "did not finish" in scores[3].feedback
        assert scores[4].info["error"] == "crashes" and "crashed" in scores[4].feedback
        assert scores[6].info["error"] == "errors"
        assert (stats["errors"], stats["timeouts"], stats["crashes"]) == (2, 1, 1)
        again, stats2 = s.score([{"mode": "ok"}] * 4, ["x"] * 4)
        assert [x.reward for x in again] == [1.5] * 4 and stats2["crashes"] == 0
        assert s.totals["restarts"] >= 2  # the hung and the killed workers were replaced
        pids = [w.proc.pid for w in s._workers if w is not None]
    time.sleep(0.2)
    for pid in pids:  # close() took the workers down
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_items_run_in_parallel():
    """Eight 0.5 s items on 4 workers take about 1 s, not 4 s."""
    with Scorer(ENV, num_workers=4, timeout_s=10) as s:
        s.score([{"mode": "ok"}] * 4, ["w"] * 4)  # start the workers
        start = time.monotonic()
        scores, stats = s.score([{"mode": "sleep"}] * 8, ["x"] * 8)
        elapsed = time.monotonic() - start
    assert [x.reward for x in scores] == [1.0] * 8
    assert len({x.info["pid"] for x in scores}) == 4
    assert elapsed < 3.0, elapsed


def test_a_scorer_keeps_its_pool_between_calls():
    """One Scorer (one per run) scores successive batches in the same worker process; close() ends it."""
    scorer = Scorer(ENV, num_workers=1)
    a, _ = scorer.score([{"mode": "ok"}], ["x"])
    b, _ = scorer.score([{"mode": "ok"}], ["y"])
    assert a[0].info["pid"] == b[0].info["pid"]
    scorer.close()
    with pytest.raises(OSError):
        os.kill(a[0].info["pid"], 0)


def test_check_ready_refuses_at_construction():
    """An env whose check_ready raises fails when the Scorer is built (before training)."""
    from sdpo_jax.envs import sandbox
    with pytest.raises(sandbox.SandboxUnavailable):
        Scorer("code", num_workers=1, env_options={"isolation": "none"})


def test_env_options_are_checked():
    """Unknown options fail at construction naming the accepted ones; `unsafe` is dropped for
    envs that run no code."""
    with pytest.raises(ValueError, match="no option colour.*bonus"):
        Scorer(ENV, num_workers=1, env_options={"colour": 1})
    s = Scorer(ENV, num_workers=1, env_options={"unsafe": True, "bonus": 1.0})
    assert s.env_options == {"bonus": 1.0}
    s.close()
