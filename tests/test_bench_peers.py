"""The benchmarks' peers run alone in their own process: bench/peers/hf_generate.py writes the weights the JAX
side loads and times transformers' generate without JAX in its process."""
import json
import os
import subprocess
import sys

import numpy as np

from tests.subprocess_env import REPO, job_env

PEER = os.path.join(REPO, "bench", "peers", "hf_generate.py")
TINY = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
            num_key_value_heads=1, max_position_embeddings=64, tie_word_embeddings=True, pad_token_id=0)


def _peer(*arguments):
    proc = subprocess.run([sys.executable, PEER, *arguments], cwd=REPO, env=job_env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_the_decode_peer_times_generate_without_jax_in_its_process(tmp_path):
    """`save` writes a Hugging Face directory our loader reads (same vocabulary and layers); `time` runs the
    requested number of calls on the given prompts, greedy and sampled, and reports that JAX was never imported
    into its process."""
    from sdpo_jax import models

    _peer("save", "--dir", str(tmp_path), "--config_json", json.dumps(TINY))
    cfg, _ = models.load_pretrained(str(tmp_path))
    assert (cfg.vocab_size, cfg.num_layers) == (128, 1)
    prompts = tmp_path / "prompts.npy"
    np.save(prompts, np.arange(3, 19, dtype=np.int64).reshape(2, 8))
    for temperature in ("0", "1.0"):
        out = json.loads(_peer("time", "--dir", str(tmp_path), "--prompts", str(prompts), "--new_tokens", "4",
                               "--temperature", temperature, "--repeats", "2", "--threads", "1"))
        assert out["calls"] == 2 and out["wall_s"] > 0 and out["cpu_s"] > 0
        assert out["jax_loaded"] is False
