"""The benchmarks' peers run alone in their own process: bench/peers/hf_generate.py and hf_forward.py write the
weights the JAX side loads and time transformers' generate / forward without JAX in their process."""
import json
import os
import subprocess
import sys

import numpy as np

from tests.subprocess_env import REPO, job_env

PEERS = os.path.join(REPO, "bench", "peers")
TINY = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
            num_key_value_heads=1, max_position_embeddings=64, tie_word_embeddings=True, pad_token_id=0)


def _peer(script, *arguments):
    proc = subprocess.run([sys.executable, os.path.join(PEERS, script), *arguments], cwd=REPO, env=job_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_the_decode_peer_times_generate_without_jax_in_its_process(tmp_path):
    """`save` writes a Hugging Face directory our loader reads (same vocabulary and layers); `time` runs the
    requested number of calls on the given prompts, greedy and sampled, and reports that JAX was never imported
    into its process."""
    from sdpo_jax import models

    _peer("hf_generate.py", "save", "--dir", str(tmp_path), "--config_json", json.dumps(TINY))
    cfg, _ = models.load_pretrained(str(tmp_path))
    assert (cfg.vocab_size, cfg.num_layers) == (128, 1)
    prompts = tmp_path / "prompts.npy"
    np.save(prompts, np.arange(3, 19, dtype=np.int64).reshape(2, 8))
    for temperature in ("0", "1.0"):
        out = json.loads(_peer("hf_generate.py", "time", "--dir", str(tmp_path), "--prompts", str(prompts),
                               "--new_tokens", "4", "--temperature", temperature, "--repeats", "2", "--threads", "1"))
        assert out["calls"] == 2 and out["wall_s"] > 0 and out["cpu_s"] > 0
        assert out["jax_loaded"] is False


def test_the_forward_peer_times_the_forward_without_jax_and_saves_its_check_logits(tmp_path):
    """`bench/peers/hf_forward.py`: `save` writes a directory our loader reads; `time` reports a positive median
    over the requested calls, that JAX was never imported into its process, and saves the [1, 64, V] logits our
    forward equals to 1e-4 on the same weights (the check bench/forward.py prints)."""
    import jax.numpy as jnp

    from sdpo_jax import models

    config = {"model_type": "qwen2", **{k: v for k, v in TINY.items() if k != "pad_token_id"}}
    _peer("hf_forward.py", "save", "--dir", str(tmp_path), "--config_json", json.dumps(config), "--dtype",
          "float32")
    cfg, params = models.load_pretrained(str(tmp_path))
    ids = np.random.default_rng(0).integers(0, 128, (2, 64)).astype(np.int64)
    np.save(tmp_path / "ids.npy", ids)
    check = tmp_path / "check.npy"
    out = json.loads(_peer("hf_forward.py", "time", "--dir", str(tmp_path), "--ids", str(tmp_path / "ids.npy"),
                           "--iters", "2", "--check_out", str(check)))
    assert out["median_s"] > 0 and out["device"] == "cpu" and out["jax_loaded"] is False
    ours = models.forward(cfg, params, jnp.asarray(ids[:1]), jnp.ones((1, 64), bool))
    np.testing.assert_allclose(np.asarray(ours), np.load(check), atol=1e-4)
