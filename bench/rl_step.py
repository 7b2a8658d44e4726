"""The whole SDPO RL step through the real loop, against Hugging Face `generate` of the same rollouts.

    python bench/rl_step.py --size tiny --steps 3          # CPU smoke: seconds, not a benchmark
    python bench/rl_step.py --size qwen3-0.6b --steps 3    # GPU / TPU: the real size (bench/gpu.sh)

Ours: `sdpo_jax.setup.train_from_config(cfg)` with a config built here (nothing else of the loop is called): a
Qwen3-0.6B-shaped model with random weights (made with `models.init_params`, written in bf16 with
`models.save_pretrained`, loaded by the loop from `model.path`; fp32 master weights + AdamW + an EMA
teacher, bf16 compute, remat + layer scan, bf16 KV cache), the synthetic digit environment (a cheap,
honest scorer), `--prompts` questions x `--n` samples per step, prompts left-padded to one bucket,
up to `--new_tokens` sampled tokens, reprompting with the environment's feedback, old log-probs,
the teacher forward, the update in two mini-batches and the EMA teacher update. `warm_start.steps=0`,
no evaluation, no checkpoint (`checkpoint.every=0`, `checkpoint.at_end=False`: the final save of
fp32 weights + AdamW + EMA, 9.5 GB at 0.6B, would cost device time after the timed steps) and no HF
export. Per-phase seconds
(`time_generate`, `time_score`, `time_update`) and the generate tokens/s come from the run's own
`metrics.jsonl`; the whole-step wall time is the interval between consecutive metric rows (a thread
stamps each row as it lands), so it also holds detokenisation, reprompting and batch building
("other"). Step 1 (compilation) is discarded; the figures are medians over steps 2..N.

With random weights almost no sample stops early (no EOS is learnt), so rollouts run to
`--new_tokens`: honest for timing, and the same on both sides. The synthetic task's prompts are
short, so the difficulty is raised until they fill most of the prompt bucket (their real length
varies; both sides compute the whole left-padded bucket). Nothing succeeds, so teacher prompts are
the question plus feedback (no sibling demonstration): shorter than in a real run on code.

Peer (same process, after ours): transformers `AutoModelForCausalLM.from_pretrained` of the same
checkpoint (bf16, sdpa) on the same device kind (CUDA; CPU with one torch thread for `--size tiny`), `generate` with
`num_return_sequences=n`, the same left-padded prompt batch shape (the same generator, seed and
bucket), `do_sample=True`, temperature 1, no top-k / top-p, `use_cache=True`, exactly
`--new_tokens` tokens (`min_new_tokens` keeps EOS out). Ratios printed:
  * our whole RL step (generate + score + reprompt + old log-probs + teacher + updates + EMA)
    / HF generate alone of the same rollouts (time; below 1 = our whole step is faster);
  * our generate phase vs HF generate (tokens/s).
`--json PATH` writes every figure (tests/test_bench_rl_step.py reads it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from sdpo_jax import config as config_lib  # noqa: E402
from sdpo_jax import data as data_lib  # noqa: E402
from sdpo_jax import envs, models, sampling, setup  # noqa: E402
from sdpo_jax.tokenizer import apply_chat_template, load_tokenizer  # noqa: E402

PAD_ID, EOS_ID = 0, 2  # the demo tokenizer's <|endoftext|> and <|im_end|>

SIZES = {
    # the CPU smoke size: every compile well under a second or two
    "tiny": dict(model=dict(model_type="qwen3", vocab_size=512, hidden_size=64, num_layers=2, num_heads=4,
                            num_kv_heads=2, head_dim=16, intermediate_size=128, qk_norm="per_head",
                            tie_word_embeddings=True),
                 dtype="float32", remat=False, prompts=2, n=4, prompt_bucket=64, new_tokens=16, difficulty=1,
                 teacher_buckets=(64, 128, 192, 256), topk=20),
    "qwen3-0.6b": dict(model=dict(model_type="qwen3", vocab_size=151936, hidden_size=1024, num_layers=28,
                                  num_heads=16, num_kv_heads=8, head_dim=128, intermediate_size=3072,
                                  qk_norm="per_head", rope_theta=1000000.0, tie_word_embeddings=True),
                       dtype="bfloat16", remat=True, prompts=16, n=8, prompt_bucket=256, new_tokens=512, difficulty=70,
                       teacher_buckets=(256, 384, 512, 768, 1024), topk=100),
}


def default_attention(platform_name: str) -> str:
    return {"gpu": "cudnn", "tpu": "splash"}.get(platform_name, "plain")


def build_config(args, spec: dict, model_dir: str, run_dir: str):
    """The loop's config: every field the benchmark depends on is set here, nothing else is assumed."""
    c = config_lib.base_config()
    c.seed = 0
    c.run_dir = run_dir
    c.model.path = model_dir
    c.model.param_dtype = "float32"  # master weights; AdamW state fp32 (the project's default)
    c.model.compute_dtype = spec["dtype"]
    c.model.attention_impl = args.attention
    c.model.remat = spec["remat"]
    c.model.scan_layers = True
    c.tokenizer.path = "demo"
    c.tokenizer.check_vocabulary = False  # random weights at a real model's vocabulary size, the demo's tokens
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, -1, 1
    c.data.train = "synthetic"
    c.data.synthetic_difficulty = spec["difficulty"]
    c.data.synthetic_train_size = max(64, 2 * args.prompts * args.steps)
    c.data.prompts_per_step = args.prompts
    c.data.eval_prompts = 4
    c.env.name = "synthetic"
    c.env.num_workers = 2
    c.rollout.n = args.n
    c.rollout.temperature = 1.0
    c.rollout.max_new_tokens = args.new_tokens
    c.rollout.prompt_buckets = (args.prompt_bucket,)
    c.rollout.completion_buckets = (args.new_tokens,)
    c.rollout.cache_dtype = spec["dtype"]
    c.reprompt.teacher_prompt_buckets = tuple(spec["teacher_buckets"])
    c.reprompt.max_len = max(spec["teacher_buckets"])
    c.loss.objective = "sdpo"
    c.loss.topk = spec["topk"]
    c.teacher.kind = "ema"
    c.optim.lr = 1e-6
    c.optim.warmup_steps = 0
    c.optim.minibatch_prompts = max(args.prompts // 2, 1)  # two optimizer steps per generation batch
    c.train.steps = args.steps
    c.eval.every = 0
    c.eval.at_start = False
    c.checkpoint.every = 0
    c.checkpoint.at_end = False
    c.checkpoint.resume = False
    c.checkpoint.export_hf_at_end = False
    c.logging.tensorboard = False
    c.logging.plot = False
    config_lib.validate(c, num_devices=jax.device_count())
    return c


class RowStamper:
    """Stamps each line of `metrics.jsonl` with the time it lands (the logger flushes per row)."""

    def __init__(self, path: str, poll_s: float = 0.005):
        self.path, self.poll_s, self.rows = path, poll_s, []
        self._stop, self._buffer, self._offset = threading.Event(), "", 0
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self):
        self.start = time.perf_counter()
        self._thread.start()
        return self

    def _read(self):
        if not os.path.exists(self.path) or os.path.getsize(self.path) <= self._offset:
            return
        now = time.perf_counter()
        with open(self.path) as f:
            f.seek(self._offset)
            chunk = f.read()
            self._offset = f.tell()
        self._buffer += chunk
        *lines, self._buffer = self._buffer.split("\n")
        for line in lines:
            if line.strip():
                row = json.loads(line)
                print(f"  [rl_step] step {row['step']} logged at +{now - self.start:.2f} s", flush=True)
                self.rows.append((now, row))

    def _loop(self):
        while not self._stop.wait(self.poll_s):
            self._read()

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._read()
        self.end = time.perf_counter()


