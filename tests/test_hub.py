"""Model and tokenizer sources (sdpo_jax/hub.py): tokenizer.path's default, the vocabulary checks, hub ids.

The checks read config.json and tokenizer files only, so most model directories here hold a config.json and
no weights; the command-line tests use a tiny saved model (tests/hf_tiny.py)."""

import json
import os
import subprocess
import sys

import pytest

import configs.demo
from sdpo_jax import config as config_lib
from sdpo_jax import hub, setup
from sdpo_jax.tokenizer import build_demo_tokenizer
from tests.subprocess_env import REPO, job_env


def _model_dir(path, vocab_size: int, tokenizer_vocab: int | None = None) -> str:
    """A model directory with a config.json of `vocab_size` (no weights) and, when given, a demo tokenizer
    of `tokenizer_vocab` tokens saved beside it (as an exported run of ours ships it)."""
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump({"model_type": "qwen3", "vocab_size": vocab_size}, f)
    if tokenizer_vocab is not None:
        build_demo_tokenizer(str(path), vocab_size=tokenizer_vocab)
    return str(path)


def _cfg(model_path=None, tokenizer_path=None, revision=None):
    cfg = configs.demo.get_config()
    cfg.model.path, cfg.tokenizer.path, cfg.model.revision = model_path, tokenizer_path, revision
    return cfg


# ------------------------------------------------------------------------------------ refusals


def test_a_token_id_without_an_embedding_row_is_refused_naming_both_sizes(tmp_path):
    """The demo tokenizer (ids 0..511) with a model of vocab_size 256 is refused at set-up, naming the
    tokenizer's largest id, the model's vocab_size and both fields."""
    model = _model_dir(tmp_path / "m", 256)
    with pytest.raises(hub.SourceError) as err:
        setup.checked_tokenizer(_cfg(model, "demo"))
    message = str(err.value)
    for needle in ("largest id is 511", "512 tokens", "vocab_size is 256", "tokenizer.path='demo'", f"model.path={model!r}"):
        assert needle in message, (needle, message)


def test_check_vocabulary_false_skips_the_checks(tmp_path):
    """tokenizer.check_vocabulary=False (the benchmark's random weights at a real model's shape) loads the demo
    tokenizer beside a model whose vocab_size it does not fit; the default refuses the same pair."""
    model = _model_dir(tmp_path / "m", 151_936)
    cfg = _cfg(model, "demo")
    with pytest.raises(hub.SourceError, match="151936"):
        setup.checked_tokenizer(cfg)
    cfg.tokenizer.check_vocabulary = False
    model_dir, tokenizer = setup.checked_tokenizer(cfg)
    assert model_dir == model and len(tokenizer) == 512


def test_more_padding_rows_than_allowed_is_refused():
    """A model with more than max(1024, 1 % of vocab_size) rows beyond the tokenizer is refused naming both
    sizes; exactly the allowance passes (the bound is inclusive)."""
    hub.check_vocab_sizes(511, 512 + 1024, model_path="m", tokenizer_path="t")
    with pytest.raises(hub.SourceError, match=r"vocab_size 1537 has 1025 embedding rows beyond the tokenizer's "
                                                     r"512 tokens .* = 1024"):
        hub.check_vocab_sizes(511, 512 + 1025, model_path="m", tokenizer_path="t")
    hub.check_vocab_sizes(200_000 - 2001, 200_000, model_path="m", tokenizer_path="t")  # 2,000 = 1 % of 200,000
    with pytest.raises(hub.SourceError, match=r"has 2001 embedding rows .* = 2000"):
        hub.check_vocab_sizes(200_000 - 2002, 200_000, model_path="m", tokenizer_path="t")


def test_another_tokenizer_than_the_one_the_model_ships_is_refused(tmp_path):
    """tokenizer.path naming a tokenizer whose sizes fit but whose vocabulary differs from the one the model
    directory ships is refused naming both fields; a copy of the shipped tokenizer elsewhere is accepted."""
    model = _model_dir(tmp_path / "m", 320, tokenizer_vocab=300)
    other = str(tmp_path / "other")
    build_demo_tokenizer(other, vocab_size=310)
    with pytest.raises(hub.SourceError, match=r"tokenizer.path=.*other' \(310 tokens\) differs from the tokenizer "
                                                     r"that model.path=.* ships \(300 tokens"):
        setup.checked_tokenizer(_cfg(model, other))
    copy = str(tmp_path / "copy")
    build_demo_tokenizer(copy, vocab_size=300)
    model_dir, tokenizer = setup.checked_tokenizer(_cfg(model, copy))
    assert model_dir == model and len(tokenizer) == 300


