"""The RL loop: problems -> generate -> score -> reprompt -> old log-probs -> updates -> teacher -> log.

`run(cfg)` is what `python -m sdpo_jax.main` calls. One iteration of the loop is one generation batch:

    problems (grain)  ──► chat-templated prompt ids ──► sampling.generate (n per prompt)
      ──► envs score_batch (reward + feedback) ──► reprompt.build_teacher_prompts (teacher ids, sd_mask)
      ──► RolloutBatch (buckets) ──► train_step.update_on_generation_batch (old log-probs,
          mini-batch optimizer steps, EMA teacher once) ──► metrics ──► eval / checkpoint every k.

Several processes (`jax.distributed`, one per host) run the same loop on the same host-side data:
every process advances the same global prompt iterator, passes the global prompts to `generate`
(which feeds each process's devices its own rows and returns every row to every process), scores
only its `sharding.scoring_block` of the rows with its own Scorer and gathers every score
(`score_rows`), then builds the same global RolloutBatch. A mini-batch may therefore take its
questions from any host: one question per mini-batch or per step works on any number of hosts, and
P processes train exactly like one (tests/test_multiprocess.py). The iterator state in a checkpoint
does not depend on the process count. Metrics are logged by process 0; checkpoints are written by
all processes (the JSON meta by process 0). Debugging aid: with SDPO_JAX_DUMP_ROLLOUTS=1 each
process appends, per step, the problem ids, group ids, completions and the rows it scored to
`run_dir/rollouts_process{p}.jsonl`.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sdpo_jax import checkpoint as ckpt_lib
from sdpo_jax import config as config_lib
from sdpo_jax import data as data_lib
from sdpo_jax import envs as envs_lib
from sdpo_jax import context_probe, models, reprompt, sampling, sharding
from sdpo_jax import train_step as ts
from sdpo_jax import warm_start as ws
from sdpo_jax.logging import MetricsLogger, plot_curves, read_jsonl
from sdpo_jax.run_report import EXIT_BAD_INPUT, EXIT_NO_LEARNING, EXIT_NONFINITE, judge_gain, platform_line
from sdpo_jax.tokenizer import apply_chat_template, load_tokenizer

def log0(*args) -> None:
    if jax.process_index() == 0:
        print(*args, flush=True)


# ---------------------------------------------------------------------------------------------- setup


def runtime_overrides(cfg) -> dict:
    """The ModelConfig fields the run config sets on any model (dtypes, attention, remat, layer scan)."""
    return dict(compute_dtype=cfg.model.compute_dtype, param_dtype=cfg.model.param_dtype,
                attention_impl=cfg.model.attention_impl, remat=cfg.model.remat, scan_layers=cfg.model.scan_layers)


def init_model_config(cfg, vocab_size: int, pad_token_id: int | None = None, eos_token_id=None):
    """The ModelConfig of a random init from `cfg.model.init` with this vocabulary."""
    init = cfg.model.init
    return models.ModelConfig(
        model_type=init.model_type, vocab_size=vocab_size, hidden_size=init.hidden_size,
        num_layers=init.num_layers, num_heads=init.num_heads, num_kv_heads=init.num_kv_heads,
        head_dim=init.head_dim, intermediate_size=init.intermediate_size, rope_theta=init.rope_theta,
        qk_norm="per_head" if init.model_type == "qwen3" else "none", qkv_bias=init.model_type == "qwen2",
        tie_word_embeddings=init.tie_word_embeddings, sliding_window=init.sliding_window,
        pad_token_id=pad_token_id, eos_token_id=eos_token_id, **runtime_overrides(cfg))


def build_model(cfg, tokenizer, mesh):
    """(ModelConfig, params placed on the mesh): an HF checkpoint, or a random init from cfg.model.init."""
    if cfg.model.path:
        model_cfg, params = models.load_pretrained(cfg.model.path, mesh=mesh, dtype=cfg.model.param_dtype)
        return model_cfg.replace(**runtime_overrides(cfg)), params
    vocab = -(-len(tokenizer) // 64) * 64  # round up: friendlier shapes for every backend
    model_cfg = init_model_config(cfg, vocab, tokenizer.pad_token_id, tokenizer.eos_token_id)
    return model_cfg, models.init_params(model_cfg, jax.random.key(cfg.seed), std=cfg.model.init.std,
                                         shardings=sharding.param_shardings(model_cfg, mesh))


def step_settings(cfg) -> ts.StepSettings:
    loss, teacher, optim = cfg.loss, cfg.teacher, cfg.optim
    mini = optim.minibatch_prompts or cfg.data.prompts_per_step
    return ts.StepSettings(
        objective=loss.objective, hybrid_lambda=loss.hybrid_lambda, loss_mode=loss.mode,
        topk=loss.topk, add_tail=loss.add_tail, alpha=loss.alpha, is_clip=loss.is_clip,
        rollout_is_clip=loss.rollout_is_clip, aggregation=loss.aggregation,
        temperature=cfg.rollout.temperature, clip_low=loss.clip_low, clip_high=loss.clip_high,
        dual_clip=loss.dual_clip, adv_clip=loss.adv_clip, norm_adv_by_std=loss.norm_adv_by_std,
        teacher_kind=teacher.kind, ema_rate=teacher.ema_rate, trust_region_mix=teacher.trust_region_mix,
        vocab_chunk=loss.vocab_chunk, seq_chunk=loss.seq_chunk, micro_batches=optim.micro_batches, minibatch_groups=mini,
        old_logprobs_from_step=mini == cfg.data.prompts_per_step,
    )


def make_optimizer(cfg):
    """AdamW from `cfg.optim`; a cosine schedule spans every optimizer update of the run
    (train.steps x mini-batches per generation batch, after the warmup)."""
    o = cfg.optim
    updates_per_step = cfg.data.prompts_per_step // (o.minibatch_prompts or cfg.data.prompts_per_step)
    cosine_steps = max(cfg.train.steps * updates_per_step - o.warmup_steps, 1) if o.schedule == "cosine" else 0
    return ts.make_optimizer(o.lr, o.warmup_steps, weight_decay=o.weight_decay, b1=o.b1, b2=o.b2,
                             grad_clip=o.grad_clip, cosine_steps=cosine_steps, final_lr_ratio=o.final_lr_ratio)


@dataclasses.dataclass
class Run:
    """Everything the loop needs, built once."""
    cfg: Any
    mesh: Any
    tokenizer: Any
    model_cfg: Any
    env: Any
    scorer: Any
    settings: Any
    eos_ids: tuple


def make_run_mesh(cfg, devices=None):
    """The run's mesh over `devices` (default: all), sized by `config.resolve_mesh_sizes`."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = config_lib.resolve_mesh_sizes(cfg, len(devices))
    return sharding.make_mesh(**sizes, devices=devices)


