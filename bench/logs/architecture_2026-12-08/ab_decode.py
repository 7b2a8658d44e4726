# run: copy 8ef65db's sdpo_jax/ to /tmp/ab/sdpo_jax_before, rename its imports (sed s/\bsdpo_jax\b/sdpo_jax_before/g), then
# cd /tmp/ab && HF_HUB_OFFLINE=1 python ab_decode.py  (paths inside: /tmp/ab, /work/main)
"""In-process A/B of sampling.generate: 8ef65db's package (renamed sdpo_jax_before) vs the working tree's, the same
weights and prompts, calls alternating (old, new, old, new, ...), median and min wall time per batch size."""
import os, sys, time, statistics, tempfile
sys.path.insert(0, "/tmp/ab"); sys.path.insert(0, "/work/main")
import jax, numpy as np
import sdpo_jax_before.sampling as old_sampling
import sdpo_jax.sampling as new_sampling
from sdpo_jax import models
import torch, transformers
sys.argv = [sys.argv[0]]
sys.path.insert(0, "/work/main/bench")
from decode import TINY_HF
rounds = int(os.environ.get("ROUNDS", 15))
with tempfile.TemporaryDirectory() as tmp:
    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(transformers.Qwen2Config(**TINY_HF)).float().eval()
    hf.save_pretrained(tmp)
    cfg, params = models.load_pretrained(tmp, dtype="float32", compute_dtype="float32")
del torch, hf
rng = np.random.default_rng(0)
print("jax", jax.__version__, "rounds", rounds)
for batch in (1, 8, 32):
    prompts = rng.integers(3, cfg.vocab_size, size=(batch, 64)).tolist()
    def call(mod):
        start = time.perf_counter()
        out = mod.generate(cfg, params, prompts, max_new_tokens=128, temperature=0.0, eos_ids=[], n=1, rng=0,
                           prompt_buckets=(64,), cache_dtype="float32")
        assert out.tokens.shape == (batch, 128)
        return time.perf_counter() - start, out.tokens
    _, t_old = call(old_sampling); _, t_new = call(new_sampling)
    assert np.array_equal(t_old, t_new)
    times = {"before": [], "after": []}
    for r in range(rounds):
        order = (("before", old_sampling), ("after", new_sampling)) if r % 2 == 0 else (("after", new_sampling), ("before", old_sampling))
        for name, mod in order:
            times[name].append(call(mod)[0])
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"B={batch:3d} tokens equal; wall median before {med['before']:.4f} s after {med['after']:.4f} s "
          f"after/before {med['after'] / med['before']:.3f}; min before {min(times['before']):.4f} after "
          f"{min(times['after']):.4f}; tok/s after {batch * 128 / med['after']:.0f}", flush=True)
