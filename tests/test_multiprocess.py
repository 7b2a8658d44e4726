"""Multi-process training on one machine: `python -m sdpo_jax.main` as 2 jax.distributed processes x 4 fake
CPU devices (gloo collectives, the default on CPU in this JAX), against the same run as 1 process x 8 devices.

One module fixture makes three tiny runs (the same global batch of 4 prompts x 4 samples, fp32):
  reference  1 process, 3 steps;
  two        2 processes, 2 steps (TensorBoard and the HF export on, evaluation at step 2);
  resumed    a copy of `two`'s run directory, resumed in 1 process for step 3.
Each process dumps what it read and sampled (SDPO_JAX_DUMP_ROLLOUTS=1 -> rollouts_process{p}.jsonl).
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

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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
    "--config.logging.context_every=0",  # context/* metrics are single-process only (train.context_metrics)
]


def _env(devices: int, **extra) -> dict:
    env = dict(os.environ)
    env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu",
               HF_HUB_OFFLINE="1", JAX_COMPILATION_CACHE_DIR=os.path.join(REPO, ".jax_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", PYTHONUNBUFFERED="1", SDPO_JAX_DUMP_ROLLOUTS="1")
    env.update(extra)
    return env


def _launch(run_dir, processes: int, *extra, timeout=240) -> list[str]:
    """Run main as `processes` processes (devices 8 / processes each); returns each one's output."""
    cmd = [sys.executable, "-m", "sdpo_jax.main", "--config=configs/demo.py", f"--config.run_dir={run_dir}",
           *TINY, *extra]
    if processes == 1:
        envs = [_env(8)]
    else:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        envs = [_env(8 // processes, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
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
    one = _dumps(runs["reference"], 0)
    for step in (0, 1):
        parts = [_dumps(runs["two"], p)[step] for p in (0, 1)]
        assert parts[0]["texts"] + parts[1]["texts"] == one[step]["texts"]
        assert parts[0]["rewards"] + parts[1]["rewards"] == one[step]["rewards"]


def test_each_process_reads_its_own_prompts(runs):
    """Invariant: at every step the 2 processes read different prompts (2 each), and together, process 0's
    block first, exactly the prompts the 1-process run read at that step."""
    one = _dumps(runs["reference"], 0)
    for step in (0, 1):
        ids = [_dumps(runs["two"], p)[step]["problem_ids"] for p in (0, 1)]
        assert len(ids[0]) == len(ids[1]) == 2
        assert not set(ids[0]) & set(ids[1])
        assert ids[0] + ids[1] == one[step]["problem_ids"]
    assert _dumps(runs["two"], 0)[0]["problem_ids"] != _dumps(runs["two"], 0)[1]["problem_ids"]


def test_a_groups_samples_stay_on_one_process(runs):
    """Invariant: each prompt's n samples (one group id) were generated, scored and trained on one process:
    every group id a process holds appears exactly n times there and never on the other process."""
    for step in (0, 1):
        held = [_dumps(runs["two"], p)[step]["group_ids"] for p in (0, 1)]
        for p, groups in enumerate(held):
            assert groups and all(groups.count(g) == N for g in groups)
            assert len(_dumps(runs["two"], p)[step]["texts"]) == len(groups)
        assert not set(held[0]) & set(held[1])
        assert held[0] + held[1] == _dumps(runs["reference"], 0)[step]["group_ids"]


def test_only_process_zero_writes_logs(runs):
    """Invariant: in the 2-process run only process 0 logs: metrics.jsonl and the TensorBoard events hold
    each step once (a second writer would append duplicates), process 1 prints no log lines, and the run
    directory holds nothing else from process 1 than its own dump."""
    two = runs["two"]
    assert [r["step"] for r in _metrics(two)] == [1, 2]
    events = [os.path.join(two, "tensorboard", f) for f in os.listdir(os.path.join(two, "tensorboard"))]
    steps = sorted(step for path in events for step, scalars in read_tensorboard_scalars(path) if scalars)
    assert steps == [1, 2]
    assert sorted(os.listdir(two)) == ["checkpoints", "config.json", "evals.jsonl", "hf_export", "metrics.jsonl",
                                       "rollouts_process0.jsonl", "rollouts_process1.jsonl", "tensorboard"]
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
