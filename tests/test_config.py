"""Config schema and validate(): every mistake is named before anything heavy starts."""
import functools
import os
import subprocess
import sys

import pytest

from sdpo_jax import config as config_lib


def _demo():
    from configs import demo

    return demo.get_config()


def test_demo_and_paper_configs_validate():
    """Invariant: every shipped training config passes validate() (test-time configs add a `ttt`
    group and are checked by tests/test_ttt.py; paper_common holds shared settings, no experiment)."""
    import importlib
    import pathlib

    names = sorted(p.stem for p in pathlib.Path("configs").glob("*.py") if p.stem not in ("__init__", "paper_common") and not p.stem.startswith("ttt"))
    assert "demo" in names
    for name in names:
        cfg = importlib.import_module(f"configs.{name}").get_config()
        config_lib.validate(cfg, num_devices=1)


def test_unknown_key_is_named():
    """Invariant: a key the schema lacks is rejected with its dotted name and a suggestion."""
    cfg = _demo()
    with cfg.unlocked():
        cfg.loss.temprature = 1.0
    with pytest.raises(config_lib.ConfigError, match=r"unknown key 'loss.temprature'"):
        config_lib.validate(cfg)


def test_wrong_type_is_named():
    """Invariant: a field of the wrong type names the field, the expected and the given type."""
    cfg = _demo()
    with cfg.unlocked():
        del cfg.rollout["n"]
        cfg.rollout.n = "eight"
    with pytest.raises(config_lib.ConfigError, match=r"'rollout.n' must be int, got str"):
        config_lib.validate(cfg)


@pytest.mark.parametrize("field,value,message", [
    ("loss.mode", "logits", r"loss.mode='logits' is not one of"),
    ("loss.alpha", 1.5, r"loss.alpha=1.5 must be in \[0, 1\]"),
    ("rollout.top_p", 0.0, r"rollout.top_p=0.0 must be in"),
    ("teacher.kind", "student", r"teacher.kind='student' is not one of"),
    ("model.init.model_type", "gemma2", r"model.init.model_type='gemma2' is not one of \[.*'olmo3'"),
    ("checkpoint.keep_best_metric", "loss", r"checkpoint.keep_best_metric='loss' needs an evaluation metric"),
    ("checkpoint.keep_best_mode", "best", r"checkpoint.keep_best_mode='best' is not one of \['max', 'min'\]"),
    ("logging.samples_every", -1, r"logging.samples_every=-1 must be >= 0"),
])
def test_bad_values_are_named(field, value, message):
    """Invariant: out-of-range and unknown-choice values are rejected naming the field."""
    cfg = _demo()
    *groups, name = field.split(".")
    functools.reduce(lambda node, group: node[group], groups, cfg)[name] = value
    with pytest.raises(config_lib.ConfigError, match=message):
        config_lib.validate(cfg)


def test_token_mode_requires_reverse_kl():
    """Invariant: the sampled-token surrogate exists only for alpha = 1."""
    cfg = _demo()
    cfg.loss.mode, cfg.loss.alpha = "token", 0.5
    with pytest.raises(config_lib.ConfigError, match="needs loss.alpha=1.0"):
        config_lib.validate(cfg)


def test_default_mesh_takes_as_many_fsdp_shards_as_a_minibatch_has_rows():
    """Invariant: the default mesh (fsdp over every device) on more devices than divide a mini-batch's rows
    takes gcd(rows, devices) fsdp shards and the rest on tensor (LCB: 8 rows on 32 devices -> fsdp 8 x tensor
    4, no padding rows); an explicit mesh, or rows the devices divide, are kept as they are."""
    cfg = _demo()
    cfg.data.prompts_per_step, cfg.rollout.n, cfg.optim.minibatch_prompts = 32, 8, 1
    assert config_lib.resolve_mesh_sizes(cfg, 32) == {"data": 1, "fsdp": 8, "tensor": 4}
    assert config_lib.resolve_mesh_sizes(cfg, 8) == {"data": 1, "fsdp": 8, "tensor": 1}
    cfg.mesh.tensor = 2
    assert config_lib.resolve_mesh_sizes(cfg, 32) == {"data": 1, "fsdp": 16, "tensor": 2}


def test_batch_not_divisible_by_data_axes():
    """Invariant: a generation batch that cannot split over mesh.data x mesh.fsdp is named with both."""
    cfg = _demo()
    cfg.mesh.data, cfg.mesh.fsdp = 2, -1
    cfg.data.prompts_per_step, cfg.rollout.n = 3, 3
    with pytest.raises(config_lib.ConfigError, match=r"9 rows does not divide over the data-parallel axes .* = 8"):
        config_lib.validate(cfg, num_devices=8)
    cfg.mesh.data, cfg.mesh.fsdp = 1, 3
    with pytest.raises(config_lib.ConfigError, match=r"needs 3 devices, but there are 8"):
        config_lib.validate(cfg, num_devices=8)