def build_run(cfg, *, devices=None) -> tuple[Run, Any, Any]:
    """(Run, initial params, close): mesh, tokenizer, model, environment and its scorer pool (with
    `env.options`), step settings - the set-up the RL loop and test-time SDPO share."""
    mesh = make_run_mesh(cfg, devices)
    tokenizer = load_tokenizer(cfg.tokenizer.path)
    model_cfg, params = build_model(cfg, tokenizer, mesh)
    extra_eos = model_cfg.eos_token_id
    extra_eos = [extra_eos] if isinstance(extra_eos, int) else list(extra_eos or ())
    eos_ids = tuple(sorted({tokenizer.eos_token_id, *extra_eos}))
    scorer = envs_lib.base.Scorer(  # runs the env's check_ready (e.g. the code sandbox) here, before training
        cfg.env.name, num_workers=cfg.env.num_workers or None, timeout_s=cfg.env.timeout_s,
        env_options={**cfg.env.options.to_dict(), "unsafe": cfg.env.unsafe_allow_no_sandbox})
    run = Run(cfg, mesh, tokenizer, model_cfg, envs_lib.get_env(cfg.env.name), scorer.score, step_settings(cfg),
              eos_ids)
    return run, params, getattr(scorer, "close", lambda: None)


# -------------------------------------------------------------------------------------------- rollout


