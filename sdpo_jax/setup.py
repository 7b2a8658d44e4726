"""Set-up: the one place that reads the config. It resolves `cfg` into the stages' typed settings and builds
a run once (mesh, tokenizer, model, environment and scorer, optimizer, the jitted programs, data, logger,
checkpointer); below it nothing reads `cfg`.

    run = build_run(cfg)          # train.Run: everything the loop needs
    exit_code = train.loop(run)

`program_shapes` (with `init_model_config` and `make_run_mesh`) serves the ahead-of-time tool
(`tools/aot.py`): `programs` builds the same jitted programs from it and abstract arrays alone. Test-time
SDPO shares `build_actor` (`build_ttt`, `run_ttt`).
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax

from sdpo_jax import batch as batch_lib
from sdpo_jax import checkpoint as ckpt_lib
from sdpo_jax import config as config_lib
from sdpo_jax import data as data_lib
from sdpo_jax import envs as envs_lib
from sdpo_jax import hub, models, programs, reprompt, rollout, sampling, sharding, train, warm_start
from sdpo_jax import train_step as ts
from sdpo_jax.envs import synthetic
from sdpo_jax.logging import MetricsLogger, log0
from sdpo_jax.run_files import run_path
from sdpo_jax.run_report import platform_line
from sdpo_jax.ttt import methods as ttt_methods

# ------------------------------------------------------------------------------------------- settings


def runtime_overrides(cfg) -> dict:
    """The ModelConfig fields the run config sets on any model (dtypes, attention, remat, layer scan)."""
    return dict(compute_dtype=cfg.model.compute_dtype, param_dtype=cfg.model.param_dtype,
                attention_impl=cfg.model.attention_impl, remat=cfg.model.remat, scan_layers=cfg.model.scan_layers)


def init_model_config(cfg, vocab_size: int, pad_token_id: int | None = None, eos_token_id=None):
    """The ModelConfig of a random init from `cfg.model.init` with this vocabulary; q/k norm, qkv bias and
    norm placement are the family's (`models.ModelConfig` defaults)."""
    init = cfg.model.init
    return models.ModelConfig(
        model_type=init.model_type, vocab_size=vocab_size, hidden_size=init.hidden_size,
        num_layers=init.num_layers, num_heads=init.num_heads, num_kv_heads=init.num_kv_heads,
        head_dim=init.head_dim, intermediate_size=init.intermediate_size, rope_theta=init.rope_theta,
        tie_word_embeddings=init.tie_word_embeddings, sliding_window=init.sliding_window,
        pad_token_id=pad_token_id, eos_token_id=eos_token_id, **runtime_overrides(cfg))


def make_optimizer(cfg):
    """AdamW from `cfg.optim`; a cosine schedule spans every optimizer update of the run
    (train.steps x mini-batches per generation batch, after the warmup)."""
    o = cfg.optim
    updates_per_step = cfg.data.prompts_per_step // (o.minibatch_prompts or cfg.data.prompts_per_step)
    cosine_steps = max(cfg.train.steps * updates_per_step - o.warmup_steps, 1) if o.schedule == "cosine" else 0
    return ts.make_optimizer(o.lr, o.warmup_steps, weight_decay=o.weight_decay, b1=o.b1, b2=o.b2,
                             grad_clip=o.grad_clip, cosine_steps=cosine_steps, final_lr_ratio=o.final_lr_ratio)


def rollout_policy(cfg) -> rollout.SamplingPolicy:
    r = cfg.rollout
    return rollout.SamplingPolicy(n=r.n, temperature=r.temperature, top_p=r.top_p, top_k=r.top_k)


def eval_policy(cfg) -> rollout.SamplingPolicy:
    e = cfg.eval
    return rollout.SamplingPolicy(n=e.n, temperature=e.temperature, top_p=e.top_p, top_k=0,
                                  program_names=("eval_prefill", "eval_decode"))


