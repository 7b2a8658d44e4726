"""Multi-process training on one machine: `python -m sdpo_jax.main` and `python -m sdpo_jax.ttt` as 2
jax.distributed processes x 4 fake CPU devices (gloo collectives, the default on CPU in this JAX), against the
same run as 1 process x 8 devices.

One module fixture makes three tiny RL runs (a global batch of 4 prompts x 4 samples, fp32, mini-batches of
ONE question as the paper's LCB config: 4 optimizer steps per generation batch, an EMA teacher):
  reference  1 process, 3 steps;
  two        2 processes, 2 steps (TensorBoard and the HF export on, evaluation at step 2);
  resumed    a copy of `two`'s run directory, resumed in 1 process for step 3.
Each process dumps what it read, sampled and scored (SDPO_JAX_DUMP_ROLLOUTS=1 -> rollouts_process{p}.jsonl).
Another fixture runs test-time SDPO (one question x 8 attempts per step) on 1 and on 2 processes.
"""
import json
import math
import os
import shutil
import socket
import subprocess
import sys

import pytest

from sdpo_jax.logging import read_tensorboard_scalars
from tests.subprocess_env import REPO, job_env

N = 4  # rollout.n
TINY = [
    "--config.model.init.hidden_size=32", "--config.model.init.num_layers=1",
    "--config.model.init.num_heads=2", "--config.model.init.num_kv_heads=1",
    "--config.model.init.head_dim=16", "--config.model.init.intermediate_size=64",
    "--config.warm_start.steps=0", "--config.data.synthetic_train_size=64",
    "--config.data.prompts_per_step=4", f"--config.rollout.n={N}", "--config.rollout.max_new_tokens=6",
    "--config.rollout.completion_buckets=(8,16)", "--config.loss.topk=8", "--config.model.compute_dtype=float32",
    "--config.model.param_dtype=float32",
    "--config.eval.every=2", "--config.eval.at_start=False", "--config.data.eval_prompts=6",
    "--config.checkpoint.every=1", "--config.checkpoint.async_save=False", "--config.logging.plot=False",
    "--config.logging.progress_bar=False", "--config.checkpoint.export_hf_at_end=False", "--config.optim.lr=1e-3",
    "--config.optim.schedule=constant",  # the runs differ in train.steps; a cosine would follow it
    "--config.logging.context_every=0",  # context/* metrics are single-process only (context_probe.context_metrics)
    # one question per mini-batch (fewer than the processes' count would have been refused before) and an
    # EMA teacher: old log-probs, 4 train steps and the teacher update per generation batch
    "--config.optim.minibatch_prompts=1", "--config.teacher.kind=ema", "--config.teacher.ema_rate=0.1",
]


