"""The command lines as a user meets them (`python -m sdpo_jax.main`, `sdpo_jax.ttt`, `sdpo_jax.tools.aot`, each in
a subprocess, offline): a bad input is one `error:` line on stderr naming the culprit, exit code 2, no traceback,
nothing in the run directory; `--help` names the config groups; `--print_config` prints the resolved config;
keys under env.options can be set from the command line."""
import json
import os
import subprocess
import sys

import pytest

from tests.subprocess_env import REPO, job_env


def _run(module: str, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=job_env(), capture_output=True,
                          text=True, timeout=timeout)


def _assert_one_error_line(proc: subprocess.CompletedProcess, *culprits: str) -> str:
    """stderr is exactly one line, `error: ...` naming every culprit; exit code 2; returns the line."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    for culprit in culprits:
        assert culprit in lines[0], (culprit, lines[0])
    return lines[0]


def _assert_empty(run_dir) -> None:
    assert not os.path.exists(run_dir) or os.listdir(run_dir) == [], os.listdir(run_dir)


@pytest.fixture
def bad_rows(tmp_path):
    """A training file of the synthetic task whose line 1 is a sound problem and line 2 is not JSON."""
    path = tmp_path / "rows.jsonl"
    path.write_text('{"id": "a", "digits": "123", "ops": ["max"]}\n{"id": "b", "digits": \n')
    return str(path)


@pytest.mark.parametrize("case", ["typo", "bad_value", "bad_data_row", "missing_model"])
def test_main_bad_input_is_one_error_line_and_leaves_no_run_dir(case, tmp_path, bad_rows):
    """Invariant: `python -m sdpo_jax.main` with an override typo (the schema's "did you mean"), a value of the
    wrong type (the field's type and a value that works), a malformed data row (file:line, reported before the
    model is built) or a missing model directory prints exactly one stderr line `error: ...` naming the culprit,
    no traceback, exits 2, and the run directory is absent or empty."""
    run_dir = str(tmp_path / "run")
    args, culprits = {
        "typo": (["--config.loss.alpah=0.5"], ["loss.alpah", "Did you mean 'loss.alpha'?"]),
        "bad_value": (["--config.loss.alpha=abc"], ["--config.loss.alpha=abc", "loss.alpha is of type float"]),
        "bad_data_row": ([f"--config.data.train={bad_rows}", "--config.warm_start.steps=0"],
                         [f"{bad_rows}:2", "invalid JSON"]),
        "missing_model": (["--config.model.path=/nonexistent"], ["model.path", "/nonexistent", "does not exist"]),
    }[case]
    proc = _run("sdpo_jax.main", "--config=configs/demo.py", f"--config.run_dir={run_dir}", *args)
    _assert_one_error_line(proc, *culprits)
    _assert_empty(run_dir)


def test_ttt_typo_is_one_error_line(tmp_path):
    """Invariant: `python -m sdpo_jax.ttt` with an override typo prints one `error:` line with the "did you
    mean" for the ttt group, exits 2, and writes no run directory."""
    run_dir = str(tmp_path / "run")
    proc = _run("sdpo_jax.ttt", "--config=configs/ttt_demo.py", f"--config.run_dir={run_dir}", "--config.ttt.seedz=2")
    _assert_one_error_line(proc, "ttt.seedz", "Did you mean 'ttt.seeds'?")
    _assert_empty(run_dir)


@pytest.mark.parametrize("args,culprits", [
    (["--topology=v9-8"], ["--topology=v9-8", "v5p-64"]),
    (["--topology=v4-8", "--config.rollout.nn=2"], ["rollout.nn", "Did you mean 'rollout.n'?"]),
])
def test_aot_bad_input_is_one_error_line(args, culprits):
    """Invariant: `python -m sdpo_jax.tools.aot` with a bad topology, or an override typo, prints one `error:` line
    naming it (what would work: an accelerator type / the closest field) and exits 2."""
    _assert_one_error_line(_run("sdpo_jax.tools.aot", "--config=configs/demo.py", *args), *culprits)


def test_print_config_prints_the_resolved_config_and_builds_nothing(tmp_path):
    """Invariant: `--print_config` prints the whole config as JSON (the override's value, the demo file's values,
    base_config's defaults for fields the file leaves alone) and `env.options` keys set on the command line (new
    keys of the math env: two bools), exits 0, and creates no run directory."""
    from sdpo_jax import config as config_lib

    run_dir = str(tmp_path / "run")
    proc = _run("sdpo_jax.main", "--config=configs/demo.py", f"--config.run_dir={run_dir}", "--config.loss.alpha=0.25",
                "--config.env.name=math", "--config.env.options.feedback=True",
                "--config.env.options.correctness_feedback=False", "--print_config")
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = json.loads(proc.stdout)
    assert printed["loss"]["alpha"] == 0.25 and printed["run_dir"] == run_dir
    assert printed["env"]["options"] == {"feedback": True, "correctness_feedback": False}
    demo = __import__("configs.demo", fromlist=["get_config"]).get_config()
    assert printed["rollout"]["n"] == demo.rollout.n and "warm_start" in printed
    assert printed["optim"]["b2"] == config_lib.base_config().optim.b2
    assert not os.path.exists(run_dir)


def test_env_options_from_the_command_line_reach_the_environment():
    """Invariant: a key under env.options set on the command line is checked like one from the config file,
    against the keywords the environment's score() takes: a misspelt one is named in one `error:` line with the
    keywords that work (exit 2, at validation, before anything is built); a new key anywhere else is still
    refused with the "did you mean"."""
    _assert_one_error_line(_run("sdpo_jax.main", "--config.env.options.feedbak_style=positions", "--print_config"),
                           "env.options", "no option feedbak_style", "it takes feedback_style")
    _assert_one_error_line(_run("sdpo_jax.main", "--config.env.optoins.x=1", "--print_config"),
                           "env.optoins", "Did you mean 'env.options'?")


def test_help_lists_the_config_groups_and_print_config():
    """Invariant: `--help` exits 0 and lists every group of config.base_config() (with its fields), the optional
    warm_start and ttt groups, and the --print_config flag."""
    from sdpo_jax import config as config_lib

    proc = _run("sdpo_jax.main", "--help")
    assert proc.returncode == 0, proc.stderr[-3000:]
    base = config_lib.base_config()
    for group in [k for k, v in base.items() if hasattr(v, "keys")] + ["warm_start", "ttt"]:
        assert f"\n  {group}: " in proc.stdout, group
    assert "  loss: " + ", ".join(base.loss.keys()) in proc.stdout
    assert "--print_config" in proc.stdout


def test_every_listed_project_error_is_an_exception_class():
    """Invariant: every entry of cli.PROJECT_ERRORS names an existing exception class (in a fresh process: the
    tools define absl flags) with exit code 2, or 4 for the warm start's step cap."""
    code = ("import importlib, json; from sdpo_jax import cli; "
            "print(json.dumps({s: [issubclass(getattr(importlib.import_module(s.split(':')[0]), s.split(':')[1]), "
            "Exception), c] for s, c in cli.PROJECT_ERRORS.items()}))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=job_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout)
    assert len(found) >= 11 and "sdpo_jax.tokenizer:TokenizerError" in found
    for spec, (is_exception, exit_code) in found.items():
        assert is_exception and exit_code == (4 if spec.endswith("WarmStartError") else 2), spec