def test_a_model_without_a_tokenizer_needs_tokenizer_path(tmp_path):
    """model.path without tokenizer files and tokenizer.path unset is refused, saying tokenizer.path defaulted
    to the model directory and what to set."""
    model = _model_dir(tmp_path / "m", 512)
    with pytest.raises(hub.SourceError, match=r"tokenizer.path=.*\(unset: the model directory\) holds none of "
                                              r"tokenizer.json.*set --config.tokenizer.path"):
        setup.checked_tokenizer(_cfg(model))


# ------------------------------------------------------------------------------------ acceptances


def test_qwen3_style_padding_is_accepted():
    """Qwen3-0.6B: 151,669 tokens (largest id 151,668) in 151,936 embedding rows passes the size checks."""
    hub.check_vocab_sizes(151_668, 151_936, model_path="Qwen/Qwen3-0.6B", tokenizer_path="Qwen/Qwen3-0.6B")


def test_our_rounding_to_64_is_accepted(tmp_path):
    """A random init rounds the tokenizer's 300 tokens up to 320 rows (setup.build_model); that model exported
    with its tokenizer loads with tokenizer.path unset and passes the checks."""
    cfg = _cfg(None, str(tmp_path / "tok"))
    tokenizer = build_demo_tokenizer(str(tmp_path / "tok"), vocab_size=300)
    mesh = setup.make_run_mesh(cfg)
    model_cfg, _ = setup.build_model(cfg, tokenizer, mesh)
    assert model_cfg.vocab_size == 320
    model = _model_dir(tmp_path / "exported", model_cfg.vocab_size, tokenizer_vocab=300)
    model_dir, loaded = setup.checked_tokenizer(_cfg(model))
    assert model_dir == model and len(loaded) == 300


def test_tokenizer_path_defaults_to_the_model_directory(tmp_path):
    """tokenizer.path unset: the model's directory when model.path is set (set-up loads the tokenizer it ships),
    else the built-in "demo"; a tokenizer.path that is set wins."""
    model = _model_dir(tmp_path / "m", 320, tokenizer_vocab=300)
    assert config_lib.tokenizer_path(_cfg()) == "demo"
    assert config_lib.tokenizer_path(_cfg(model)) == model
    assert config_lib.tokenizer_path(_cfg(model, "elsewhere")) == "elsewhere"
    assert config_lib.base_config().tokenizer.path is None
    _, tokenizer = setup.checked_tokenizer(_cfg(model))
    assert len(tokenizer) == 300  # the model's tokenizer, not the 512-token demo one
    model_dir, demo = setup.checked_tokenizer(_cfg())
    assert model_dir is None and len(demo) == 512


# ------------------------------------------------------------------------------------ hub ids


def test_validate_accepts_hub_ids_and_names_what_is_neither(tmp_path):
    """validate() takes an owner/name model.path as a hub id (fetched at set-up) and refuses a path that is
    neither local nor a hub id, naming the field."""
    config_lib.validate(_cfg("Qwen/Qwen3-0.6B", revision="main"))
    assert hub.is_hub_id("Qwen/Qwen3-0.6B") and not hub.is_hub_id(str(tmp_path))
    with pytest.raises(config_lib.ConfigError, match=r"model.path='./no/model' does not exist and is not a hub id"):
        config_lib.validate(_cfg("./no/model"))


def test_a_hub_id_resolves_through_snapshot_download(tmp_path, monkeypatch):
    """model.path=owner/name resolves to snapshot_download's directory, called once (the unset tokenizer.path
    names the same repository) with model.revision and HF_TOKEN passed through; the tokenizer is the one there."""
    import huggingface_hub

    fixture = _model_dir(tmp_path / "snapshot", 320, tokenizer_vocab=300)
    calls = []

    def fake_snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return fixture

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    model_dir, tokenizer = setup.checked_tokenizer(_cfg("someone/tiny-model", revision="abc123"))
    assert model_dir == fixture and len(tokenizer) == 300
    assert calls == [("someone/tiny-model", {"revision": "abc123", "token": "hf_secret", "local_files_only": False})]