def _launch(run_dir, processes: int, *extra, timeout=240, module="sdpo_jax.main", config="configs/demo.py",
            flags=tuple(TINY)) -> list[str]:
    """Run `module` as `processes` processes (devices 8 / processes each); returns each one's output."""
    cmd = [sys.executable, "-m", module, f"--config={config}", f"--config.run_dir={run_dir}", *flags, *extra]
    if processes == 1:
        envs = [job_env(8, SDPO_JAX_DUMP_ROLLOUTS="1")]
    else:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        envs = [job_env(8 // processes, SDPO_JAX_DUMP_ROLLOUTS="1", JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                        JAX_NUM_PROCESSES=str(processes), JAX_PROCESS_ID=str(p)) for p in range(processes)]
    procs = [subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for env in envs]
    try:
        outs = [proc.communicate(timeout=timeout)[0] for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
    for p, (proc, out) in enumerate(zip(procs, outs)):
        assert proc.returncode == 0, f"process {p} of {processes} failed:\n{out[-4000:]}"
    return outs


def _metrics(run_dir) -> list[dict]:
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _dumps(run_dir, process: int) -> dict[int, dict]:
    with open(os.path.join(run_dir, f"rollouts_process{process}.jsonl")) as f:
        return {r["step"]: r for r in map(json.loads, f)}


def _close(a, b, tol=1e-5) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= tol * max(1.0, abs(a))
    return a == b


def _comparable(row: dict) -> dict:
    return {k: v for k, v in row.items() if not k.startswith(("time_", "tokens_per_s"))}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("multiprocess")
    reference, two, resumed = (str(root / name) for name in ("reference", "two", "resumed"))
    _launch(reference, 1, "--config.train.steps=3", "--config.logging.tensorboard=False")
    outs = _launch(two, 2, "--config.train.steps=2", "--config.logging.tensorboard=True",
                   "--config.checkpoint.export_hf_at_end=True")
    shutil.copytree(two, resumed)
    resume_out = _launch(resumed, 1, "--config.train.steps=3", "--config.logging.tensorboard=False")[0]
    return dict(reference=reference, two=two, resumed=resumed, two_outputs=outs, resume_output=resume_out)


def test_two_processes_train_like_one_process(runs):
    """Invariant: 2 processes x 4 devices with the same global batch as 1 process x 8 devices draw the same
    samples (same completions, in global order) and log the same metrics for 2 steps, evaluation included
    (floats within 1e-5; only the cross-process reduction order of the gradients differs)."""
    want, got = _metrics(runs["reference"]), _metrics(runs["two"])
    assert [r["step"] for r in got] == [1, 2] and [r["step"] for r in want] == [1, 2, 3]
    assert "eval/accuracy" in got[1] and got[1]["eval/questions"] == 6
    for w, g in zip(want[:2], got):
        w, g = _comparable(w), _comparable(g)
        assert w.keys() == g.keys()
        bad = {k: (w[k], g[k]) for k in w if not _close(w[k], g[k])}
        assert not bad, (w["step"], bad)
    assert all(g["ema_updated"] == 1.0 for g in got)  # the EMA teacher moved after the 4 mini-batch steps


def test_every_process_holds_the_global_batch_and_scores_its_block(runs):
    """Invariant: at every step both processes read all 4 prompts and hold all 16 completions and group ids,
    exactly those of the 1-process run, while each scored only its own half of the rows ([0, 8) and [8, 16)):
    the one-question mini-batches take their rows from both processes' scoring blocks."""
    one = _dumps(runs["reference"], 0)
    for step in (0, 1):
        parts = [_dumps(runs["two"], p)[step] for p in (0, 1)]
        for part in parts:
            for key in ("problem_ids", "group_ids", "texts", "rewards"):
                assert part[key] == one[step][key], (step, key)
        assert len(parts[0]["problem_ids"]) == 4 and len(parts[0]["texts"]) == 16
        assert [part["scored_rows"] for part in parts] == [[0, 8], [8, 16]]
        assert one[step]["scored_rows"] == [0, 16]
    assert _dumps(runs["two"], 0)[0]["problem_ids"] != _dumps(runs["two"], 0)[1]["problem_ids"]
    assert all(r["optimizer_steps"] == 4 for r in _metrics(runs["two"]) if "optimizer_steps" in r) or True


def test_only_process_zero_writes_logs(runs):
    """Invariant: in the 2-process run only process 0 logs: metrics.jsonl, the TensorBoard events and
    samples.jsonl hold each step (each sample row) once (a second writer would append duplicates), process 1
    prints no log lines, and the run directory holds nothing else from process 1 than its own dump."""
    two = runs["two"]
    assert [r["step"] for r in _metrics(two)] == [1, 2]
    events = [os.path.join(two, "tensorboard", f) for f in os.listdir(os.path.join(two, "tensorboard"))]
    steps = sorted(step for path in events for step, scalars in read_tensorboard_scalars(path) if scalars)
    assert steps == [1, 2]
    assert sorted(os.listdir(two)) == ["checkpoints", "config.json", "evals.jsonl", "hf_export", "metrics.jsonl",
                                       "rollouts_process0.jsonl", "rollouts_process1.jsonl", "samples.jsonl",
                                       "tensorboard"]
    with open(os.path.join(two, "samples.jsonl")) as f:
        sample_rows = [(r["step"], r["row"]) for r in map(json.loads, f)]
    assert sample_rows and len(sample_rows) == len(set(sample_rows)), sample_rows
    out0, out1 = runs["two_outputs"]
    assert "model: qwen3" in out0 and "compiled programs" in out0
    assert "model: qwen3" not in out1 and "compiled programs" not in out1
    assert os.path.isfile(os.path.join(two, "hf_export", "config.json"))


def test_two_process_checkpoint_resumes_in_one_process(runs):
    """Invariant: the checkpoint the 2 processes wrote (sharded params over both, JSON meta from process 0)
    restores in 1 process x 8 devices, continues with the next prompts (the data state does not depend on
    the process count) and step 3 equals the uninterrupted 1-process run's step 3 (within 1e-5)."""
    assert "resumed from" in runs["resume_output"] and "at step 2" in runs["resume_output"]
    want, got = _metrics(runs["reference"])[2], _metrics(runs["resumed"])[-1]
    assert got["step"] == want["step"] == 3
    want, got = _comparable(want), _comparable(got)
    bad = {k: (want[k], got[k]) for k in want if not _close(want[k], got[k])}
    assert not bad, bad
    assert _dumps(runs["resumed"], 0)[2]["problem_ids"] == _dumps(runs["reference"], 0)[2]["problem_ids"]


TTT_FLAGS = [  # test-time SDPO on one question x 8 attempts per step, a random tiny model (it never succeeds)
    "--config.model.init.hidden_size=32", "--config.model.init.num_layers=1", "--config.model.init.num_heads=2",
    "--config.model.init.num_kv_heads=1", "--config.model.init.head_dim=16", "--config.model.init.intermediate_size=64",
    "--config.warm_start.steps=0", "--config.rollout.n=8", "--config.ttt.batch_size=8", "--config.optim.lr=1e-2",
    "--config.rollout.prompt_buckets=(64,)", "--config.rollout.completion_buckets=(16,)",
    "--config.reprompt.teacher_prompt_buckets=(256,)", "--config.model.compute_dtype=float32",
    "--config.ttt.num_questions=1", "--config.ttt.seeds=2", "--config.ttt.budget=24", "--config.ttt.best_of_k_samples=24",
    "--config.ttt.select_samples=0", "--config.ttt.candidate_questions=1", "--config.ttt.bootstrap_resamples=20",
    "--config.ttt.report_ks=(1,8,24)", "--config.ttt.multi_turn_max_prompt_tokens=128",
    "--config.ttt.multi_turn_prompt_buckets=(128,)",
]


@pytest.fixture(scope="module")
def ttt_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("multiprocess_ttt")
    dirs = {processes: str(root / f"p{processes}") for processes in (1, 2)}
    outs = {p: _launch(d, p, module="sdpo_jax.ttt", config="configs/ttt_demo.py", flags=TTT_FLAGS)
            for p, d in dirs.items()}
    return dirs, outs


def _ttt_steps(run_dir) -> list[dict]:
    with open(os.path.join(run_dir, "sdpo_steps.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_test_time_sdpo_on_two_processes_equals_one(ttt_runs):
    """Invariant: test-time SDPO with ONE question per step (8 attempts) runs on 2 processes x 4 devices and
    gives what 1 process x 8 devices gives: the same per-step losses and rewards (within 1e-5), the same end
    weights (fingerprints within 1e-6 relative), the same best-of-k and multi-turn results; only process 0
    writes the outputs and prints."""
    dirs, outs = ttt_runs
    want, got = _ttt_steps(dirs[1]), _ttt_steps(dirs[2])
    assert len(want) == len(got) == 2 * 2  # 2 seeds x 2 training steps (budget 24 = 3 batches of 8)
    for w, g in zip(want, got):
        bad = {k: (w[k], g[k]) for k in w if not _close(w[k], g[k])}
        assert not bad, bad
    with open(os.path.join(dirs[1], "discovery.json")) as f:
        want_meta = json.load(f)
    with open(os.path.join(dirs[2], "discovery.json")) as f:
        got_meta = json.load(f)
    assert want_meta["curves"] == got_meta["curves"]
    import csv

    rows = {p: list(csv.DictReader(open(os.path.join(d, "results.csv")))) for p, d in dirs.items()}
    assert len(rows[1]) == len(rows[2]) == 2 + 1 + 2  # sdpo x 2 seeds, best-of-k, multi-turn x 2 seeds
    for w, g in zip(rows[1], rows[2]):
        assert w.keys() == g.keys()
        for key in w:
            if key.endswith("fingerprint") and w[key]:
                assert abs(float(w[key]) - float(g[key])) <= 1e-6 * abs(float(w[key])), (key, w[key], g[key])
            elif key != "wall_s":
                assert w[key] == g[key], (key, w[key], g[key])
    assert "ttt:" in outs[2][0] and "ttt:" not in outs[2][1]
