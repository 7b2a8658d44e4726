"""Smoke test of `python -m sdpo_jax.tools.trace_crossings` (the module-crossing count of one RL step).

Runs the tool as users do, in a subprocess with one CPU device, on the demo for 3 steps, and checks the
structure of what it writes: not a claim about how many crossings there should be."""
import json
import subprocess
import sys
from tests.subprocess_env import REPO, job_env

STEP_KEYS = {"step", "crossings", "returns_to_loop", "modules_entered", "modules", "calls", "distinct_pairs", "pairs"}


def test_demo_step_crossings_are_counted_from_the_train_loop(tmp_path):
    """Invariant: tracing the demo (3 steps) finds the training loop by the train iterator's `__next__`
    in `sdpo_jax.train` (function `loop`), sees exactly one step per `__next__` call (3), and for the
    reported step 1 counts > 0 crossings between sdpo_jax modules, including calls out of the loop module
    and returns into it, over >= 2 modules entered; every pair is two distinct sdpo_jax modules and the
    pair counts add up to the crossings (all pairs fit in the top 30 on the demo)."""
    out = tmp_path / "trace.json"
    proc = subprocess.run([sys.executable, "-m", "sdpo_jax.tools.trace_crossings", "--json", str(out)],
                          cwd=REPO, env=job_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert STEP_KEYS | {"loop_module", "loop_function", "exit_code", "job_argv", "steps_seen", "per_step"} <= set(result)
    assert (result["loop_module"], result["loop_function"]) == ("sdpo_jax.train", "loop")
    assert result["exit_code"] == 0 and result["steps_seen"] == 3 and result["step"] == 1
    assert [s["step"] for s in result["per_step"]] == [0, 1, 2]
    assert all(STEP_KEYS <= set(s) for s in result["per_step"])
    assert result["crossings"] > 0 and result["returns_to_loop"] > 0 and result["modules_entered"] >= 2
    assert sum(n for _, _, n in result["pairs"]) == result["crossings"]
    for caller, callee, n in result["pairs"]:
        assert caller != callee and caller.startswith("sdpo_jax.") and callee.startswith("sdpo_jax.") and n > 0
    assert any(caller == "sdpo_jax.train" for caller, _, _ in result["pairs"])
    assert "step 1:" in proc.stdout