def prompt_ids_for(run: Run, problems: list[dict]) -> tuple[list[list[dict]], list[list[int]]]:
    messages = [run.env.build_prompt(p) for p in problems]
    ids = [apply_chat_template(run.tokenizer, m, enable_thinking=run.cfg.tokenizer.enable_thinking)
           for m in messages]
    return messages, ids


def completion_texts(tokenizer, tokens_nc: np.ndarray, lengths_n: np.ndarray) -> list[str]:
    return [tokenizer.decode(list(row[:length]), skip_special_tokens=True)
            for row, length in zip(tokens_nc, lengths_n)]


def score_rows(run: Run, row_problems: list[dict], texts: list[str], truncated: list[bool]):
    """(every row's Score, stats summed over processes): on several processes each scores its
    `sharding.scoring_block` of the rows and the scores are gathered, so every process gets them all."""
    if jax.process_count() == 1:
        return run.scorer(row_problems, texts, truncated)
    block = sharding.scoring_block(len(texts))
    scores, stats = run.scorer(row_problems[block], texts[block], truncated[block])
    gathered = sharding.gather_objects([[s.to_json() for s in scores], stats])
    scores = [envs_lib.base.Score.from_json(d) for part in gathered[0::2] for d in part]
    counts = {k: sum(part.get(k, 0) for part in gathered[1::2])
              for k in ("items", "errors", "timeouts", "crashes", "restarts")}
    return scores, {**stats, **counts, "scored_rows": [block.start, block.stop]}


def decode_weights(run: Run, params):
    """The weights `generate` reads: a compute-dtype copy without fsdp (rollout.decode_weights "gathered": no
    all-gather of the weights at every decode step), a compute-dtype copy in the parameters' sharding (fp32
    master weights, bf16 compute: half the bytes per step; same values, the forward casts them anyway), or
    the parameters themselves. Made once per generate call."""
    model_cfg = run.model_cfg
    if run.cfg.rollout.decode_weights == "gathered":
        return sampling.decode_params(model_cfg, params, run.mesh, dtype=model_cfg.compute_dtype)
    if jnp.dtype(model_cfg.compute_dtype) != jnp.dtype(model_cfg.param_dtype):
        return sampling.decode_params(model_cfg, params, None, dtype=model_cfg.compute_dtype)
    return params


def sample(run: Run, params, problems: list[dict], rng, *, n: int, temperature: float, top_p: float,
           top_k: int = 0, program_names: tuple[str, str] = ("prefill", "decode")) -> dict:
    """Generate n completions per problem and score them; a group's rows are contiguous. On several
    processes every process passes the same (global) problems and gets every row and score back.
    `program_names`: the names of generate's two programs (`compiled_calls`)."""
    cfg, model_cfg = run.cfg, run.model_cfg
    messages, prompt_ids = prompt_ids_for(run, problems)
    start = time.time()
    out = sampling.generate(
        model_cfg, decode_weights(run, params), prompt_ids, max_new_tokens=cfg.rollout.max_new_tokens,
        temperature=temperature, top_p=top_p, top_k=top_k, eos_ids=run.eos_ids, n=n, rng=rng,
        prompt_buckets=tuple(cfg.rollout.prompt_buckets), mesh=run.mesh,
        cache_dtype=cfg.rollout.cache_dtype, pad_id=run.tokenizer.pad_token_id, program_names=program_names)
    tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
    generate_s = time.time() - start
    texts = completion_texts(run.tokenizer, tokens, lengths)
    truncated = list(np.asarray(out.finish_reason) == sampling.FINISH_LENGTH)
    row_problems = [p for p in problems for _ in range(n)]
    start = time.time()
    scores, score_stats = score_rows(run, row_problems, texts, truncated)
    return dict(messages=[m for m in messages for _ in range(n)], prompt_ids=[p for p in prompt_ids for _ in range(n)],
                tokens=tokens, lengths=lengths, logprobs=np.asarray(out.logprobs), texts=texts,
                rewards=np.array([s.reward for s in scores], np.float32),
                feedbacks=[s.feedback for s in scores], score_stats=score_stats,
                time_generate=generate_s, time_score=time.time() - start,
                decode_steps=int(out.num_decode_steps))