def batch_settings(cfg) -> batch_lib.BatchSettings:
    r = cfg.reprompt
    return batch_lib.BatchSettings(
        prompt_buckets=tuple(cfg.rollout.prompt_buckets), completion_buckets=tuple(cfg.rollout.completion_buckets),
        teacher_prompt_buckets=tuple(r.teacher_prompt_buckets), norm_adv_by_std=cfg.loss.norm_adv_by_std,
        reprompt=reprompt.RepromptSettings(
            success_threshold=r.success_threshold, dont_reprompt_on_self_success=r.dont_reprompt_on_self_success,
            remove_thinking=r.remove_thinking, include_feedback=r.include_feedback,
            include_solution=r.include_solution, feedback_only_without_solution=r.feedback_only_without_solution,
            enable_thinking=cfg.tokenizer.enable_thinking, max_len=r.max_len or 10**9))


def loop_settings(cfg, step: ts.StepSettings) -> train.LoopSettings:
    return train.LoopSettings(
        run_dir=cfg.run_dir, seed=cfg.seed, steps=cfg.train.steps, prompts_per_step=cfg.data.prompts_per_step,
        max_nonfinite_in_a_row=cfg.train.max_nonfinite_in_a_row, eval_every=cfg.eval.every,
        eval_at_start=cfg.eval.at_start, logging_every=cfg.logging.every,
        context_every=cfg.logging.context_every if step.uses_sdpo else 0, samples_every=cfg.logging.samples_every,
        samples_rows=cfg.logging.samples_rows, checkpoint_every=cfg.checkpoint.every,
        checkpoint_at_end=cfg.checkpoint.at_end, export_hf_at_end=cfg.checkpoint.export_hf_at_end,
        resume=cfg.checkpoint.resume, resume_from=cfg.checkpoint.resume_from, plot=cfg.logging.plot,
        objective=cfg.loss.objective, min_gain_points=cfg.eval.min_gain_points, config=cfg.to_dict())


def warm_start_settings(cfg) -> warm_start.WarmStartSettings:
    """The demo's warm start (`warm_start.warm_started_params`) and the fingerprint a saved one must match:
    the config fields it depends on."""
    w = cfg.warm_start
    fingerprint = {"seed": cfg.seed, "model.init": cfg.model.init.to_dict(),
                   "tokenizer.path": config_lib.tokenizer_path(cfg),
                   "env": {"name": cfg.env.name, "options": cfg.env.options.to_dict()},
                   "data": {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.data.items()
                            if k.startswith("synthetic_") or k == "train"},
                   "reprompt.teacher_prompt_buckets": list(cfg.reprompt.teacher_prompt_buckets),
                   "warm_start": w.to_dict()}
    return warm_start.WarmStartSettings(
        directory=cfg.checkpoint.warm_start_dir or os.path.join(cfg.run_dir, "warm_start"),
        fingerprint=json.loads(json.dumps(fingerprint)), steps=w.steps, lr=w.lr, batch_size=w.batch_size,
        feedback_fraction=w.feedback_fraction, solution_fraction=w.solution_fraction, check_every=w.check_every,
        min_solution_accuracy=w.min_solution_accuracy, min_feedback_gain=w.min_feedback_gain, seed=cfg.seed,
        env_options=cfg.env.options.to_dict(), enable_thinking=cfg.tokenizer.enable_thinking,
        prompt_buckets=tuple(cfg.reprompt.teacher_prompt_buckets),
        answer_buckets=tuple(cfg.rollout.completion_buckets))


def program_shapes(cfg) -> programs.ProgramShapes:
    """What the run's programs' shapes depend on (the ahead-of-time tool builds them from this alone)."""
    return programs.ProgramShapes(
        step=config_lib.step_settings(cfg), optimizer=make_optimizer(cfg), rollout_policy=rollout_policy(cfg),
        eval_policy=eval_policy(cfg), max_new_tokens=cfg.rollout.max_new_tokens, cache_dtype=cfg.rollout.cache_dtype,
        decode_gathered=cfg.rollout.decode_weights == "gathered", batch=batch_settings(cfg),
        prompts_per_step=cfg.data.prompts_per_step, eval_every=cfg.eval.every, eval_prompts=cfg.data.eval_prompts,
        ttt=ttt_settings(cfg) if "ttt" in cfg else None)


# ------------------------------------------------------------------------------------------- building