def test_offline_a_hub_id_outside_the_cache_says_how_to_fetch_it(tmp_path, monkeypatch):
    """With HF_HUB_OFFLINE and an empty HF cache, the real snapshot_download fails and the error names the
    field and the id, and says how to fetch it (hf download ..., or unset HF_HUB_OFFLINE)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    with pytest.raises(hub.SourceError) as err:
        setup.checked_tokenizer(_cfg("Qwen/Qwen3-0.6B"))
    message = str(err.value)
    for needle in ("model.path='Qwen/Qwen3-0.6B'", "HF_HUB_OFFLINE=1", "hf download Qwen/Qwen3-0.6B", "unset HF_HUB_OFFLINE"):
        assert needle in message, (needle, message)


def test_a_failed_download_is_one_error_naming_the_id(monkeypatch):
    """Online, a hub client failure (e.g. a gated or missing repository) becomes one SourceError naming the
    field, the id at its revision and the exception, with what to try."""
    import huggingface_hub
    from huggingface_hub import constants

    def refuse(repo_id, **kwargs):
        raise OSError("401 Client Error: gated repo\nmore detail")

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", refuse)
    with pytest.raises(hub.SourceError, match=r"model.path='meta-llama/x' .*downloading meta-llama/x@v1 .*failed "
                                              r"\(OSError: 401 Client Error: gated repo\); .*HF_TOKEN"):
        setup.checked_tokenizer(_cfg("meta-llama/x", revision="v1"))


def test_on_several_processes_the_first_of_a_host_downloads_and_the_others_wait(monkeypatch):
    """Process 1 on the same host as process 0 does not download: after the gather (which waits for process
    0) it reads the cache (local_files_only); a failure on process 0 is raised on process 1 too."""
    calls, gathered = [], []

    def fake_download(repo_id, *, field, revision=None, local_files_only=False):
        calls.append(local_files_only)
        return "/cache/snapshot"

    def fake_gather(values):
        gathered.append(values)
        return ["host-a", "host-a"] if len(gathered) % 2 else [process0_failure, values[0]]

    monkeypatch.setattr(hub.jax, "process_count", lambda: 2)
    monkeypatch.setattr(hub.jax, "process_index", lambda: 1)
    monkeypatch.setattr(hub.socket, "gethostname", lambda: "host-a")
    monkeypatch.setattr(hub.sharding, "gather_objects", fake_gather)
    monkeypatch.setattr(hub, "download", fake_download)
    process0_failure = None
    assert hub.fetch("o/n", field="model.path") == "/cache/snapshot"
    assert calls == [True] and gathered[1] == [None]
    process0_failure = "config: model.path='o/n' ... failed"
    with pytest.raises(hub.SourceError, match=r"model.path='o/n' \.\.\. failed"):
        hub.fetch("o/n", field="model.path")
    assert calls == [True]


# ------------------------------------------------------------------------------------ as a user runs it


def _run_main(tmp_path, *overrides, **env):
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "sdpo_jax.main", "--config=configs/demo.py",
                           f"--config.run_dir={run_dir}", *overrides],
                          cwd=REPO, env=job_env(**env), capture_output=True, text=True, timeout=300)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(errors) == 1 and "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
    assert not run_dir.exists()
    return errors[0]


def test_the_command_line_refuses_a_vocabulary_mismatch_and_a_missing_model(tmp_path):
    """`python -m sdpo_jax.main` (HF_HUB_OFFLINE=1) with a tiny Qwen3 (vocab 256) and the demo tokenizer, with a
    missing local model, and with a hub id outside the cache: exit code 2, one `error:` line naming the sizes /
    the path / how to fetch it, no traceback, no run directory."""
    from tests.hf_tiny import tiny_model_dir

    model = tiny_model_dir(tmp_path, "qwen3")
    line = _run_main(tmp_path, f"--config.model.path={model}", "--config.tokenizer.path=demo")
    assert "largest id is 511" in line and "vocab_size is 256" in line and "model.path=" in line, line
    line = _run_main(tmp_path, f"--config.model.path={tmp_path / 'no_model'}")
    assert "model.path=" in line and "no_model' does not exist" in line, line
    line = _run_main(tmp_path, "--config.model.path=Qwen/Qwen3-0.6B", HF_HUB_CACHE=str(tmp_path / "empty_cache"))
    assert "model.path='Qwen/Qwen3-0.6B'" in line and "hf download Qwen/Qwen3-0.6B" in line, line