def write_random_checkpoint(spec: dict, out_dir: str, layers: int | None) -> models.ModelConfig:
    """Random weights in the compute dtype, written with the project's own save_pretrained."""
    kw = dict(spec["model"], pad_token_id=PAD_ID, eos_token_id=EOS_ID, param_dtype=spec["dtype"])
    if layers:
        kw["num_layers"] = layers
    cfg = models.ModelConfig(**kw)
    params = models.init_params(cfg, jax.random.key(0))
    models.save_pretrained(cfg, params, out_dir, dtype=spec["dtype"])
    del params
    return cfg


def run_ours(cfg) -> dict:
    """setup.train_from_config(cfg), its metric rows stamped; per-step wall = interval between consecutive rows."""
    path = os.path.join(cfg.run_dir, "metrics.jsonl")
    error = None
    with RowStamper(path) as stamper:
        try:
            code = setup.train_from_config(cfg)
        except Exception as e:  # noqa: BLE001 - the rows already logged are still a measurement
            code, error = None, f"{type(e).__name__}: {e}"
    stamps = [stamp for stamp, _ in stamper.rows]
    rows = [row for _, row in stamper.rows]
    if error is not None:
        print(f"  [rl_step] setup.train_from_config raised after {len(rows)} logged steps: {error[:2000]}", flush=True)
        if len(rows) < 2:
            raise RuntimeError(f"setup.train_from_config failed before two steps were logged: {error}")
    # step 1's interval starts at setup.train_from_config: it holds the set-up (model load, data) and the compiles
    walls = [b - a for a, b in zip([stamper.start] + stamps[:-1], stamps)]
    steps = []
    for row, wall in zip(rows, walls):
        phases = row["time_generate"] + row["time_score"] + row["time_update"]
        steps.append(dict(step=row["step"], wall_s=wall, generate_s=row["time_generate"],
                          score_s=row["time_score"], update_s=row["time_update"], other_s=wall - phases,
                          tokens_per_s_generate=row["tokens_per_s_generate"],
                          response_length=row["response_length"], decode_steps=row.get("decode_steps"),
                          loss=row.get("loss"), reward=row["reward"]))
    after = stamper.end - (stamps[-1] if stamps else stamper.start)
    return dict(exit_code=code, error=error, steps=steps, after_last_step_s=after)


