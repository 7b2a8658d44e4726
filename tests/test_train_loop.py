"""The main job end to end, as users run it: `python -m sdpo_jax.main --config=configs/demo.py` with
overrides that shrink it to seconds. Checks metrics, checkpoints, exact resume after SIGKILL, and a
clean SIGTERM stop."""
import json
import math
import os
import signal
import subprocess
import sys
import time

from tests.subprocess_env import REPO, job_env


TINY = [
    "--config.model.init.hidden_size=32", "--config.model.init.num_layers=1",
    "--config.model.init.num_heads=2", "--config.model.init.num_kv_heads=1",
    "--config.model.init.head_dim=16", "--config.model.init.intermediate_size=64",
    "--config.warm_start.steps=0", "--config.data.synthetic_train_size=64",
    "--config.data.prompts_per_step=2", "--config.rollout.n=4", "--config.rollout.max_new_tokens=6",
    "--config.rollout.completion_buckets=(8,16)", "--config.loss.topk=8", "--config.eval.every=0",
    "--config.checkpoint.every=1", "--config.logging.plot=False", "--config.logging.tensorboard=False",
    "--config.checkpoint.export_hf_at_end=False", "--config.optim.lr=1e-3",
]


def _cmd(run_dir, *extra):
    return [sys.executable, "-m", "sdpo_jax.main", "--config=configs/demo.py", f"--config.run_dir={run_dir}",
            *TINY, *extra]


def _run(run_dir, *extra, timeout=300):
    proc = subprocess.run(_cmd(run_dir, *extra), cwd=REPO, env=job_env(), capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _metrics(run_dir):
    """step -> the last row logged for it (a resumed run may log a step the killed run logged too)."""
    rows = {}
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            rows[row["step"]] = row
    return rows


def _checkpoint_steps(run_dir):
    directory = os.path.join(run_dir, "checkpoints")
    if not os.path.isdir(directory):
        return []
    return sorted(int(d) for d in os.listdir(directory) if d.isdigit())


def test_three_steps_write_metrics_checkpoint_and_export(tmp_path):
    """Invariant: 3 RL steps of the demo write 3 metric rows with a finite loss and the official
    reprompt metrics, a checkpoint at step 3, the plot and a Hugging Face export; the first step compiled
    each of its programs (prefill, decode, train step) once."""
    run_dir = str(tmp_path / "run")
    proc = _run(run_dir, "--config.train.steps=3", "--config.logging.plot=True",
                "--config.checkpoint.export_hf_at_end=True")
    assert "compiled programs: {'prefill': 1, 'decode': 1, 'train_step': 1}" in proc.stdout + proc.stderr
    rows = _metrics(run_dir)
    assert sorted(rows) == [1, 2, 3]
    for row in rows.values():
        assert math.isfinite(row["loss"]) and math.isfinite(row["grad_norm"])
        for key in ("success_group_fraction", "success_sample_fraction", "feedback_available_fraction",
                    "feedback_used_fraction", "reprompt_sample_fraction", "reward", "response_length",
                    "time_generate", "time_score", "time_update", "is_weight_mean"):
            assert key in row, key
    assert rows[3]["generations"] == 3 * 2 * 4
    assert 3 in _checkpoint_steps(run_dir)
    assert os.path.isfile(os.path.join(run_dir, "curves.png"))
    assert os.path.isfile(os.path.join(run_dir, "hf_export", "config.json"))


def _comparable(row):
    return {k: v for k, v in row.items() if not k.startswith(("time_", "tokens_per_s"))}


def test_sigkill_then_resume_equals_uninterrupted_run(tmp_path):
    """Invariant: a run SIGKILLed after checkpoint k and resumed continues from step k with the same
    data and, on CPU in fp32, the same metrics as an uninterrupted run (to 1e-6)."""
    steps = ["--config.train.steps=5", "--config.checkpoint.async_save=False"]
    reference = str(tmp_path / "reference")
    _run(reference, *steps)
    expected = _metrics(reference)

    killed = str(tmp_path / "killed")
    proc = subprocess.Popen(_cmd(killed, *steps), cwd=REPO, env=job_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not [s for s in _checkpoint_steps(killed) if s >= 2] and time.time() < deadline:
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed_from = max(_checkpoint_steps(killed))
    assert 2 <= resumed_from < 5, f"the kill came too late to test a resume (checkpoint {resumed_from})"
    out = _run(killed, *steps)
    assert f"at step {resumed_from}" in out.stdout
    got = _metrics(killed)
    for step in range(resumed_from + 1, 6):
        want, have = _comparable(expected[step]), _comparable(got[step])
        assert want.keys() == have.keys()
        for key, value in want.items():
            if isinstance(value, float):
                assert abs(value - have[key]) <= 1e-6 * max(1.0, abs(value)), (step, key, value, have[key])
            else:
                assert value == have[key], (step, key)


def test_sigterm_saves_and_exits_cleanly(tmp_path):
    """Invariant: SIGTERM mid-run makes the job save a checkpoint at the step it stopped and exit 0."""
    run_dir = str(tmp_path / "run")
    proc = subprocess.Popen(_cmd(run_dir, "--config.train.steps=500", "--config.checkpoint.every=0"),
                            cwd=REPO, env=job_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = os.path.join(run_dir, "metrics.jsonl")
    deadline = time.time() + 300
    while not (os.path.exists(metrics) and os.path.getsize(metrics)) and time.time() < deadline:
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, output[-3000:]
    assert "stop requested: saved step" in output
    saved = _checkpoint_steps(run_dir)
    assert saved and saved[-1] < 500
    assert max(_metrics(run_dir)) == saved[-1]


def _run_any(run_dir, *extra, timeout=300):
    return subprocess.run(_cmd(run_dir, *extra), cwd=REPO, env=job_env(), capture_output=True, text=True,
                          timeout=timeout)


def test_the_run_judges_its_gain_against_eval_min_gain_points(tmp_path):
    """A completed run with >= 2 evaluations below eval.min_gain_points exits 4 and says so; at or above
    the floor it exits 0 and says it passed; with fewer than two evaluations there is no verdict (exit 0).
    The start-up log names the CPU, architecture and XLA instruction set."""
    evals = ["--config.train.steps=2", "--config.eval.every=1", "--config.data.eval_prompts=4",
             "--config.checkpoint.every=0"]
    missed = _run_any(str(tmp_path / "missed"), *evals, "--config.eval.min_gain_points=1000")
    assert missed.returncode == 4, missed.stdout[-3000:] + missed.stderr[-3000:]
    assert "below the floor of +1000.0 points (eval.min_gain_points): exit code 4" in missed.stdout
    assert "XLA CPU instruction set" in missed.stdout and "host: " in missed.stdout
    passed = _run_any(str(tmp_path / "passed"), *evals, "--config.eval.min_gain_points=-1000")
    assert passed.returncode == 0 and "passed the floor of -1000.0 points" in passed.stdout
    lines = [json.loads(x) for x in open(tmp_path / "passed" / "evals.jsonl")]
    assert [x["step"] for x in lines] == [0, 1, 2] and all(len(x["successes"]) == 4 for x in lines)
    none = _run_any(str(tmp_path / "none"), "--config.train.steps=1", "--config.eval.min_gain_points=1000")
    assert none.returncode == 0 and "no verdict on eval.min_gain_points" in none.stdout
