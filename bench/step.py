"""SDPO train step against the GRPO-only step on the same batch, and the compiled memory of the loss.

    python bench/step.py                                   # CPU: tiny model, short sequences
    python bench/step.py --size qwen3-0.6b --batch 8 --prompt 512 --completion 1536 --attention cudnn

Part 1 (time): `make_train_step` with objective "sdpo" (EMA teacher forward on the teacher prompt +
top-K/tail JSD, chunked) and with objective "grpo" (no teacher, PPO on the sampled token, the same
chunked log-prob pass), the same model, batch and AdamW, timed alternately in one process (median
of `--iters` calls after a warm-up). Prints the SDPO / GRPO time ratio. The paper's +17 % (Fig. 5) is
the whole RL step including generation and scoring; this is the update step alone, so expect more.

Part 2 (memory): `memory_analysis()` temp bytes of the whole compiled train step at V = 151936,
T = `--mem_completion` completion tokens, B = 1, K = 100, for `topk`, `full` and a naive dense step
(models.forward logits [B, T, V] for student and teacher + `divergences.distillation_loss`), a 1-layer
model with hidden `--mem_hidden` and blockwise attention (so the model's attention does not hide the
loss). Prints each against one fp32 [T, V] array. Only compiled, never run.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from sdpo_jax import batch as batch_lib  # noqa: E402
from sdpo_jax import divergences, losses, models, programs, train_step as ts  # noqa: E402

SIZES = {
    "tiny": dict(model_type="qwen3", vocab_size=32000, hidden_size=256, intermediate_size=1024, num_layers=4,
                 num_heads=4, num_kv_heads=2, head_dim=64, qk_norm="per_head", tie_word_embeddings=False),
    "qwen3-0.6b": dict(model_type="qwen3", vocab_size=151936, hidden_size=1024, intermediate_size=3072,
                       num_layers=28, num_heads=16, num_kv_heads=8, head_dim=128, qk_norm="per_head",
                       tie_word_embeddings=True, rope_theta=1000000.0, param_dtype="float32",
                       compute_dtype="bfloat16", remat=True, scan_layers=True),
}


def random_batch(cfg, rows, prompt, completion, teacher_prompt, seed=0):
    rng = np.random.default_rng(seed)
    v = cfg.vocab_size
    ids = lambda n: rng.integers(1, v, size=(rows, n)).astype(np.int32)  # noqa: E731
    ones = lambda n: np.ones((rows, n), np.int32)  # noqa: E731
    rewards = rng.integers(0, 2, size=rows).astype(np.float32)
    group = np.arange(rows) // max(rows // 2, 1)
    return batch_lib.RolloutBatch(
        prompt_ids=ids(prompt), prompt_mask=ones(prompt), completion_ids=ids(completion),
        completion_mask=ones(completion), teacher_prompt_ids=ids(teacher_prompt), teacher_prompt_mask=ones(teacher_prompt),
        sd_mask=np.ones(rows, np.float32), old_logprobs=np.full((rows, completion), -np.log(v), np.float32),
        sampler_logprobs=np.full((rows, completion), -np.log(v), np.float32), rewards=rewards,
        group_ids=group.astype(np.int32), advantages=losses.compute_grpo_advantages(rewards, group),
        row_weight=np.ones(rows, np.float32))


def time_steps(args, cfg):
    optimizer = ts.make_optimizer(1e-6, 0)
    batch = random_batch(cfg, args.batch, args.prompt, args.completion, args.teacher_prompt)
    params = models.init_params(cfg, jax.random.key(0))
    runs = {}
    for name, objective in (("sdpo", "sdpo"), ("grpo", "grpo")):
        settings = ts.StepSettings(objective=objective, teacher_kind="ema", topk=args.topk, alpha=0.5,
                                   vocab_chunk=args.vocab_chunk)
        state = ts.init_train_state(cfg, settings, jax.tree.map(jnp.array, params), optimizer)
        step = ts.make_train_step(cfg, settings, optimizer)
        dev_batch = jax.tree.map(jnp.asarray, batch_lib.check(batch))
        t0 = time.perf_counter()
        state, metrics = step(state, dev_batch)
        jax.block_until_ready(metrics)
        runs[name] = dict(step=step, state=state, batch=dev_batch, first=time.perf_counter() - t0, times=[])
    for _ in range(args.iters):  # alternate so that machine noise hits both alike
        for run in runs.values():
            t0 = time.perf_counter()
            run["state"], metrics = run["step"](run["state"], run["batch"])
            jax.block_until_ready(metrics)
            run["times"].append(time.perf_counter() - t0)
    tokens = args.batch * args.completion
    print(f"\n[time] {args.size}: L={cfg.num_layers} D={cfg.hidden_size} V={cfg.vocab_size} compute={cfg.compute_dtype}; "
          f"batch {args.batch} x (prompt {args.prompt} | completion {args.completion}), teacher prompt "
          f"{args.teacher_prompt}; K={args.topk}, vocab_chunk={args.vocab_chunk}, EMA teacher; {args.iters} iters")
    for name, run in runs.items():
        med = statistics.median(run["times"])
        print(f"  {name:5s} step: median {med * 1e3:9.1f} ms  (first call incl. compile {run['first']:.1f} s)  "
              f"{tokens / med:9.0f} completion tokens/s")
    ratio = statistics.median(runs["sdpo"]["times"]) / statistics.median(runs["grpo"]["times"])
    print(f"  ratio SDPO / GRPO step time: {ratio:.3f}  (update step only; paper Fig. 5: +17.1 % whole RL step)")


def naive_dense_step(cfg, settings, optimizer):
    """The step a straightforward implementation writes: full logits for both sides, then the loss."""

    def loss_fn(params, teacher_params, b):
        p, c, pt = b.prompt_ids.shape[1], b.completion_ids.shape[1], b.teacher_prompt_ids.shape[1]
        zs = models.forward(cfg, params, jnp.concatenate([b.prompt_ids, b.completion_ids], 1),
                            jnp.concatenate([b.prompt_mask, b.completion_mask], 1))[:, p - 1:p - 1 + c]
        zt = models.forward(cfg, jax.lax.stop_gradient(teacher_params),
                            jnp.concatenate([b.teacher_prompt_ids, b.completion_ids], 1),
                            jnp.concatenate([b.teacher_prompt_mask, b.completion_mask], 1))[:, pt - 1:pt - 1 + c]
        mask = b.completion_mask * b.sd_mask[:, None]
        return divergences.distillation_loss(zs, zt, b.completion_ids, mask, mode="topk", topk=settings.topk,
                                             alpha=0.5, old_logprobs=b.old_logprobs, is_clip=2.0)[0]

    def step(state, b):
        loss, grads = jax.value_and_grad(loss_fn)(state.params, state.teacher_params, b)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        return state._replace(params=optax.apply_updates(state.params, updates), opt_state=opt_state), loss

    return jax.jit(step, donate_argnums=(0,))


def memory(args):
    cfg = models.ModelConfig(model_type="qwen3", vocab_size=151936, hidden_size=args.mem_hidden, num_layers=1,
                             num_heads=4, num_kv_heads=2, head_dim=16, intermediate_size=4 * args.mem_hidden,
                             qk_norm="per_head", attention_impl="blockwise", attention_block_size=256)
    t = args.mem_completion
    tv = t * cfg.vocab_size * 4
    optimizer = ts.make_optimizer(1e-5, 10)
    base = ts.StepSettings(teacher_kind="ema", topk=100, alpha=0.5, vocab_chunk=args.vocab_chunk)
    print(f"\n[memory] compiled train step temp bytes, 1 layer, D={args.mem_hidden}, V=151936, B=1, "
          f"T={t} completion tokens, K=100, EMA teacher, vocab_chunk={args.vocab_chunk}; one fp32 [T, V] = "
          f"{tv / 2**20:.0f} MiB")
    out = {}
    for name in ("topk", "full", "naive dense"):
        settings = base if name != "full" else dataclasses.replace(base, loss_mode="full")
        state = programs.abstract_train_state(cfg, settings, optimizer)
        batch = programs.abstract_minibatch(1, {"prompt": 16, "teacher_prompt": 32, "completion": t})
        fn = naive_dense_step(cfg, settings, optimizer) if name == "naive dense" else \
            ts.make_train_step(cfg, settings, optimizer).jitted
        t0 = time.perf_counter()
        temp = fn.lower(state, batch).compile().memory_analysis().temp_size_in_bytes
        out[name] = temp
        print(f"  {name:12s} temp {temp / 2**20:9.1f} MiB = {temp / tv:5.2f} x [T, V] fp32   "
              f"(compile {time.perf_counter() - t0:.1f} s)")
    print(f"  ratio naive dense / topk: {out['naive dense'] / out['topk']:.2f}; naive dense / full: "
          f"{out['naive dense'] / out['full']:.2f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="tiny", choices=sorted(SIZES))
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--completion", type=int, default=192)
    parser.add_argument("--teacher_prompt", type=int, default=128)
    parser.add_argument("--topk", type=int, default=100)
    parser.add_argument("--vocab_chunk", type=int, default=8192)
    parser.add_argument("--attention", default=None, help="model attention_impl (plain | blockwise | cudnn | splash)")
    parser.add_argument("--layers", type=int, default=None, help="override the number of layers (smoke tests)")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--mem_completion", type=int, default=2048)
    parser.add_argument("--mem_hidden", type=int, default=64)
    parser.add_argument("--skip_time", action="store_true")
    parser.add_argument("--skip_memory", action="store_true")
    args = parser.parse_args()
    print(f"machine: {platform.machine()} {os.cpu_count()} cpus; jax {jax.__version__}; devices {jax.devices()}")
    if not args.skip_time:
        kw = dict(SIZES[args.size])
        if args.attention:
            kw["attention_impl"] = args.attention
        if args.layers:
            kw["num_layers"] = args.layers
        cfg = models.ModelConfig(**kw)
        time_steps(args, cfg)
    if not args.skip_memory:
        memory(args)


if __name__ == "__main__":
    main()
