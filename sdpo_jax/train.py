"""The RL loop over a built `Run` (`setup.build_run`): problems -> rollout -> batch -> update -> log.

    run = setup.build_run(cfg)
    exit_code = loop(run)

One iteration is one generation batch:

    problems (grain) ──► rollout.sample (n per prompt, scored: reward + feedback)
      ──► batch.build (teacher prompts, buckets: a checked RolloutBatch)
      ──► train_step.update_on_generation_batch (old log-probs, mini-batch optimizer steps, teacher once)
      ──► metrics ──► evaluation / checkpoint every k.

Several processes (`jax.distributed`, one per host) run the same loop on the same host-side data:
every process advances the same global prompt iterator, passes the global prompts to `generate`
(which feeds each process's devices its own rows and returns every row to every process), scores
only its `sharding.scoring_block` of the rows and gathers every score (`rollout.score_rows`), then builds
the same global RolloutBatch. A mini-batch may therefore take its questions from any host: one question
per mini-batch or per step works on any number of hosts, and P processes train exactly like one
(tests/test_multiprocess.py). The iterator state in a checkpoint does not depend on the process count.
Metrics and sample logs (`samples.py`) are logged by process 0; checkpoints are written by all processes
(the JSON meta by process 0); with checkpoint.keep_best_metric every evaluation step is saved with its
evaluation metrics, the candidates for the best (checkpoint.py). The run directory may be gs://
(`run_files`).
Debugging aid: with SDPO_JAX_DUMP_ROLLOUTS=1 each process appends, per step, the problem ids, group ids,
completions and the rows it scored to `run_dir/rollouts_process{p}.jsonl`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import time
from typing import Any, Callable

import jax
import numpy as np
from jax.experimental import multihost_utils

from sdpo_jax import batch as batch_lib
from sdpo_jax import checkpoint as ckpt_lib
from sdpo_jax import context_probe, models, names, programs, rollout, sampling, sharding
from sdpo_jax import samples as samples_lib
from sdpo_jax import train_step as ts
from sdpo_jax.logging import log0, plot_curves, read_jsonl
from sdpo_jax.run_files import append_text, run_path, write_through_local
from sdpo_jax.run_report import EXIT_NO_LEARNING, EXIT_NONFINITE, judge_gain


@dataclasses.dataclass(frozen=True)
class LoopSettings:
    """What the loop does when (config train.*, eval.*, logging.*, checkpoint.*, seed, run_dir).
    context_every is 0 for GRPO (no teacher prompts); config is the resolved config as a plain dict (for
    the checkpoints' meta)."""
    run_dir: str
    seed: int
    steps: int
    prompts_per_step: int
    max_nonfinite_in_a_row: int
    eval_every: int
    eval_at_start: bool
    logging_every: int
    context_every: int
    samples_every: int
    samples_rows: int
    checkpoint_every: int
    checkpoint_at_end: bool
    export_hf_at_end: bool
    resume: bool
    resume_from: str | None
    plot: bool
    objective: str
    min_gain_points: float | None
    config: dict


@dataclasses.dataclass
class Run:
    """Everything the loop needs, built once by `setup.build_run`."""
    settings: LoopSettings
    actor: rollout.Actor
    batch_settings: batch_lib.BatchSettings
    step: ts.TrainStep
    state: ts.TrainState
    data_iter: Any
    eval_rows: list[dict]
    logger: Any
    checkpointer: Any
    close_scorer: Callable[[], None]


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
        flags = multihost_utils.process_allgather(np.array([self.requested], np.int32))
        return bool(np.asarray(flags).any())

    def restore(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def log_evaluation(run_dir: str, step: int, metrics: dict, successes: np.ndarray, samples_per_question: int) -> dict:
    """Append each question's successes at `step` to run_dir/evals.jsonl (process 0; for paired
    standard errors between evaluations and runs, bench/demo_compare.sh) and return `metrics`."""
    if jax.process_index() == 0:
        append_text(run_path(run_dir) / "evals.jsonl", json.dumps(
            {"step": step, "samples_per_question": samples_per_question, "successes": successes.tolist()}) + "\n")
    return metrics


def _evaluate(run: Run, step: int, eval_key) -> dict:
    metrics, successes = rollout.evaluate(run.actor, run.state.params, run.eval_rows, jax.random.fold_in(eval_key, step))
    return log_evaluation(run.settings.run_dir, step, metrics, successes, run.actor.eval_policy.n)


def _dump_rollouts(run_dir: str, step: int, problems: list[dict], roll: rollout.Rollout) -> None:
    """SDPO_JAX_DUMP_ROLLOUTS=1: what this process read, sampled and scored at `step` (one JSON line per step)."""
    record = {"step": step, "process": jax.process_index(), "process_count": jax.process_count(),
              "problem_ids": [p.get("id", p.get("task_id")) for p in problems],
              "group_ids": [int(g) for g in roll.group_ids], "texts": roll.texts,
              "rewards": [float(r) for r in roll.rewards],
              "scored_rows": roll.score_stats.get("scored_rows", [0, len(roll.texts)])}
    append_text(run_path(run_dir) / f"rollouts_process{jax.process_index()}.jsonl", json.dumps(record) + "\n")


def _host_scalar_metrics(tree) -> dict:
    out = {}
    for key, value in tree.items():
        value = np.asarray(jax.device_get(value))
        out[key] = float(value.mean()) if value.size else float("nan")
    return out


def report_compiled(sampling_programs: sampling.SamplingPrograms, step: ts.TrainStep, state,
                    batch: batch_lib.RolloutBatch) -> None:
    """Compile counts of the jitted programs and the train step's compiled memory (start-up report)."""
    counts = {**sampling_programs.compile_counts(), "train_step": step.jitted._cache_size()}
    settings = step.settings
    rows = batch_lib.minibatch_row_indices(batch.group_ids, settings.minibatch_groups, step.rows_multiple).shape[1]
    widths = {"prompt": batch.prompt_ids.shape[1], "teacher_prompt": batch.teacher_prompt_ids.shape[1],
              "completion": batch.completion_ids.shape[1]}
    first = programs.abstract_minibatch(rows, widths, step.mesh)  # shapes only: nothing copied to the devices
    with sharding.use_mesh(step.mesh):
        memory = step.jitted.lower(state, first).compile().memory_analysis()
    mib = lambda b: f"{b / 2**20:.1f} MiB"  # noqa: E731
    log0(f"compiled programs: {counts}; train_step memory: arguments {mib(memory.argument_size_in_bytes)}, "
         f"outputs {mib(memory.output_size_in_bytes)}, temporaries {mib(memory.temp_size_in_bytes)}")


def _resume(run: Run) -> tuple[int, dict]:
    """(start step, counters): from checkpoint.resume_from, or the run directory's latest checkpoint."""
    s, counters = run.settings, {"skipped_nonfinite_total": 0, "nonfinite_in_a_row": 0}
    if not (s.resume_from or (s.resume and run.checkpointer.latest_step() is not None)):
        return 0, counters
    source = ckpt_lib.RunCheckpointer(s.resume_from, async_save=False) if s.resume_from else run.checkpointer
    run.state, meta = source.restore(run.state)
    run.data_iter.set_state(meta["data_state"])
    log0(f"resumed from {source.directory} at step {meta['step']}")
    return meta["step"], meta["counters"]


def loop(run: Run) -> int:
    """Train; returns a process exit code (0 also after a SIGTERM-requested stop). Closes the run's
    logger, checkpointer and scorer."""
    s, actor = run.settings, run.actor
    is_main = jax.process_index() == 0
    base_key = jax.random.key(s.seed)  # sampling key of step k: fold_in(base_key, k)
    eval_key = jax.random.key(s.seed + 1)
    dump_rollouts = os.environ.get("SDPO_JAX_DUMP_ROLLOUTS", "") not in ("", "0")
    stop = _StopFlag()
    try:
        start_step, counters = _resume(run)
        exit_code, step = 0, start_step
        evaluating = s.eval_every and run.eval_rows
        if evaluating and s.eval_at_start and start_step == 0:
            run.logger.log(0, {**_evaluate(run, 0, eval_key), "generations": 0})
        for step in range(start_step, s.steps):
            problems = next(run.data_iter)
            key = jax.random.fold_in(base_key, step)
            roll = rollout.sample(actor, rollout.decode_weights(actor, run.state.params), problems, key,
                                  actor.rollout_policy, first_group_id=step * len(problems))
            batch, reprompt_metrics, teacher_prompts = batch_lib.build(roll, actor.tokenizer, run.batch_settings)
            if dump_rollouts:
                _dump_rollouts(s.run_dir, step, problems, roll)
            start = time.time()
            run.state, step_metrics = ts.update_on_generation_batch(run.step, run.state, batch)
            metrics = _host_scalar_metrics(step_metrics)
            time_update = time.time() - start
            if step == start_step:
                report_compiled(run.actor.programs, run.step, run.state, batch)
            counters["skipped_nonfinite_total"] += int(metrics.get("skipped_nonfinite", 0) > 0)
            counters["nonfinite_in_a_row"] = counters["nonfinite_in_a_row"] + 1 if metrics.get("skipped_nonfinite", 0) else 0
            tokens = int(roll.lengths.sum())
            if s.context_every and (step == 0 or (step + 1) % s.context_every == 0):
                reprompt_metrics.update(context_probe.context_metrics(actor, run.state, problems, roll, teacher_prompts,
                                                                       run.batch_settings.teacher_prompt_buckets))
            metrics.update(reprompt_metrics)
            if is_main and s.samples_every and (step == 0 or (step + 1) % s.samples_every == 0):
                run.logger.log_samples(step + 1, samples_lib.sample_records(
                    step + 1, roll, batch, teacher_prompts, actor.tokenizer, s.samples_rows))
            metrics.update(
                reward=float(roll.rewards.mean()), accuracy=float((roll.rewards >= actor.success_threshold).mean()),
                response_length=float(roll.lengths.mean()), generations=(step + 1) * len(roll.lengths),
                time_generate=roll.time_generate, time_score=roll.time_score, time_update=time_update,
                tokens_per_s_generate=tokens / max(roll.time_generate, 1e-9), decode_steps=roll.decode_steps,
                env_errors=float(roll.score_stats.get("errors", 0)), **counters)
            metrics.update(names.official_metrics(metrics, s.objective))  # self_distillation/* copies
            evaluated = evaluating and (step + 1) % s.eval_every == 0
            if evaluated:
                metrics.update(_evaluate(run, step + 1, eval_key))
            if (step + 1) % s.logging_every == 0 or step + 1 == s.steps or "eval/accuracy" in metrics:
                run.logger.log(step + 1, metrics)
            if counters["nonfinite_in_a_row"] >= s.max_nonfinite_in_a_row:
                log0(f"error: {counters['nonfinite_in_a_row']} generation batches in a row had a non-finite loss or "
                     f"gradient (limit train.max_nonfinite_in_a_row={s.max_nonfinite_in_a_row}); "
                     "stopping. Lower optim.lr or check the data.")
                exit_code = EXIT_NONFINITE
                break
            stopping = stop.agreed()
            keep_best = evaluated and run.checkpointer.keep_best_metric is not None
            if stopping or keep_best or (s.checkpoint_every and (step + 1) % s.checkpoint_every == 0):
                _save(run, step + 1, counters, metrics if evaluated else None)
            if stopping:
                log0(f"stop requested: saved step {step + 1} in {run.checkpointer.directory}; exiting")
                return 0
        else:
            step = s.steps - 1
        if s.checkpoint_at_end:
            _save(run, step + 1, counters)
        run.checkpointer.wait()
        if run.checkpointer.best_step() is not None:
            log0(f"best checkpoint by {run.checkpointer.keep_best_metric}: step {run.checkpointer.best_step()} "
                 f"in {run.checkpointer.directory}")
        if s.export_hf_at_end and exit_code == 0:
            host_params = sharding.host_copy(run.state.params)  # every process joins the gather
            if is_main:
                export_hf(actor.model_cfg, host_params, actor.tokenizer, os.path.join(s.run_dir, "hf_export"))
        if s.plot and is_main:
            _plot(s.run_dir)
        verdict = judge_gain(s.run_dir, s.objective, s.min_gain_points, completed=step + 1 == s.steps and exit_code == 0)
        log0(verdict.line)
        if verdict.missed:
            exit_code = EXIT_NO_LEARNING
    finally:
        stop.restore()
        run.checkpointer.close()
        run.logger.close()
        run.close_scorer()
    return exit_code


def _save(run: Run, step: int, counters: dict, eval_metrics: dict | None = None) -> None:
    if run.checkpointer.latest_step() == step:
        return
    meta = {"step": step, "counters": counters, "data_state": run.data_iter.get_state(), "config": run.settings.config}
    run.checkpointer.save(step, run.state, json_safe(meta), force=True, metrics=eval_metrics)


def export_hf(model_cfg, host_params, tokenizer, out_dir: str) -> None:
    """A Hugging Face directory (config, safetensors, tokenizer) at `out_dir`, local or gs:// (process 0)."""
    models.save_pretrained(model_cfg, host_params, out_dir)
    write_through_local(out_dir, tokenizer.save_pretrained)


def json_safe(value):
    return json.loads(json.dumps(value, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def _plot(run_dir: str) -> None:
    """Plot this run; overlay sibling runs that share its parent and the part of its name before the first
    "_" (runs/demo with runs/demo_grpo; runs/lcb_qwen3_8b with runs/lcb_qwen3_8b_grpo)."""
    run = run_path(run_dir)
    family = run.name.split("_")[0]
    runs = {}
    for sibling in sorted(run.parent.iterdir(), key=lambda p: p.name):
        path = sibling / "metrics.jsonl"
        if (sibling.name == run.name or sibling.name.split("_")[0] == family) and path.exists():
            runs[sibling.name] = read_jsonl(path)
    out = plot_curves(runs, os.fspath(run / "curves.png"), title=f"sdpo_jax: {', '.join(runs)}")
    log0(f"plot: {out}")