def peak_device_memory() -> float | None:
    """Peak bytes in use on device 0 as the runtime reports it (GPU/TPU), else None."""
    try:
        stats = jax.local_devices()[0].memory_stats()
    except Exception:  # noqa: BLE001 - CPU backends may not implement it
        return None
    return float(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def peer_prompts(args, spec: dict) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """The same kind of prompt batch the loop builds: synthetic problems, chat template, left pad."""
    tokenizer = load_tokenizer("demo")
    env = envs.get_env("synthetic")
    problems = data_lib.load_dataset("synthetic", n=args.prompts, seed=0, difficulty=spec["difficulty"])
    ids = [apply_chat_template(tokenizer, env.build_prompt(p), enable_thinking=False) for p in problems]
    ids_bp, mask_bp = sampling.pad_to_bucket(ids, (args.prompt_bucket,), PAD_ID, side="left")
    return ids_bp, mask_bp, [len(x) for x in ids]


def run_peer(args, spec: dict, model_dir: str) -> dict:
    """transformers generate on the same checkpoint and batch shape; median of --peer_repeats calls."""
    import torch
    import transformers

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":  # torch's intra-op pool collapses ~100x on an oversubscribed shared CPU
        torch.set_num_threads(1)
    transformers.utils.logging.disable_progress_bar()
    dtype = torch.bfloat16 if spec["dtype"] == "bfloat16" else torch.float32
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation="sdpa")
    model = model.to(device).eval()
    ids_bp, mask_bp, _ = peer_prompts(args, spec)
    ids = torch.tensor(ids_bp, dtype=torch.long, device=device)
    mask = torch.tensor(mask_bp, dtype=torch.long, device=device)
    rows = args.prompts * args.n

    def generate(new_tokens):
        with torch.no_grad():
            out = model.generate(ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                 max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                 num_return_sequences=args.n, use_cache=True, pad_token_id=PAD_ID,
                                 eos_token_id=EOS_ID)
        if device == "cuda":
            torch.cuda.synchronize()
        assert tuple(out.shape) == (rows, args.prompt_bucket + new_tokens), tuple(out.shape)

    generate(4)  # warm-up: kernels, cuBLAS handles
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.peer_repeats):
        start = time.perf_counter()
        generate(args.new_tokens)
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    peak = float(torch.cuda.max_memory_allocated()) if device == "cuda" else None
    name = torch.cuda.get_device_name(0) if device == "cuda" else platform.processor() or "cpu"
    model = None  # drop the weights (the closure holds the same cell) before empty_cache
    if device == "cuda":
        torch.cuda.empty_cache()
    return dict(device=f"{device} ({name})", torch=torch.__version__, transformers=transformers.__version__,
                dtype=str(dtype).replace("torch.", ""), times_s=times, generate_s=seconds,
                tokens=rows * args.new_tokens, tokens_per_s=rows * args.new_tokens / seconds, peak_bytes=peak)


