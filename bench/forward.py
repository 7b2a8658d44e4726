"""Forward throughput of `sdpo_jax.models.forward` against Hugging Face transformers (PyTorch).

    python bench/forward.py                                        # CPU: the issue's tiny Qwen2
    python bench/forward.py --size qwen3-0.6b --batch 8 --seq 2048 --attention cudnn   # GPU

Both sides run the same weights (a random HF model saved to a temp dir by the peer's process, loaded by
`load_pretrained`) on the same [batch, seq] token block with a full attention mask, each alone in its own
process: ours here, then transformers in `bench/peers/hf_forward.py` (torch only), `--iters` timed calls each
after a warm-up; tokens/s = batch*seq / median forward time (logits included, no gradient). Prints the
ratio ours/peer, the compiled forward's `memory_analysis()`, the compile time, and model FLOPs
utilisation (MFU) where the peak is known (GPU/TPU, or --peak_tflops).

`--size tiny`: 4 layers, hidden 256, 4 heads / 2 KV heads, intermediate 1024, vocab 32000, untied.
`--size qwen3-0.6b`: Qwen3-0.6B-shaped (28 layers, hidden 1024, 16/8 heads, head_dim 128,
intermediate 3072, vocab 151936, tied), random weights, bf16 params and compute by default.
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

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bench.peers import run_peer  # noqa: E402
from sdpo_jax import models  # noqa: E402

SIZES = {
    "tiny": dict(model_type="qwen2", vocab_size=32000, hidden_size=256, intermediate_size=1024,
                 num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                 tie_word_embeddings=False, max_position_embeddings=4096),
    "qwen3-0.6b": dict(model_type="qwen3", vocab_size=151936, hidden_size=1024,
                       intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                       num_key_value_heads=8, head_dim=128, tie_word_embeddings=True,
                       rope_theta=1000000.0, max_position_embeddings=40960),
}
# dense bf16 peak FLOP/s per chip, by a substring of the device kind
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L4": 121e12, "TPU v4": 275e12,
             "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12, "TPU v5": 459e12,
             "TPU v6": 918e12}


def model_flops_per_token(cfg: models.ModelConfig, seq: int) -> float:
    """Forward FLOPs per token: 2 x matmul params (incl. the LM head) + causal attention."""
    d, n, k, h, f = (cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
                     cfg.intermediate_size)
    per_layer = d * h * (2 * n + 2 * k) + 3 * d * f
    matmul = 2 * (cfg.num_layers * per_layer + d * cfg.vocab_size)
    attention = cfg.num_layers * 2 * n * h * seq  # QK^T and PV over seq/2 keys on average
    return matmul + attention




def timed(fn, iters: int) -> list[float]:
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", choices=sorted(SIZES), default="tiny")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--dtype", default=None, help="params and compute (default: float32 on CPU "
                                                  "for tiny, else bfloat16)")
    ap.add_argument("--attention", default="plain", help="plain | blockwise | cudnn | splash")
    ap.add_argument("--block", type=int, default=512, help="blockwise attention block size")
    ap.add_argument("--scan", action="store_true", help="lax.scan over layers")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--no_peer", action="store_true", help="skip the PyTorch peer")
    ap.add_argument("--peak_tflops", type=float, default=None, help="per-device bf16 peak")
    args = ap.parse_args()

    platform_name = jax.devices()[0].platform
    dtype = args.dtype or ("float32" if args.size == "tiny" and platform_name == "cpu"
                           else "bfloat16")
    tmp = None
    if args.no_peer:  # random init straight in JAX
        cfg = models.config_from_hf(dict(SIZES[args.size]), param_dtype=dtype)
        params = models.init_params(cfg, jax.random.key(0))
    else:  # a random HF model saved by the peer's process, loaded by us: both sides hold the same weights
        tmp = tempfile.mkdtemp(prefix="bench_forward_")
        run_peer("hf_forward.py", "save", "--dir", tmp, "--config_json", json.dumps(SIZES[args.size]), "--dtype", dtype)
        cfg, params = models.load_pretrained(tmp, dtype=dtype)
    cfg = cfg.replace(compute_dtype=dtype, attention_impl=args.attention,
                      attention_block_size=args.block, scan_layers=args.scan)

    rng = np.random.default_rng(0)
    ids = rng.integers(0, cfg.vocab_size, (args.batch, args.seq)).astype(np.int32)
    mask = np.ones_like(ids, dtype=bool)
    ids_j, mask_j = jnp.asarray(ids), jnp.asarray(mask)

    fwd = jax.jit(lambda p, i, m: models.forward(cfg, p, i, m))
    t0 = time.perf_counter()
    compiled = fwd.lower(params, ids_j, mask_j).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    jax.block_until_ready(compiled(params, ids_j, mask_j))  # warm-up

    def run_ours():
        jax.block_until_ready(compiled(params, ids_j, mask_j))

    tokens = args.batch * args.seq
    ours = statistics.median(timed(run_ours, args.iters))
    peer = None
    if not args.no_peer:
        np.save(os.path.join(tmp, "ids.npy"), ids.astype(np.int64))
        check = os.path.join(tmp, "check_logits.npy")
        peer = json.loads(run_peer("hf_forward.py", "time", "--dir", tmp, "--ids", os.path.join(tmp, "ids.npy"),
                                   "--iters", str(args.iters), "--check_out", check))
        # same weights, same inputs: the logits agree (a check that we compare like with like)
        ours_logits = fwd(params, ids_j[:1, :64], mask_j[:1, :64])
        agree = float(np.abs(np.asarray(ours_logits, np.float32) - np.load(check)).max())

    kind = jax.devices()[0].device_kind
    print(f"machine: {platform.node()} {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, jax {jax.__version__} on {platform_name} ({kind}), "
          f"{jax.device_count()} device(s)")
    print(f"model: {args.size} ({cfg.num_params / 1e6:.1f}M params), {dtype}, attention="
          f"{cfg.attention_impl}, scan={cfg.scan_layers}; batch {args.batch} x seq {args.seq}")
    print(f"compile: {compile_s:.2f} s")
    print(f"memory_analysis: temp {mem.temp_size_in_bytes / 2**20:.1f} MiB, "
          f"arguments {mem.argument_size_in_bytes / 2**20:.1f} MiB, "
          f"output {mem.output_size_in_bytes / 2**20:.1f} MiB, "
          f"generated code {mem.generated_code_size_in_bytes / 2**20:.2f} MiB")
    print(f"sdpo_jax forward: {ours * 1e3:.1f} ms median of {args.iters}, "
          f"{tokens / ours:,.0f} tokens/s")
    if peer is not None:
        peer_s = peer["median_s"]
        print(f"transformers {peer['transformers']} (torch {peer['torch']}, {peer['threads']} threads, sdpa, "
              f"{peer['device']}, alone in its process): {peer_s * 1e3:.1f} ms, {tokens / peer_s:,.0f} tokens/s; "
              f"max |logit diff| on a 64-token check {agree:.2e}")
        print(f"ratio (sdpo_jax / transformers tokens/s): {peer_s / ours:.2f}")
    peak = args.peak_tflops * 1e12 if args.peak_tflops else next(
        (v for k, v in PEAK_BF16.items() if k.lower() in kind.lower()), None)
    flops = model_flops_per_token(cfg, args.seq) * tokens / ours
    if peak:
        print(f"model FLOPs: {flops / 1e12:.1f} TFLOP/s = MFU {flops / peak:.1%} "
              f"(peak {peak / 1e12:.0f} TFLOP/s bf16 dense)")
    else:
        print(f"model FLOPs: {flops / 1e9:.1f} GFLOP/s (no known peak for {kind!r}; "
              "pass --peak_tflops for MFU)")



if __name__ == "__main__":
    main()