def make_run_mesh(cfg, devices=None):
    """The run's mesh over `devices` (default: all), sized by `config.resolve_mesh_sizes`."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = config_lib.resolve_mesh_sizes(cfg, len(devices))
    return sharding.make_mesh(**sizes, devices=devices)


def checked_tokenizer(cfg):
    """(the model's local directory or None for a random init, the tokenizer): hub ids fetched, the tokenizer
    (`config.tokenizer_path`) checked against the model's vocabulary, before the mesh or the model is built.
    Raises hub.SourceError (one of `cli.PROJECT_ERRORS`: the field and what would work)."""
    return hub.load_checked_tokenizer(cfg.model.path, config_lib.tokenizer_path(cfg), revision=cfg.model.revision,
                                      defaulted=cfg.tokenizer.path is None,
                                      check_vocabulary=cfg.tokenizer.check_vocabulary)


def build_model(cfg, tokenizer, mesh, model_dir: str | None = None):
    """(ModelConfig, params placed on the mesh): an HF checkpoint (`model_dir`, the local copy of model.path
    from `checked_tokenizer`; model.path when not given), or a random init from cfg.model.init."""
    if cfg.model.path:
        model_cfg, params = models.load_pretrained(model_dir or cfg.model.path, mesh=mesh, dtype=cfg.model.param_dtype)
        return model_cfg.replace(**runtime_overrides(cfg)), params
    vocab = -(-len(tokenizer) // 64) * 64  # round up: friendlier shapes for every backend
    model_cfg = init_model_config(cfg, vocab, tokenizer.pad_token_id, tokenizer.eos_token_id)
    return model_cfg, models.init_params(model_cfg, jax.random.key(cfg.seed), std=cfg.model.init.std,
                                         shardings=models.param_shardings(model_cfg, mesh))


def build_actor(cfg, *, devices=None) -> tuple[rollout.Actor, Any, Any]:
    """(Actor, initial params, close): mesh, tokenizer, model, environment and its scorer pool (with
    `env.options`; the env's readiness check, e.g. the code sandbox, runs here, before any training), the
    sampling settings - the set-up the RL loop and test-time SDPO share."""
    model_dir, tokenizer = checked_tokenizer(cfg)
    mesh = make_run_mesh(cfg, devices)
    model_cfg, params = build_model(cfg, tokenizer, mesh, model_dir)
    extra_eos = model_cfg.eos_token_id
    extra_eos = [extra_eos] if isinstance(extra_eos, int) else list(extra_eos or ())
    scorer = envs_lib.base.Scorer(
        cfg.env.name, num_workers=cfg.env.num_workers or None, timeout_s=cfg.env.timeout_s,
        env_options={**cfg.env.options.to_dict(), "unsafe": cfg.env.unsafe_allow_no_sandbox})
    actor = rollout.Actor(
        model_cfg=model_cfg, mesh=mesh, tokenizer=tokenizer, env=envs_lib.get_env(cfg.env.name), scorer=scorer.score,
        eos_ids=tuple(sorted({tokenizer.eos_token_id, *extra_eos})), max_new_tokens=cfg.rollout.max_new_tokens,
        prompt_buckets=tuple(cfg.rollout.prompt_buckets), cache_dtype=cfg.rollout.cache_dtype,
        programs=sampling.SamplingPrograms(model_cfg, mesh, gathered=cfg.rollout.decode_weights == "gathered"),
        enable_thinking=cfg.tokenizer.enable_thinking, success_threshold=cfg.reprompt.success_threshold,
        rollout_policy=rollout_policy(cfg), eval_policy=eval_policy(cfg), eval_chunk=cfg.data.prompts_per_step)
    return actor, params, getattr(scorer, "close", lambda: None)


def synthetic_splits(cfg) -> dict[str, list[dict]]:
    """The synthetic task's disjoint question sets: RL training, evaluation, the warm start's held-out
    check and its training questions (envs/synthetic.py `make_splits`)."""
    sizes = {"train": cfg.data.synthetic_train_size, "eval": cfg.data.eval_prompts}
    if config_lib.warm_start_steps(cfg):
        sizes.update(check=cfg.warm_start.check_questions,
                     warm_start=max(cfg.data.synthetic_train_size, cfg.warm_start.batch_size))
    return synthetic.make_splits(
        sizes, seed=cfg.seed, difficulty=cfg.data.synthetic_difficulty, final_ops=tuple(cfg.data.synthetic_final_ops),
        uniform_answers=cfg.data.synthetic_uniform_answers, aliases=cfg.data.synthetic_aliases)


def load_splits(cfg) -> dict[str, list[dict]]:
    """"train" and "eval" problems (and the warm start's "warm_start" / "check" questions when it runs). The
    synthetic task draws disjoint sets; a dataset's warm start trains on its training rows, checked on the
    evaluation rows (else the training set's tail)."""
    if cfg.data.train == "synthetic":
        return synthetic_splits(cfg)
    train_rows = data_lib.load_dataset(cfg.data.train, skip_bad=cfg.data.skip_bad_rows, env=cfg.env.name)
    eval_rows = (data_lib.load_dataset(cfg.data.eval, skip_bad=cfg.data.skip_bad_rows, env=cfg.env.name)
                 if cfg.data.eval else [])
    return {"train": train_rows, "eval": eval_rows[:cfg.data.eval_prompts],
            "warm_start": train_rows, "check": (eval_rows or train_rows[-64:])[:128]}


def initial_params(cfg, actor: rollout.Actor, params, splits: dict[str, list[dict]], log=log0):
    """The model the run starts from: the demo's warm start when cfg.warm_start.steps (made once under
    checkpoint.warm_start_dir and reused), else `params`. Raises warm_start.StaleWarmStart / WarmStartError."""
    if not config_lib.warm_start_steps(cfg):
        return params
    return warm_start.warm_started_params(warm_start_settings(cfg), actor, params, splits, log)


def build_run(cfg, *, devices=None) -> train.Run:
    """Everything `train.loop` needs, built once from `cfg` (resumed from a checkpoint when one exists). The
    data files are read and checked first, then the model and tokenizer sources (hub.SourceError when
    model.path / tokenizer.path cannot be used), and the run directory is made only once the model is built, so
    a bad row, tokenizer or checkpoint (`cli.PROJECT_ERRORS`) stops the run before anything heavy and leaves
    nothing behind. Raises warm_start.StaleWarmStart / WarmStartError when the demo's warm start cannot be
    used or made."""
    splits = load_splits(cfg)
    is_main = jax.process_index() == 0
    actor, params, close_scorer = build_actor(cfg, devices=devices)
    try:
        run_path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
        model_cfg, mesh = actor.model_cfg, actor.mesh
        log0(f"host: {platform_line()}")
        log0(f"model: {model_cfg.model_type} L={model_cfg.num_layers} D={model_cfg.hidden_size} "
             f"V={model_cfg.vocab_size} params={sum(x.size for x in jax.tree.leaves(params)):,}; mesh {dict(mesh.shape)}; "
             f"{len(splits['train'])} train / {len(splits['eval'])} eval problems; env {cfg.env.name}")
        params = initial_params(cfg, actor, params, splits)
    except BaseException:
        close_scorer()
        raise
    logger = MetricsLogger(cfg.run_dir, total_steps=cfg.train.steps, enabled=is_main,
                           tensorboard=cfg.logging.tensorboard, wandb_project=cfg.logging.wandb_project,
                           config=cfg.to_dict(), progress_bar=cfg.logging.progress_bar)
    if is_main:
        (run_path(cfg.run_dir) / "config.json").write_text(cfg.to_json_best_effort(indent=2))
    settings = config_lib.step_settings(cfg)
    step = ts.make_train_step(model_cfg, settings, make_optimizer(cfg), mesh)
    checkpointer = ckpt_lib.RunCheckpointer(
        cfg.run_dir, max_to_keep=cfg.checkpoint.max_to_keep, async_save=cfg.checkpoint.async_save,
        keep_best_metric=cfg.checkpoint.keep_best_metric, keep_best_mode=cfg.checkpoint.keep_best_mode)
    # One global iterator on every process (see train.py's docstring).
    data_iter = data_lib.make_train_iterator(splits["train"], batch_size=cfg.data.prompts_per_step, seed=cfg.seed)
    return train.Run(
        settings=loop_settings(cfg, settings), actor=actor, batch_settings=batch_settings(cfg),
        step=step, state=step.init_state(params), data_iter=data_iter,
        eval_rows=splits["eval"], logger=logger, checkpointer=checkpointer, close_scorer=close_scorer)


def train_from_config(cfg) -> int:
    """Build the run and train it; a process exit code (what `python -m sdpo_jax.main` returns). A project error
    (a bad data row, a stale warm start, ...) propagates: the entry point turns it into one `error:` line."""
    return train.loop(build_run(cfg))


def export_hf_from_run(cfg, out_dir: str) -> None:
    """`--export_hf=DIR`: write the latest checkpoint of cfg.run_dir as a Hugging Face directory."""
    model_dir, tokenizer = checked_tokenizer(cfg)
    mesh = make_run_mesh(cfg)
    model_cfg, params = build_model(cfg, tokenizer, mesh, model_dir)
    state = ts.make_train_step(model_cfg, config_lib.step_settings(cfg), make_optimizer(cfg), mesh).init_state(params)
    checkpointer = ckpt_lib.RunCheckpointer(cfg.run_dir, async_save=False)
    state, meta = checkpointer.restore(state)
    checkpointer.close()
    host_params = sharding.host_copy(state.params)  # every process joins the gather
    if jax.process_index() == 0:
        train.export_hf(model_cfg, host_params, tokenizer, out_dir)
        print(f"exported step {meta['step']} of {cfg.run_dir} to {out_dir}")


# ------------------------------------------------------------------------------------ test-time SDPO


def ttt_settings(cfg) -> ttt_methods.TTTSettings:
    t = cfg.ttt
    return ttt_methods.TTTSettings(
        methods=tuple(t.methods), seed=cfg.seed, seeds=t.seeds, budget=t.budget, batch_size=t.batch_size,
        best_of_k_samples=t.best_of_k_samples, sample_rows=t.sample_rows, num_questions=t.num_questions,
        select_samples=t.select_samples, select_min_rate=t.select_min_rate, select_max_rate=t.select_max_rate,
        multi_turn_max_prompt_tokens=t.multi_turn_max_prompt_tokens,
        multi_turn_prompt_buckets=tuple(t.multi_turn_prompt_buckets), bootstrap_resamples=t.bootstrap_resamples,
        confidence=t.confidence, report_ks=tuple(t.report_ks), targets=tuple(t.targets),
        run_dir=cfg.run_dir, config=cfg.to_dict())


def ttt_candidates(cfg) -> list[dict]:
    """The candidate questions: instances of the RL task (ttt.questions "synthetic", with the demo's data
    options) or a dataset spec / JSONL for the env."""
    t = cfg.ttt
    if t.questions == "synthetic":
        return data_lib.load_dataset("synthetic", n=t.candidate_questions, seed=t.question_seed,
                                     difficulty=t.synthetic_difficulty, final_ops=tuple(cfg.data.synthetic_final_ops),
                                     uniform_answers=cfg.data.synthetic_uniform_answers,
                                     aliases=cfg.data.synthetic_aliases)
    return data_lib.load_dataset(t.questions, env=cfg.env.name)


def build_ttt(cfg, *, devices=None, log=log0):
    """(TTTRun, initial params, close): `build_actor`, then the demo's warm start (reused from
    checkpoint.warm_start_dir, made there when missing)."""
    actor, params, close = build_actor(cfg, devices=devices)
    try:
        if config_lib.warm_start_steps(cfg):
            params = initial_params(cfg, actor, params, load_splits(cfg), log)
    except BaseException:
        close()
        raise
    train_step = ts.make_train_step(actor.model_cfg, config_lib.step_settings(cfg), make_optimizer(cfg), actor.mesh)
    run = ttt_methods.TTTRun(settings=ttt_settings(cfg), actor=actor, train_step=train_step,
                             batch_settings=batch_settings(cfg))
    return run, params, close


def run_ttt(cfg, *, devices=None, log=log0) -> dict:
    """The whole comparison of `python -m sdpo_jax.ttt` (`ttt.methods.compare`) on cfg's questions (read and
    checked before the model is built)."""
    candidates = ttt_candidates(cfg)
    run, params0, close = build_ttt(cfg, devices=devices, log=log)
    try:
        return ttt_methods.compare(run, params0, candidates, log=log)
    finally:
        close()