def summarize(ours: dict, peer: dict | None, args) -> dict:
    timed = ours["steps"][1:]  # step 1 compiles
    med = lambda key: statistics.median(s[key] for s in timed)  # noqa: E731
    rows = args.prompts * args.n
    out = {k: med(k) for k in ("wall_s", "generate_s", "score_s", "update_s", "other_s",
                               "tokens_per_s_generate", "response_length")}
    out["tokens_per_s_whole_step"] = out["response_length"] * rows / out["wall_s"]
    out["first_step_s"] = ours["steps"][0]["wall_s"]
    ratios = {}
    if peer is not None:
        ratios["whole_step_over_hf_generate"] = out["wall_s"] / peer["generate_s"]
        ratios["generate_time_hf_over_ours"] = peer["generate_s"] / out["generate_s"]
        ratios["generate_tokens_per_s_ours_over_hf"] = out["tokens_per_s_generate"] / peer["tokens_per_s"]
    return dict(median=out, ratios=ratios)


def _gib(value):
    return "n/a" if value is None else f"{value / 2**30:.2f} GiB"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="tiny", choices=sorted(SIZES))
    parser.add_argument("--steps", type=int, default=3, help="generation batches; step 1 (compile) is discarded")
    parser.add_argument("--prompts", type=int, default=None, help="questions per step (size default)")
    parser.add_argument("--n", type=int, default=None, help="samples per question (size default)")
    parser.add_argument("--prompt_bucket", type=int, default=None, help="prompt length bucket (size default)")
    parser.add_argument("--new_tokens", type=int, default=None, help="max new tokens (size default)")
    parser.add_argument("--layers", type=int, default=None, help="override the number of layers (smoke tests)")
    parser.add_argument("--attention", default=None, help="plain | blockwise | cudnn | splash (default by platform)")
    parser.add_argument("--peer", default="auto", choices=("auto", "on", "off"),
                        help="auto: on with CUDA, or at --size tiny; off on TPU/CPU at the real size")
    parser.add_argument("--peer_repeats", type=int, default=1)
    parser.add_argument("--run_dir", default=None, help="default: a fresh temporary directory, removed at the end")
    parser.add_argument("--json", default=None, help="write every figure to this JSON file")
    args = parser.parse_args(argv)
    spec = SIZES[args.size]
    for key in ("prompts", "n", "prompt_bucket", "new_tokens"):
        if getattr(args, key) is None:
            setattr(args, key, spec[key])
    if args.steps < 2:
        parser.error("--steps must be >= 2 (step 1 compiles and is discarded)")
    backend = jax.default_backend()
    args.attention = args.attention or default_attention(backend)
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    peer_on = args.peer == "on" or (args.peer == "auto" and (has_cuda or args.size == "tiny"))

    device = jax.local_devices()[0]
    print(f"machine: {platform.node()} {platform.machine()} {os.cpu_count()} CPUs; python "
          f"{sys.version.split()[0]}; jax {jax.__version__} backend={backend} device={device.device_kind} "
          f"x{jax.local_device_count()}", flush=True)
    scratch = args.run_dir or tempfile.mkdtemp(prefix="rl_step_")  # bf16 model, metrics, compile cache
    model_dir, run_dir = os.path.join(scratch, "hf_model"), os.path.join(scratch, "run")
    # The loop's start-up report compiles the train step a second time; a fresh persistent cache makes
    # that a cache hit (and keeps step 1 an honest compile) unless the caller set a cache already.
    if not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", os.path.join(scratch, "jax_cache"))
    rows = args.prompts * args.n
    record = dict(size=args.size, rows=rows, prompts=args.prompts, n=args.n, prompt_bucket=args.prompt_bucket,
                  new_tokens=args.new_tokens, steps=args.steps, backend=backend, device=device.device_kind)
    try:
        start = time.perf_counter()
        model_cfg = write_random_checkpoint(spec, model_dir, args.layers)
        print(f"model: {args.size} L={model_cfg.num_layers} D={model_cfg.hidden_size} V={model_cfg.vocab_size}, "
              f"{model_cfg.num_params / 1e6:.1f}M params, random weights saved as {spec['dtype']} "
              f"({time.perf_counter() - start:.1f} s); ours: fp32 master weights, {spec['dtype']} compute and "
              f"KV cache, attention {args.attention}", flush=True)
        print(f"rollout: {args.prompts} prompts x n={args.n} = {rows} rows, prompt bucket {args.prompt_bucket}, "
              f"up to {args.new_tokens} new tokens, temperature 1.0; teacher-prompt buckets "
              f"{spec['teacher_buckets']}; SDPO top-{spec['topk']} + tail, EMA teacher, 2 mini-batches; "
              f"{args.steps} steps (step 1 discarded)", flush=True)
        cfg = build_config(args, spec, model_dir, run_dir)
        ours = run_ours(cfg)
        ours["peak_device_bytes"] = peak_device_memory()
        report_ours(args, spec, ours, record)  # printed (and saved) before the peer starts
        peer = None
        if peer_on:
            try:
                peer = run_peer(args, spec, model_dir)
            except Exception as e:  # noqa: BLE001 - ours still stands; say why the ratio is missing
                print(f"peer failed: {type(e).__name__}: {str(e)[:2000]}", flush=True)
        else:
            print("peer: off (no CUDA device for transformers at this size)", flush=True)
    finally:
        if args.run_dir is None:
            shutil.rmtree(scratch, ignore_errors=True)
    if peer is not None:
        summary = summarize(ours, peer, args)
        r = summary["ratios"]
        record.update(peer=peer, **summary)
        print(f"  HF generate alone   {peer['generate_s']:9.3f} s  ({peer['tokens_per_s']:.0f} tok/s; "
              f"transformers {peer['transformers']}, torch {peer['torch']}, {peer['dtype']}, {peer['device']}; "
              f"peak {_gib(peer['peak_bytes'])})")
        print(f"  ratio ours whole RL step / HF generate alone: {r['whole_step_over_hf_generate']:.3f}  "
              f"(below 1: our generate+score+teacher+update takes less time than HF's generate alone)")
        print(f"  ratio generate, ours / HF: {r['generate_tokens_per_s_ours_over_hf']:.2f}x tokens/s "
              f"({r['generate_time_hf_over_ours']:.2f}x by time)", flush=True)
        write_json(args.json, record)
    return 0 if ours["error"] is None else 1