def rollout_batch(run: Run, rollout: dict, group_ids: np.ndarray) -> tuple[ts.RolloutBatch, dict, reprompt.TeacherPrompts]:
    """Host-side RolloutBatch: prompts / teacher prompts left-padded to buckets, completions trimmed;
    its reprompt metrics; the unpadded teacher prompts. The same global batch on every process."""
    cfg, tok = run.cfg, run.tokenizer
    pad = tok.pad_token_id
    teacher = reprompt.build_teacher_prompts(
        tok, rollout["messages"], rollout["texts"], rollout["rewards"], rollout["feedbacks"], list(group_ids),
        success_threshold=cfg.reprompt.success_threshold,
        dont_reprompt_on_self_success=cfg.reprompt.dont_reprompt_on_self_success,
        remove_thinking=cfg.reprompt.remove_thinking, include_feedback=cfg.reprompt.include_feedback,
        include_solution=cfg.reprompt.include_solution,
        feedback_only_without_solution=cfg.reprompt.feedback_only_without_solution,
        enable_thinking=cfg.tokenizer.enable_thinking, max_len=cfg.reprompt.max_len or 10**9)
    prompt_ids, prompt_mask = sampling.pad_to_bucket(rollout["prompt_ids"], cfg.rollout.prompt_buckets, pad, side="left")
    teacher_ids, teacher_mask = sampling.pad_to_bucket(teacher.ids, cfg.reprompt.teacher_prompt_buckets, pad, side="left")
    lengths = rollout["lengths"]
    width = sampling.pick_bucket(max(int(lengths.max()), 1), cfg.rollout.completion_buckets)
    tokens = np.full((len(lengths), width), pad, np.int32)
    take = min(width, rollout["tokens"].shape[1])
    tokens[:, :take] = rollout["tokens"][:, :take]
    completion_mask = (np.arange(width)[None, :] < lengths[:, None]).astype(np.int32)
    sampler_logprobs = np.zeros((len(lengths), width), np.float32)
    sampler_logprobs[:, :take] = rollout["logprobs"][:, :take]
    advantages = np.asarray(ts.compute_grpo_advantages(
        rollout["rewards"], group_ids, norm_by_std=cfg.loss.norm_adv_by_std), np.float32)
    batch = ts.RolloutBatch(
        prompt_ids=prompt_ids.astype(np.int32), prompt_mask=prompt_mask.astype(np.int32),
        completion_ids=tokens, completion_mask=completion_mask,
        teacher_prompt_ids=teacher_ids.astype(np.int32), teacher_prompt_mask=teacher_mask.astype(np.int32),
        sd_mask=teacher.sd_mask.astype(np.float32), old_logprobs=np.zeros_like(sampler_logprobs),
        sampler_logprobs=sampler_logprobs, rewards=rollout["rewards"], group_ids=group_ids.astype(np.int32),
        advantages=advantages)
    return batch, {**teacher.metrics, "reprompt_trimmed": teacher.num_trimmed}, teacher


# ------------------------------------------------------------------------------------------ evaluate


def evaluate(run: Run, params, rows: list[dict], rng) -> tuple[dict, np.ndarray]:
    """(metrics, successes [Q] int): avg@k (mean success over k samples per question: the pass@1
    estimate), its standard error over questions, pass@k; and each question's number of successes.

    Chunks of data.prompts_per_step questions (`sample`: the same global numbers on every process)."""
    cfg = run.cfg
    per_call = max(cfg.data.prompts_per_step, 1)
    rewards = []
    for start in range(0, len(rows), per_call):
        chunk = rows[start:start + per_call]
        rng, key = jax.random.split(rng)
        out = sample(run, params, chunk, key, n=cfg.eval.n, temperature=cfg.eval.temperature,
                     top_p=cfg.eval.top_p, program_names=("eval_prefill", "eval_decode"))
        rewards.append(out["rewards"].reshape(len(chunk), cfg.eval.n))
    success = np.concatenate(rewards) >= cfg.reprompt.success_threshold
    per_question = success.mean(1)
    metrics = {"eval/accuracy": float(success.mean()), f"eval/pass@{cfg.eval.n}": float(success.any(1).mean()),
               "eval/accuracy_se": float(per_question.std(ddof=1) / np.sqrt(len(success))) if len(success) > 1 else 0.0,
               "eval/questions": len(success)}
    return metrics, success.sum(1).astype(np.int64)


