"""Decode throughput of `sdpo_jax.sampling.generate` vs Hugging Face `generate(use_cache=True)`.

    python bench/decode.py --threads 1       # CPU: tiny Qwen2 vs transformers, B = 1, 8, 32
    python bench/decode.py --size qwen3-0.6b --batches 16,64 --prompt_len 256 \
        --new_tokens 256                      # GPU/TPU: no peer, bandwidth reached instead

Both sides sample (temperature 1, no top-k/top-p; 0 is greedy) exactly `--new_tokens` tokens per row after a
`--prompt_len` prompt (no stop ids), on the same weights, each alone in its own process: ours here, then
transformers in `bench/peers/hf_generate.py` (torch only, started once per batch after our timed calls; it also
writes the weights this process loads), so the two thread pools never compete; tokens/s counts new tokens over
the whole call (prefill included) for both, the median of `--repeats` calls per side. Prints
the ratios (wall and process CPU time: on a shared machine the CPU-time ratio is the steadier
one), the KV-cache bytes, the compiled decode program's memory, the compile time (first call minus
a steady call) and, without a peer, the memory bandwidth the decode loop reaches (weights + cache
read once per step).
`--size tiny` is the issue's tiny Qwen2 (4 layers, hidden 256, 4 heads / 2 KV heads, intermediate
1024, vocab 32000, tied); `--size qwen3-0.6b` a Qwen3-0.6B-shaped model with random weights.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if "--threads" in sys.argv:  # must reach XLA before jax starts: one intra-op thread per side
    _threads = int(sys.argv[sys.argv.index("--threads") + 1])
    if _threads == 1:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                   + " --xla_cpu_multi_thread_eigen=false"
                                   " intra_op_parallelism_threads=1").strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bench.peers import run_peer  # noqa: E402
from sdpo_jax import models, sampling  # noqa: E402

TINY_HF = dict(vocab_size=32000, hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
               tie_word_embeddings=True, pad_token_id=0, bos_token_id=1, eos_token_id=2)
QWEN3_06B = dict(model_type="qwen3", vocab_size=151936, hidden_size=1024, num_layers=28,
                 num_heads=16, num_kv_heads=8, head_dim=128, intermediate_size=3072,
                 qk_norm="per_head", rope_theta=1000000.0, tie_word_embeddings=True, pad_token_id=0)


def _timed(fn):
    """(wall seconds, process CPU seconds) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu




def _build(args, tmp):
    """(cfg, params): the tiny Qwen2's weights written by the peer's process into `tmp` and loaded here, or a
    Qwen3-0.6B-shaped random init."""
    if args.size == "tiny":
        run_peer("hf_generate.py", "save", "--dir", tmp, "--config_json", json.dumps(TINY_HF))
        return models.load_pretrained(tmp, dtype=args.dtype, compute_dtype=args.dtype)
    cfg = models.ModelConfig(**QWEN3_06B, param_dtype=args.dtype, compute_dtype=args.dtype)
    return cfg, jax.jit(models.init_params, static_argnums=0)(cfg, jax.random.key(0))


def _peer_times(args, tmp, prompts) -> tuple[float, float]:
    """(median wall s, median CPU s) of transformers' generate on `prompts`, in the peer's own process."""
    prompts_npy = os.path.join(tmp, "prompts.npy")
    np.save(prompts_npy, np.asarray(prompts, np.int64))
    extra = ["--threads", str(args.threads)] if args.threads else []
    out = json.loads(run_peer("hf_generate.py", "time", "--dir", tmp, "--prompts", prompts_npy, "--new_tokens",
                              str(args.new_tokens), "--temperature", str(args.temperature), "--repeats",
                              str(args.repeats), *extra))
    return out["wall_s"], out["cpu_s"]