def write_json(path: str | None, record: dict) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(record, f, indent=1)


def report_ours(args, spec: dict, ours: dict, record: dict) -> None:
    """Print our per-step and median figures; write them to --json (the peer adds its part later)."""
    for s in ours["steps"]:
        print(f"  step {s['step']}: wall {s['wall_s']:8.3f} s = generate {s['generate_s']:.3f} + score "
              f"{s['score_s']:.3f} + update {s['update_s']:.3f} + other {s['other_s']:.3f}; "
              f"{s['tokens_per_s_generate']:.0f} generated tok/s, mean length {s['response_length']:.1f}")
    summary = summarize(ours, None, args)
    m = summary["median"]
    _, _, prompt_lengths = peer_prompts(args, spec)
    print(f"\n[rl_step] {args.size}, {record['rows']} rows, prompt bucket {args.prompt_bucket} (real prompt "
          f"lengths {min(prompt_lengths)}-{max(prompt_lengths)} in the peer's batch), {args.new_tokens} new "
          f"tokens; median of steps 2..{args.steps}; device {record['device']}")
    print(f"  ours whole RL step  {m['wall_s']:9.3f} s  ({m['tokens_per_s_whole_step']:.0f} generated tok/s "
          f"over the whole step; step 1 incl. set-up and compiles {m['first_step_s']:.1f} s)")
    print(f"    generate {m['generate_s']:.3f} s ({m['tokens_per_s_generate']:.0f} tok/s, mean length "
          f"{m['response_length']:.1f}), score {m['score_s']:.3f} s, update (old log-probs + teacher + "
          f"2 mini-batches + EMA) {m['update_s']:.3f} s, other (detokenise, reprompt, batch) {m['other_s']:.3f} s")
    print(f"    peak device memory (jax, whole process): {_gib(ours['peak_device_bytes'])}; after the "
          f"last step (shutdown; no final checkpoint or export): {ours['after_last_step_s']:.1f} s", flush=True)
    record.update(ours=ours, peer=None, **summary)
    write_json(args.json, record)


if __name__ == "__main__":
    sys.exit(main())