def log_evaluation(cfg, step: int, metrics: dict, successes: np.ndarray) -> dict:
    """Append each question's successes at `step` to run_dir/evals.jsonl (process 0; for paired
    standard errors between evaluations and runs, bench/demo_compare.sh) and return `metrics`."""
    if jax.process_index() == 0:
        import json

        with open(os.path.join(cfg.run_dir, "evals.jsonl"), "a") as f:
            f.write(json.dumps({"step": step, "samples_per_question": cfg.eval.n,
                                "successes": successes.tolist()}) + "\n")
    return metrics


# ------------------------------------------------------------------------------------------- the loop


class _StopFlag:
    """Set by SIGTERM / SIGINT; every process agrees on the step to stop at (any process saw it)."""

    def __init__(self):
        self.requested = False
        self._previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.requested = True

    def agreed(self) -> bool:
        if jax.process_count() == 1:
            return self.requested
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.array([self.requested], np.int32))
        return bool(np.asarray(flags).any())

    def restore(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def synthetic_splits(cfg) -> dict[str, list[dict]]:
    """The synthetic task's disjoint question sets: RL training, evaluation, the warm start's held-out
    check and its training questions (envs/synthetic.py `make_splits`)."""
    from sdpo_jax.envs import synthetic

    sizes = {"train": cfg.data.synthetic_train_size, "eval": cfg.data.eval_prompts}
    if cfg.warm_start.steps:
        sizes.update(check=cfg.warm_start.check_questions,
                     warm_start=max(cfg.data.synthetic_train_size, cfg.warm_start.batch_size))
    return synthetic.make_splits(
        sizes, seed=cfg.seed, difficulty=cfg.data.synthetic_difficulty, final_ops=tuple(cfg.data.synthetic_final_ops),
        uniform_answers=cfg.data.synthetic_uniform_answers, aliases=cfg.data.synthetic_aliases)


def load_rows(cfg) -> tuple[list[dict], list[dict]]:
    """Training and evaluation problems. The synthetic task draws disjoint train / eval sets."""
    if cfg.data.train == "synthetic":
        splits = synthetic_splits(cfg)
        return splits["train"], splits["eval"]
    train = data_lib.load_dataset(cfg.data.train, skip_bad=cfg.data.skip_bad_rows, env=cfg.env.name)
    evals = (data_lib.load_dataset(cfg.data.eval, skip_bad=cfg.data.skip_bad_rows, env=cfg.env.name)
             if cfg.data.eval else [])
    return train, evals[:cfg.data.eval_prompts]


def _dump_rollouts(run_dir: str, step: int, problems: list[dict], group_ids: np.ndarray, roll: dict) -> None:
    """SDPO_JAX_DUMP_ROLLOUTS=1: what this process read, sampled and scored at `step` (one JSON line per step)."""
    import json

    record = {"step": step, "process": jax.process_index(), "process_count": jax.process_count(),
              "problem_ids": [p.get("id", p.get("task_id")) for p in problems],
              "group_ids": [int(g) for g in group_ids], "texts": roll["texts"],
              "rewards": [float(r) for r in roll["rewards"]],
              "scored_rows": roll["score_stats"].get("scored_rows", [0, len(roll["texts"])])}
    with open(os.path.join(run_dir, f"rollouts_process{jax.process_index()}.jsonl"), "a") as f:
        f.write(json.dumps(record) + "\n")


def _host_scalar_metrics(tree) -> dict:
    out = {}
    for key, value in tree.items():
        value = np.asarray(jax.device_get(value))
        out[key] = float(value.mean()) if value.size else float("nan")
    return out


def report_compiled(train_step, settings, state, batch, mesh) -> None:
    """Compile counts of the jitted programs and the train step's compiled memory (start-up report)."""
    counts = {"prefill": sampling._prefill._cache_size(), "decode": sampling._decode._cache_size(),
              "train_step": train_step.jitted._cache_size()}
    first = ts.split_minibatches(settings, batch, mesh)[0]
    with jax.set_mesh(mesh):
        memory = train_step.jitted.lower(state, first).compile().memory_analysis()
    mib = lambda b: f"{b / 2**20:.1f} MiB"  # noqa: E731
    log0(f"compiled programs: {counts}; train_step memory: arguments {mib(memory.argument_size_in_bytes)}, "
         f"outputs {mib(memory.output_size_in_bytes)}, temporaries {mib(memory.temp_size_in_bytes)}")


def warm_start_splits(train_rows: list[dict], eval_rows: list[dict]) -> dict[str, list[dict]]:
    """Warm-start questions for datasets other than the synthetic task: the training rows, checked on
    the evaluation rows (else the training set's tail)."""
    return {"warm_start": train_rows, "check": (eval_rows or train_rows[-64:])[:128]}


def context_metrics(run: Run, state, problems: list[dict], roll: dict, teacher: reprompt.TeacherPrompts) -> dict:
    """`context/*` metrics (context_probe.rollout_context_metrics) for environments that know the reference
    answer (`expected_answer`); {} otherwise and on several processes (its probe runs on one process's
    devices)."""
    if jax.process_count() > 1 or not hasattr(run.env, "expected_answer"):
        return {}
    tok, n = run.tokenizer, run.cfg.rollout.n
    first_ids = [tok(run.env.expected_answer(p), add_special_tokens=False)["input_ids"][0] for p in problems]
    teacher_params = state.teacher_params if state.teacher_params is not None else state.params
    return context_probe.rollout_context_metrics(
        run.model_cfg, state.params, teacher_params, roll["prompt_ids"], teacher.ids, teacher.contexts,
        [i for i in first_ids for _ in range(n)], pad_id=tok.pad_token_id,
        prompt_buckets=tuple(run.cfg.rollout.prompt_buckets),
        teacher_prompt_buckets=tuple(run.cfg.reprompt.teacher_prompt_buckets))


def run(cfg) -> int:
    """Train with the config; returns a process exit code (0 also after a SIGTERM-requested stop)."""
    is_main = jax.process_index() == 0
    os.makedirs(cfg.run_dir, exist_ok=True)
    run_, params, close_scorer = build_run(cfg)
    mesh, tokenizer, model_cfg, settings = run_.mesh, run_.tokenizer, run_.model_cfg, run_.settings
    splits = synthetic_splits(cfg) if cfg.data.train == "synthetic" else None
    train_rows, eval_rows = (splits["train"], splits["eval"]) if splits else load_rows(cfg)
    log0(f"host: {platform_line()}")
    log0(f"model: {model_cfg.model_type} L={model_cfg.num_layers} D={model_cfg.hidden_size} V={model_cfg.vocab_size} "
         f"params={sum(x.size for x in jax.tree.leaves(params)):,}; mesh {dict(mesh.shape)}; "
         f"{len(train_rows)} train / {len(eval_rows)} eval problems; env {cfg.env.name}")
    if cfg.warm_start.steps:
        try:
            params = ws.warm_started_params(cfg, run_, params, splits or warm_start_splits(train_rows, eval_rows),
                                            log0)
        except (ws.StaleWarmStart, ws.WarmStartError) as err:
            log0(f"error: {err}")
            close_scorer()
            return EXIT_BAD_INPUT if isinstance(err, ws.StaleWarmStart) else EXIT_NO_LEARNING
    logger = MetricsLogger(cfg.run_dir, total_steps=cfg.train.steps, enabled=is_main,
                           tensorboard=cfg.logging.tensorboard, wandb_project=cfg.logging.wandb_project,
                           config=cfg.to_dict(), progress_bar=cfg.logging.progress_bar)
    if is_main:
        with open(os.path.join(cfg.run_dir, "config.json"), "w") as f:
            f.write(cfg.to_json_best_effort(indent=2))
    optimizer = make_optimizer(cfg)
    state = ts.init_train_state(model_cfg, settings, params, optimizer, mesh)
    # One global iterator on every process (see the module docstring).
    data_iter = data_lib.make_train_iterator(train_rows, batch_size=cfg.data.prompts_per_step, seed=cfg.seed)
    base_key = jax.random.key(cfg.seed)  # sampling key of step k: fold_in(base_key, k)
    eval_key = jax.random.key(cfg.seed + 1)
    checkpointer = ckpt_lib.RunCheckpointer(cfg.run_dir, max_to_keep=cfg.checkpoint.max_to_keep,
                                            async_save=cfg.checkpoint.async_save)
    start_step, counters = 0, {"skipped_nonfinite_total": 0, "nonfinite_in_a_row": 0}
    resume_dir = cfg.checkpoint.resume_from
    if resume_dir or (cfg.checkpoint.resume and checkpointer.latest_step() is not None):
        source = ckpt_lib.RunCheckpointer(resume_dir, async_save=False) if resume_dir else checkpointer
        state, meta = source.restore(state)
        start_step, counters = meta["step"], meta["counters"]
        data_iter.set_state(meta["data_state"])
        log0(f"resumed from {source.directory} at step {start_step}")

    train_step = ts.make_train_step(model_cfg, settings, optimizer, mesh)
    dump_rollouts = os.environ.get("SDPO_JAX_DUMP_ROLLOUTS", "") not in ("", "0")
    context_every = cfg.logging.context_every if settings.uses_sdpo else 0
    stop = _StopFlag()
    exit_code, step = 0, start_step
    try:
        if cfg.eval.every and cfg.eval.at_start and start_step == 0 and eval_rows:
            logger.log(0, {**log_evaluation(cfg, 0, *evaluate(run_, state.params, eval_rows, jax.random.fold_in(eval_key, 0))),
                           "generations": 0})
        for step in range(start_step, cfg.train.steps):
            problems = next(data_iter)
            key = jax.random.fold_in(base_key, step)
            roll = sample(run_, state.params, problems, key, n=cfg.rollout.n, temperature=cfg.rollout.temperature,
                          top_p=cfg.rollout.top_p, top_k=cfg.rollout.top_k)
            group_ids = np.repeat(np.arange(len(problems)) + step * len(problems), cfg.rollout.n)
            batch, reprompt_metrics, teacher_prompts = rollout_batch(run_, roll, group_ids)
            if dump_rollouts:
                _dump_rollouts(cfg.run_dir, step, problems, group_ids, roll)
            start = time.time()
            state, step_metrics = ts.update_on_generation_batch(
                train_step, model_cfg, settings, state, batch, mesh=mesh, rng=jax.random.fold_in(key, 1))
            metrics = _host_scalar_metrics(step_metrics)
            time_update = time.time() - start
            if step == start_step:
                report_compiled(train_step, settings, state, batch, mesh)
            counters["skipped_nonfinite_total"] += int(metrics.get("skipped_nonfinite", 0) > 0)
            counters["nonfinite_in_a_row"] = counters["nonfinite_in_a_row"] + 1 if metrics.get("skipped_nonfinite", 0) else 0
            rewards, lengths = roll["rewards"], roll["lengths"]
            tokens = int(lengths.sum())
            if context_every and (step == 0 or (step + 1) % context_every == 0):
                reprompt_metrics.update(context_metrics(run_, state, problems, roll, teacher_prompts))
            metrics.update(reprompt_metrics)
            metrics.update(
                reward=float(rewards.mean()), accuracy=float((rewards >= cfg.reprompt.success_threshold).mean()),
                response_length=float(lengths.mean()), generations=(step + 1) * len(lengths),
                time_generate=roll["time_generate"], time_score=roll["time_score"], time_update=time_update,
                tokens_per_s_generate=tokens / max(roll["time_generate"], 1e-9), decode_steps=roll["decode_steps"],
                env_errors=float(roll["score_stats"].get("errors", 0)),
                **counters)
            if cfg.eval.every and eval_rows and (step + 1) % cfg.eval.every == 0:
                metrics.update(log_evaluation(cfg, step + 1, *evaluate(run_, state.params, eval_rows,
                                                                       jax.random.fold_in(eval_key, step + 1))))
            if (step + 1) % cfg.logging.every == 0 or step + 1 == cfg.train.steps or "eval/accuracy" in metrics:
                logger.log(step + 1, metrics)
            if counters["nonfinite_in_a_row"] >= cfg.train.max_nonfinite_in_a_row:
                log0(f"error: {counters['nonfinite_in_a_row']} generation batches in a row had a non-finite loss or "
                     f"gradient (limit train.max_nonfinite_in_a_row={cfg.train.max_nonfinite_in_a_row}); "
                     "stopping. Lower optim.lr or check the data.")
                exit_code = EXIT_NONFINITE
                break
            stopping = stop.agreed()
            if stopping or (cfg.checkpoint.every and (step + 1) % cfg.checkpoint.every == 0):
                _save(checkpointer, step + 1, state, data_iter, counters, cfg)
            if stopping:
                log0(f"stop requested: saved step {step + 1} in {checkpointer.directory}; exiting")
                return 0
        else:
            step = cfg.train.steps - 1
        if cfg.checkpoint.at_end:
            _save(checkpointer, step + 1, state, data_iter, counters, cfg)
        checkpointer.wait()
        if cfg.checkpoint.export_hf_at_end and exit_code == 0:
            host_params = sharding.host_copy(state.params)  # every process joins the gather
            if is_main:
                models.save_pretrained(model_cfg, host_params, os.path.join(cfg.run_dir, "hf_export"))
                tokenizer.save_pretrained(os.path.join(cfg.run_dir, "hf_export"))
        if cfg.logging.plot and is_main:
            _plot(cfg)
        verdict = judge_gain(cfg, completed=step + 1 == cfg.train.steps and exit_code == 0)
        if is_main:
            log0(verdict.line)
        if verdict.missed:
            exit_code = EXIT_NO_LEARNING
    finally:
        stop.restore()
        checkpointer.close()
        logger.close()
        close_scorer()
    return exit_code


def _save(checkpointer, step: int, state, data_iter, counters: dict, cfg) -> None:
    if checkpointer.latest_step() == step:
        return
    meta = {"step": step, "counters": counters, "data_state": data_iter.get_state(), "config": cfg.to_dict()}
    checkpointer.save(step, state, json_safe(meta), force=True)


def json_safe(value):
    import json

    return json.loads(json.dumps(value, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def _plot(cfg) -> None:
    """Plot this run; overlay sibling runs (e.g. runs/demo and runs/demo_grpo) that share a parent."""
    parent = os.path.dirname(os.path.abspath(cfg.run_dir))
    runs = {}
    for name in sorted(os.listdir(parent)):
        path = os.path.join(parent, name, "metrics.jsonl")
        if os.path.isfile(path) and (name == os.path.basename(cfg.run_dir) or name.startswith("demo")):
            runs[name] = read_jsonl(path)
    out = plot_curves(runs, os.path.join(cfg.run_dir, "curves.png"), title=f"sdpo_jax: {', '.join(runs)}")
    log0(f"plot: {out}")


def export_hf_from_run(cfg, out_dir: str) -> None:
    """`--export_hf=DIR`: write the latest checkpoint of cfg.run_dir as a Hugging Face directory."""
    mesh = make_run_mesh(cfg)
    tokenizer = load_tokenizer(cfg.tokenizer.path)
    model_cfg, params = build_model(cfg, tokenizer, mesh)
    settings = step_settings(cfg)
    state = ts.init_train_state(model_cfg, settings, params, make_optimizer(cfg), mesh)
    checkpointer = ckpt_lib.RunCheckpointer(cfg.run_dir, async_save=False)
    state, meta = checkpointer.restore(state)
    checkpointer.close()
    host_params = sharding.host_copy(state.params)  # every process joins the gather
    if jax.process_index() == 0:
        models.save_pretrained(model_cfg, host_params, out_dir)
        tokenizer.save_pretrained(out_dir)
        print(f"exported step {meta['step']} of {cfg.run_dir} to {out_dir}")