def _decode_memory(cfg, params, batch, args):
    """The compiled decode program's memory analysis (the cache is its donated argument)."""
    ids = jnp.ones((batch, args.prompt_len), jnp.int32)
    spec = sampling.SamplingSpec(args.temperature, 0, 1.0)
    stop, pad, key = jnp.zeros((0,), jnp.int32), jnp.int32(0), jax.random.key(0)
    programs = sampling.SamplingPrograms(cfg)  # as generate runs them
    state = programs.prefill(spec, 1, args.new_tokens, jnp.dtype(args.dtype), params, ids, ids, stop, pad, key)
    return programs.decode.lower(spec, params, state, stop, pad, key).compile().memory_analysis()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=("tiny", "qwen3-0.6b"), default="tiny")
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--prompt_len", type=int, default=64)
    parser.add_argument("--new_tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--dtype", default=None, help="float32 (CPU default) or bfloat16 (else)")
    parser.add_argument("--no_hf", dest="hf", action="store_false",
                        help="skip the transformers peer")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for both sides (1: single-threaded XLA and torch; on a "
                             "shared, oversubscribed CPU torch's 2-thread pool runs ~10x slower)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per side (median)")
    args = parser.parse_args()
    backend = jax.default_backend()
    args.dtype = args.dtype or ("float32" if backend == "cpu" else "bfloat16")
    args.hf = args.hf and args.size == "tiny"

    print(f"machine: {platform.node()} {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, threads {args.threads or 'default'}, jax {jax.__version__} "
          f"backend={backend} "
          f"devices={[d.device_kind for d in jax.local_devices()][:1]}x{jax.local_device_count()}")
    with tempfile.TemporaryDirectory() as tmp:
        cfg, params = _build(args, tmp)
        param_bytes = sampling.tree_nbytes(params)["total"]
        print(f"model: {args.size} ({cfg.num_params / 1e6:.1f}M params, "
              f"{param_bytes / 2**20:.1f} MiB), dtype {args.dtype}, prompt {args.prompt_len}, "
              f"new tokens {args.new_tokens}, temperature {args.temperature}, median of "
              f"{args.repeats} timed calls per side, each side in its own process")
        rng = np.random.default_rng(0)
        for batch in [int(b) for b in args.batches.split(",")]:
            prompts = rng.integers(3, cfg.vocab_size, size=(batch, args.prompt_len)).tolist()
            _report_batch(args, tmp, cfg, params, param_bytes, batch, prompts)


def _report_batch(args, tmp, cfg, params, param_bytes, batch, prompts):
    """Time ours on `prompts` (and then the peer, in its own process) and print the batch's line."""
    calls = iter(range(10**6))

    def ours():
        out = sampling.generate(cfg, params, prompts, max_new_tokens=args.new_tokens,
                                temperature=args.temperature, eos_ids=[], n=1, rng=next(calls),
                                prompt_buckets=(args.prompt_len,), cache_dtype=args.dtype)
        assert out.tokens.shape == (batch, args.new_tokens)
        assert out.lengths.min() == args.new_tokens

    first, _ = _timed(ours)
    ours_times = [_timed(ours) for _ in range(args.repeats)]
    peer = _peer_times(args, tmp, prompts) if args.hf else None
    t_ours, c_ours = (statistics.median(x) for x in zip(*ours_times))
    new_tokens = batch * args.new_tokens
    slots = args.prompt_len + args.new_tokens
    cache_bytes = 2 * cfg.num_layers * batch * slots * cfg.num_kv_heads * cfg.head_dim \
        * jnp.dtype(args.dtype).itemsize
    mem = _decode_memory(cfg, params, batch, args)
    line = (f"B={batch:3d}  sdpo_jax {new_tokens / t_ours:8.1f} tok/s ({t_ours:.3f} s wall, "
            f"{c_ours:.3f} s cpu)  compile {first - t_ours:.2f} s  kv-cache "
            f"{cache_bytes / 2**20:.2f} MiB  decode program: args "
            f"{mem.argument_size_in_bytes / 2**20:.1f} MiB, temp "
            f"{mem.temp_size_in_bytes / 2**20:.2f} MiB, aliased "
            f"{mem.alias_size_in_bytes / 2**20:.1f} MiB")
    if peer is not None:
        t_hf, c_hf = peer
        line += (f"\n        transformers {new_tokens / t_hf:8.1f} tok/s ({t_hf:.3f} s wall, "
                 f"{c_hf:.3f} s cpu)  ratio {t_hf / t_ours:.2f}x wall, "
                 f"{c_hf / c_ours:.2f}x cpu time")
    else:  # decode is memory bound: weights + the cache are read once per step
        per_step = param_bytes + cache_bytes
        line += (f"  | ~{per_step * args.new_tokens / t_ours / 1e9:.0f} GB/s "
                 f"(weights + cache read per step)")
    print(line, flush=True)


if __name__ == "__main__":
    main()