def test_missing_paths_are_named(tmp_path):
    """Invariant: a checkpoint or model path that does not exist is rejected before anything starts."""
    cfg = _demo()
    cfg.checkpoint.resume_from = str(tmp_path / "nope")
    with pytest.raises(config_lib.ConfigError, match=r"checkpoint.resume_from=.*nope' does not exist"):
        config_lib.validate(cfg)
    cfg = _demo()
    cfg.model.path = str(tmp_path / "no_model")
    with pytest.raises(config_lib.ConfigError, match=r"model.path=.*does not exist"):
        config_lib.validate(cfg)


def test_main_reports_config_errors_before_starting():
    """Invariant: `python -m sdpo_jax.main` with a bad override exits non-zero with a clear message,
    without building a model (it returns in well under the time a model build takes)."""
    bad = [
        (["--config.loss.mode=logits"], "loss.mode='logits' is not one of"),
        (["--config.loss.modee=topk"], "modee"),
        (["--config.rollout.n=eight"], "rollout.n"),
        (["--config.checkpoint.resume_from=/does/not/exist"], "does not exist"),
    ]
    for args, needle in bad:
        proc = subprocess.run([sys.executable, "-m", "sdpo_jax.main", "--config=configs/demo.py", *args],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode != 0, args
        assert needle in proc.stderr + proc.stdout, (args, proc.stderr[-2000:])


def test_main_on_a_cpu_host_with_libtpu_starts_quietly_on_the_cpu(tmp_path):
    """Invariant: with libtpu installed (requirements-tpu-aot.txt, part of the test venv) and JAX_PLATFORMS
    unset, `python -m sdpo_jax.main` on a host without TPU chips or GPUs runs on the CPU and prints none of
    libtpu's start-up errors (it sets JAX_PLATFORMS=cpu before jax is imported)."""
    import importlib.util

    assert importlib.util.find_spec("libtpu") is not None, "the test venv installs libtpu (requirements-tpu-aot.txt)"
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    proc = subprocess.run([sys.executable, "-m", "sdpo_jax.main", "--config=configs/demo.py",
                           f"--config.run_dir={tmp_path}", "--config.warm_start.steps=0", "--config.train.steps=1",
                           "--config.eval.every=0", "--config.logging.plot=False", "--config.logging.progress_bar=False",
                           "--config.checkpoint.export_hf_at_end=False", "--config.checkpoint.at_end=False",
                           "--config.model.init.num_layers=1", "--config.rollout.max_new_tokens=4"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert " on cpu (" in proc.stdout  # platform_line: "JAX <version> on cpu (N devices)"
    for noise in ("TPU_ACCELERATOR_TYPE", "TPU_WORKER_HOSTNAMES", "libtpu", "InitGoogle"):
        assert noise not in proc.stdout + proc.stderr, noise


def test_env_options_reach_every_score_call_and_unknown_ones_are_named():
    """`env.options` from the config are passed to every `env.score` call by the scorer pool that
    `setup.build_actor` makes; an option the env's score() does not take fails at set-up, naming it."""
    from configs import demo
    from sdpo_jax import setup

    cfg = demo.get_config()
    cfg.model.init.update(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16,
                          intermediate_size=64)
    cfg.env.options = {"feedback_style": "positions"}
    config_lib.validate(cfg)  # option names are free-form here; build_actor checks them against score()
    problem = {"id": "p", "digits": "123", "ops": ["reverse"], "answer": "321"}
    actor, _, close = setup.build_actor(cfg)
    try:
        [score], _ = actor.scorer([problem], ["329"], [False])
    finally:
        close()
    assert score.reward == 0.0 and "Position 3 should be 1" in score.feedback, score.feedback

    cfg.env.options = {"feedback_styel": "positions"}
    with pytest.raises(ValueError, match="feedback_styel"):
        setup.build_actor(cfg)


def test_installed_package_without_configs_asks_for_a_config_path(tmp_path):
    """Installed from a wheel (no configs/ beside the package), `python -m sdpo_jax.main` (and
    `sdpo_jax.ttt`) with no --config exits 2 with a message that says to pass --config, instead of a traceback."""
    import shutil

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    shutil.copytree(os.path.join(repo, "sdpo_jax"), tmp_path / "sdpo_jax",
                    ignore=shutil.ignore_patterns("__pycache__"))
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    for module in ("sdpo_jax.main", "sdpo_jax.ttt"):
        proc = subprocess.run([sys.executable, "-m", module], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 2, module + proc.stdout + proc.stderr
        assert "pass --config=" in proc.stderr and "Traceback" not in proc.stderr, module + proc.stderr


def test_the_command_lines_import_as_modules():
    """`sdpo_jax.main` and `sdpo_jax.ttt.__main__` import as plain modules (each in its own process: both define
    absl's --config) and expose main / entry, so a launcher or a notebook can call them."""
    for module in ("sdpo_jax.main", "sdpo_jax.ttt.__main__"):
        proc = subprocess.run([sys.executable, "-c", f"import {module} as m; print(callable(m.main), callable(m.entry))"],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and proc.stdout.split() == ["True", "True"], module + proc.stdout + proc.stderr
