"""Test-time SDPO (paper §5, docs/ALGORITHM.md §7): solve one hard question by self-distilling on it, and the
best-of-k and multi-turn baselines on the same model and attempt budget.

    python -m sdpo_jax.ttt --config=configs/ttt_demo.py [--config.ttt.seeds=3 ...]

For each question and seed, SDPO starts from the initial weights (the EMA teacher initialised to the
same) and repeats: sample a batch of attempts (16), score them with feedback, stop at the first
success; otherwise take one SDPO step on the batch (the teacher sees the environment feedback, no
sibling has succeeded) and update the EMA teacher. The first success is indexed counting every
attempt: batch b (0-based), in-batch position j (1-based, the sampler's row order) gives b*16 + j.

Baselines, from the same initial weights:
  * best-of-k: N >= budget i.i.d. attempts per question, the unbiased pass@k estimator;
  * multi-turn: one attempt per turn, re-prompted with the question and all past feedback (never past
    attempts), the oldest feedback dropped first to fit `ttt.multi_turn_max_prompt_tokens`.
Outputs in cfg.run_dir: results.csv (one row per method/question/seed), discovery.json (curves with
bootstrap CIs over seeds and summaries) and discovery.png. Estimators live in `sdpo_jax/discovery.py`.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from typing import Any, Callable, Sequence

import sdpo_jax

if __name__ == "__main__":
    sdpo_jax.skip_tpu_backend_on_a_cpu_host()  # before jax is imported

import jax  # noqa: E402
import jax.numpy as jnp
import ml_collections
import numpy as np

from sdpo_jax import batch as batch_lib
from sdpo_jax import data as data_lib
from sdpo_jax import discovery as dsc
from sdpo_jax import rollout, sampling
from sdpo_jax import setup as setup_lib
from sdpo_jax import train_step as ts
from sdpo_jax.reprompt import FEEDBACK_TEMPLATE, INSTRUCTION
from sdpo_jax.tokenizer import render_chat

METHODS = ("sdpo", "best_of_k", "multi_turn")


def ttt_defaults() -> ml_collections.ConfigDict:
    """The `ttt` group every TTT config adds to `base_config()` (paper values where they exist)."""
    t = ml_collections.ConfigDict()
    t.methods = METHODS
    t.questions = "synthetic"  # "synthetic" (hard instances, selected below) or a dataset spec / JSONL
    t.num_questions = 8  # first n questions of the (selected) set; 0 = all
    t.synthetic_difficulty = 3
    t.candidate_questions = 64  # synthetic: candidates drawn before selection
    t.question_seed = 1234
    t.select_samples = 0  # >0: keep questions whose success rate over this many draws is in
    t.select_min_rate = 0.0  # [select_min_rate, select_max_rate] (draws independent of best-of-k's)
    t.select_max_rate = 0.0
    t.seeds = 5
    t.budget = 2750  # attempts per question and seed (every attempt counted)
    t.batch_size = 16  # SDPO attempts per step
    t.best_of_k_samples = 2944  # N for the unbiased pass@k (>= budget)
    t.sample_rows = 256  # rows per generate call for best-of-k / selection
    t.multi_turn_max_prompt_tokens = 32000
    t.multi_turn_prompt_buckets = (2048, 4096, 8192, 16384, 32768)
    t.bootstrap_resamples = 1000
    t.confidence = 0.9
    t.report_ks = (1, 16, 64, 256, 1024, 2750)
    t.targets = (0.22, 0.5)  # discovery probabilities for "attempts to reach p"
    return t


def validate_ttt(cfg, *, num_devices: int | None = None) -> None:
    """Validate the base fields with `config.validate` (on `num_devices` when given) and the `ttt` group
    here (ConfigError)."""
    from sdpo_jax import config as config_lib

    if "ttt" not in cfg:
        raise config_lib.ConfigError("config: a TTT config needs a 'ttt' group (c.ttt = ttt.ttt_defaults())")
    t = cfg.ttt
    schema = ttt_defaults()
    for key in t.keys():
        if key not in schema:
            raise config_lib.ConfigError(f"config: unknown key 'ttt.{key}'. Known: {sorted(schema.keys())}")
    base = cfg.copy_and_resolve_references()
    with base.unlocked():
        del base["ttt"]
    config_lib.validate(base, num_devices=num_devices)
    bad = [m for m in t.methods if m not in METHODS]
    if bad or not t.methods:
        raise config_lib.ConfigError(f"config: ttt.methods={tuple(t.methods)} must be a non-empty subset of {METHODS}")
    for name in ("seeds", "budget", "batch_size", "sample_rows", "multi_turn_max_prompt_tokens"):
        if int(t[name]) < 1:
            raise config_lib.ConfigError(f"config: ttt.{name}={t[name]} must be >= 1")
    if "best_of_k" in t.methods and t.best_of_k_samples < t.budget:
        raise config_lib.ConfigError(
            f"config: ttt.best_of_k_samples={t.best_of_k_samples} must be >= ttt.budget={t.budget} "
            "(pass@k needs N >= k)")
    if "multi_turn" in t.methods and t.multi_turn_max_prompt_tokens > max(t.multi_turn_prompt_buckets):
        raise config_lib.ConfigError(
            f"config: ttt.multi_turn_max_prompt_tokens={t.multi_turn_max_prompt_tokens} exceeds the largest of "
            f"ttt.multi_turn_prompt_buckets={tuple(t.multi_turn_prompt_buckets)}; add a bucket")
    if not 0.0 <= t.select_min_rate <= t.select_max_rate <= 1.0:
        raise config_lib.ConfigError(
            f"config: need 0 <= ttt.select_min_rate={t.select_min_rate} <= "
            f"ttt.select_max_rate={t.select_max_rate} <= 1")
    if t.questions != "synthetic" and ":" not in t.questions.replace("://", "") and not os.path.exists(t.questions):
        raise config_lib.ConfigError(f"config: ttt.questions={t.questions!r} does not exist; pass a JSONL of problems "
                                     "(or 'synthetic', or an import path 'pkg.module:function')")
    if not 0.0 < t.confidence < 1.0:
        raise config_lib.ConfigError(f"config: ttt.confidence={t.confidence} must be in (0, 1), e.g. 0.9")
    if any(k > t.budget or k < 1 for k in t.report_ks):
        raise config_lib.ConfigError(
            f"config: ttt.report_ks={tuple(t.report_ks)} must lie in [1, ttt.budget={t.budget}]")
    if cfg.data.prompts_per_step != 1 or cfg.rollout.n != t.batch_size:
        raise config_lib.ConfigError(
            f"config: test-time SDPO trains on one question with ttt.batch_size attempts per step; set "
            f"data.prompts_per_step=1 (got {cfg.data.prompts_per_step}) and rollout.n=ttt.batch_size="
            f"{t.batch_size} (got {cfg.rollout.n})")


# --------------------------------------------------------------------------- multi-turn prompts


def multi_turn_messages(messages: Sequence[dict], feedbacks: Sequence[str]) -> list[dict]:
    """The question's chat with its last user turn extended by every feedback, oldest first:
    question + feedback block (feedbacks joined by a blank line) + instruction, with the texts the
    SDPO teacher prompt uses (reprompt.FEEDBACK_TEMPLATE / INSTRUCTION). No past attempts."""
    if not messages or messages[-1].get("role") != "user":
        raise ValueError(f"multi_turn_messages: the last message must be the user turn with the question, "
                         f"got {list(messages[-1:])!r}")
    if not feedbacks:
        return list(messages)
    block = FEEDBACK_TEMPLATE.replace("{feedback_raw}", "\n\n".join(feedbacks))
    return [*messages[:-1], {"role": "user", "content": messages[-1]["content"] + block + INSTRUCTION}]


def build_multi_turn_prompt(tokenizer, messages: Sequence[dict], feedbacks: Sequence[str], *,
                            max_prompt_tokens: int, enable_thinking: bool = False,
                            min_start: int = 0) -> tuple[list[int], int]:
    """(prompt ids, start): the prompt keeps feedbacks[start:] -- the newest ones -- with the oldest
    dropped first until it fits in `max_prompt_tokens`. `min_start` is a hint (the previous turn's
    start; appending feedback never lets an older one back in). Raises ValueError when even the
    bare question does not fit."""

    def encode(start: int) -> list[int]:
        text = render_chat(tokenizer, multi_turn_messages(messages, feedbacks[start:]),
                           enable_thinking=enable_thinking)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    n = len(feedbacks)
    lo = min(max(int(min_start), 0), n)
    ids = encode(lo)
    if len(ids) <= max_prompt_tokens:
        return ids, lo
    bare = encode(n)
    if len(bare) > max_prompt_tokens:
        raise ValueError(f"build_multi_turn_prompt: the question alone takes {len(bare)} tokens, more than "
                         f"max_prompt_tokens={max_prompt_tokens}; raise ttt.multi_turn_max_prompt_tokens")
    hi, best = n, bare  # invariant: start=lo does not fit, start=hi fits
    while hi - lo > 1:
        mid = (lo + hi) // 2
        cand = encode(mid)
        if len(cand) <= max_prompt_tokens:
            hi, best = mid, cand
        else:
            lo = mid
    return best, hi


# --------------------------------------------------------------------------- setup


def params_fingerprint(params) -> float:
    """sum |w| over every parameter (float64 on host): cheap evidence of which weights a run used."""
    return float(sum(float(jnp.sum(jnp.abs(x.astype(jnp.float32)))) for x in jax.tree.leaves(params)))


@dataclasses.dataclass
class TTTRun:
    """What every method needs: the config, the actor (model, tokenizer, env, scorer), the SDPO step's
    settings and its batch shapes."""
    cfg: Any
    actor: rollout.Actor
    settings: ts.StepSettings
    shapes: batch_lib.BatchShapes


def setup(cfg, *, devices=None, log: Callable[..., None] = print):
    """(TTTRun, initial params, close): `setup.build_actor`, then the demo's warm start (reused from
    cfg.checkpoint.warm_start_dir, made there when missing)."""
    actor, params, close = setup_lib.build_actor(cfg, devices=devices)
    if cfg.warm_start.steps:
        params = setup_lib.initial_params(cfg, actor, params, setup_lib.load_splits(cfg), log)
    return TTTRun(cfg, actor, setup_lib.step_settings(cfg), setup_lib.batch_shapes(cfg)), params, close


def _policy(cfg, n: int, program_names=("prefill", "decode")) -> rollout.SamplingPolicy:
    return setup_lib.rollout_policy(cfg, program_names, n=n)


def load_questions(run, params0, *, log: Callable[..., None] = print) -> tuple[list[dict], dict]:
    """The question set: synthetic candidates (or a dataset), optionally filtered to hard ones by the
    success rate of the initial model over `select_samples` draws (independent of best-of-k's)."""
    cfg, t = run.cfg, run.cfg.ttt
    if t.questions == "synthetic":
        rows = data_lib.load_dataset("synthetic", n=t.candidate_questions, seed=t.question_seed,
                                     difficulty=t.synthetic_difficulty, final_ops=tuple(cfg.data.synthetic_final_ops),
                                     uniform_answers=cfg.data.synthetic_uniform_answers,
                                     aliases=cfg.data.synthetic_aliases)  # the RL task's questions
    else:
        rows = data_lib.load_dataset(t.questions, env=cfg.env.name)
    info = {"candidates": len(rows)}
    if t.select_samples:
        start = time.time()
        counts = sample_success_counts(run, params0, rows, t.select_samples, key=_key(cfg.seed, "select"))
        rates = counts / t.select_samples
        keep = [i for i, r in enumerate(rates) if t.select_min_rate <= r <= t.select_max_rate]
        info.update(select_samples=int(t.select_samples), select_min_rate=float(t.select_min_rate),
                    select_max_rate=float(t.select_max_rate), candidate_rates=[float(r) for r in rates],
                    selected=len(keep), select_wall_s=time.time() - start)
        log(f"selection: {len(keep)}/{len(rows)} questions with success rate in [{t.select_min_rate:.4f}, "
            f"{t.select_max_rate:.4f}] over {t.select_samples} draws ({time.time() - start:.1f}s)")
        rows = [rows[i] for i in keep]
    if t.num_questions:
        rows = rows[:t.num_questions]
    if not rows:
        raise ValueError("ttt: no questions left after selection; widen [ttt.select_min_rate, "
                         "ttt.select_max_rate] or raise ttt.candidate_questions")
    return rows, info


_METHOD_IDS = {"select": 1, "best_of_k": 2, "multi_turn": 3, "sdpo": 4}


def _key(seed: int, method: str, *more: int):
    key = jax.random.fold_in(jax.random.key(seed), _METHOD_IDS[method])
    for value in more:
        key = jax.random.fold_in(key, value)
    return key


# --------------------------------------------------------------------------- best-of-k / selection


def sample_success_counts(run, params, problems: Sequence[dict], num_samples: int, *, key) -> np.ndarray:
    """Successes among `num_samples` i.i.d. attempts per problem, [Q] int (rollout sampling settings)."""
    cfg = run.cfg
    per_call = max(1, min(num_samples, cfg.ttt.sample_rows // max(len(problems), 1) or 1))
    group = max(1, cfg.ttt.sample_rows // per_call)
    counts = np.zeros(len(problems), np.int64)
    for g0 in range(0, len(problems), group):
        chunk = list(problems[g0:g0 + group])
        done = 0
        while done < num_samples:
            n = min(per_call, num_samples - done)
            out = rollout.sample(run.actor, params, chunk, jax.random.fold_in(key, g0 * 1_000_003 + done),
                                 _policy(cfg, n, ("best_of_k_prefill", "best_of_k_decode")))
            ok = (out.rewards >= cfg.reprompt.success_threshold).reshape(len(chunk), n)
            counts[g0:g0 + len(chunk)] += ok.sum(axis=1)
            done += n
    return counts


# --------------------------------------------------------------------------- test-time SDPO


def sdpo_on_question(run, params0, problem: dict, *, seed: int, question_index: int, optimizer, train_step,
                     trace: list | None = None) -> dict:
    """One (question, seed) run of test-time SDPO from `params0` (never modified). Returns the first
    success index (None when the budget ran out), the attempts and steps taken, and fingerprints of
    the weights at the start and the end."""
    cfg, t = run.cfg, run.cfg.ttt
    start = time.time()
    state = ts.init_train_state(run.actor.model_cfg, run.settings, jax.tree.map(jnp.copy, params0), optimizer,
                                run.actor.mesh)
    start_fp = params_fingerprint(state.params)
    attempts, steps, first = 0, 0, None
    while attempts < t.budget:
        key = _key(cfg.seed, "sdpo", question_index, seed, steps)
        roll = rollout.sample(run.actor, state.params, [problem], key, _policy(cfg, t.batch_size))
        counted = min(t.batch_size, t.budget - attempts)  # the last batch may overrun the budget
        first = dsc.first_success_index(roll.rewards[:counted], cfg.reprompt.success_threshold, offset=attempts)
        attempts += counted
        if first is not None or attempts >= t.budget:
            break
        batch, reprompt_metrics, _ = batch_lib.build(roll, run.actor.tokenizer, run.shapes)
        state, metrics = ts.update_on_generation_batch(train_step, state, batch)
        steps += 1
        if trace is not None:
            trace.append({"question_index": question_index, "seed": seed, "step": steps,
                          "reward": float(roll.rewards.mean()),
                          **{k: float(np.mean(np.asarray(jax.device_get(v)))) for k, v in metrics.items()},
                          "feedback_used_fraction": reprompt_metrics.get("feedback_used_fraction")})
    return {"first_success": first, "attempts": attempts, "steps": steps, "start_fingerprint": start_fp,
            "end_fingerprint": params_fingerprint(state.params), "wall_s": time.time() - start}


# --------------------------------------------------------------------------- multi-turn


def multi_turn(run, params0, problems: Sequence[dict], *, seeds: int, log: Callable[..., None] = print) -> list[dict]:
    """Sequential multi-turn chains, one per (question, seed), batched across chains: each turn every
    unsolved chain makes one attempt from its feedback-history prompt. Returns one record per chain."""
    cfg, t, tok, actor = run.cfg, run.cfg.ttt, run.actor.tokenizer, run.actor
    chains = [{"question_index": q, "seed": s, "feedbacks": [], "start": 0, "first_success": None,
               "max_prompt_tokens_used": 0, "trimmed": 0}
              for q in range(len(problems)) for s in range(seeds)]
    messages = [actor.env.build_prompt(p) for p in problems]
    weights = rollout.decode_weights(actor, params0)
    policy = _policy(cfg, 1, ("multi_turn_prefill", "multi_turn_decode"))
    begin = time.time()
    for turn in range(t.budget):
        active = [c for c in chains if c["first_success"] is None]
        if not active:
            break
        prompts = []
        for c in active:
            ids, c["start"] = build_multi_turn_prompt(
                tok, messages[c["question_index"]], c["feedbacks"], max_prompt_tokens=t.multi_turn_max_prompt_tokens,
                enable_thinking=cfg.tokenizer.enable_thinking, min_start=c["start"])
            c["trimmed"] = c["start"]
            c["max_prompt_tokens_used"] = max(c["max_prompt_tokens_used"], len(ids))
            prompts.append(ids)
        rows = 1 << (len(prompts) - 1).bit_length()  # pad to a power of two: few distinct compiles
        padded = prompts + [prompts[0]] * (rows - len(prompts))
        out = rollout.generate(actor, weights, padded, _key(cfg.seed, "multi_turn", turn), policy,
                               prompt_buckets=tuple(t.multi_turn_prompt_buckets))
        tokens, lengths = np.asarray(out.tokens)[:len(active)], np.asarray(out.lengths)[:len(active)]
        texts = rollout.completion_texts(tok, tokens, lengths)
        truncated = list(np.asarray(out.finish_reason)[:len(active)] == sampling.FINISH_LENGTH)
        scores, _ = rollout.score_rows(actor, [problems[c["question_index"]] for c in active], texts, truncated)
        for c, score in zip(active, scores):
            if score.reward >= cfg.reprompt.success_threshold:
                c["first_success"] = turn + 1
            elif score.feedback and score.feedback.strip():
                c["feedbacks"].append(score.feedback)
        if (turn + 1) % max(1, t.budget // 8) == 0:
            log(f"multi-turn: turn {turn + 1}/{t.budget}, {sum(c['first_success'] is not None for c in chains)}/"
                f"{len(chains)} chains solved ({time.time() - begin:.1f}s)")
    return [{"question_index": c["question_index"], "seed": c["seed"], "first_success": c["first_success"],
             "attempts": c["first_success"] or t.budget, "feedbacks_seen": len(c["feedbacks"]),
             "feedbacks_dropped": c["trimmed"], "max_prompt_tokens_used": c["max_prompt_tokens_used"]}
            for c in chains]


# --------------------------------------------------------------------------- the whole comparison


def run_ttt(cfg, *, devices=None, log: Callable[..., None] = print) -> dict:
    """Run every method in cfg.ttt.methods on the question set; write results.csv, discovery.json and
    discovery.png to cfg.run_dir (process 0); return {"rows", "curves", "summaries", "meta"}. On several
    processes every process runs the same comparison on the same data (`rollout.sample`: each scores its
    block of the attempts) and returns the same results."""
    t = cfg.ttt
    os.makedirs(cfg.run_dir, exist_ok=True)
    begin = time.time()
    run, params0, close = setup(cfg, devices=devices, log=log)
    try:
        init_fp = params_fingerprint(params0)
        problems, question_info = load_questions(run, params0, log=log)
        names = [str(p.get("id", i)) for i, p in enumerate(problems)]
        log(f"ttt: {len(problems)} questions x {t.seeds} seeds, budget {t.budget} attempts, methods {tuple(t.methods)}")
        rows, curves, timings, trace = [], [], {}, []
        if "sdpo" in t.methods:
            start = time.time()
            optimizer = ts.make_optimizer(cfg.optim.lr, cfg.optim.warmup_steps, weight_decay=cfg.optim.weight_decay,
                                          b1=cfg.optim.b1, b2=cfg.optim.b2, grad_clip=cfg.optim.grad_clip)
            train_step = ts.make_train_step(run.actor.model_cfg, run.settings, optimizer, run.actor.mesh)
            firsts = []
            for q, problem in enumerate(problems):
                per_seed = []
                for seed in range(t.seeds):
                    result = sdpo_on_question(run, params0, problem, seed=seed, question_index=q, optimizer=optimizer,
                                              train_step=train_step, trace=trace)
                    per_seed.append(result["first_success"])
                    rows.append({"method": "sdpo", "question": names[q], "question_index": q, "seed": seed, **result})
                firsts.append(per_seed)
                log(f"sdpo: question {q} first successes {per_seed} ({time.time() - start:.1f}s)")
            timings["sdpo_wall_s"] = time.time() - start
            curves.append(dsc.discovery_curve("sdpo", firsts, t.budget, num_resamples=t.bootstrap_resamples,
                                              confidence=t.confidence, seed=cfg.seed))
        if "best_of_k" in t.methods:
            start = time.time()
            counts = sample_success_counts(run, params0, problems, t.best_of_k_samples, key=_key(cfg.seed, "best_of_k"))
            for q, c in enumerate(counts):
                rows.append({"method": "best_of_k", "question": names[q], "question_index": q,
                             "samples": int(t.best_of_k_samples), "successes": int(c),
                             f"pass@{t.budget}": dsc.pass_at_k(t.best_of_k_samples, int(c), t.budget)})
            timings["best_of_k_wall_s"] = time.time() - start
            log(f"best-of-k: successes per question {counts.tolist()} of {t.best_of_k_samples} "
                f"({timings['best_of_k_wall_s']:.1f}s)")
            curves.append(dsc.pass_at_k_bootstrap_curve(
                "best_of_k", [(t.best_of_k_samples, int(c)) for c in counts], t.budget,
                num_resamples=t.bootstrap_resamples, confidence=t.confidence, seed=cfg.seed))
        if "multi_turn" in t.methods:
            start = time.time()
            chains = multi_turn(run, params0, problems, seeds=t.seeds, log=log)
            for c in chains:
                rows.append({"method": "multi_turn", "question": names[c["question_index"]], **c})
            timings["multi_turn_wall_s"] = time.time() - start
            firsts = [[c["first_success"] for c in chains if c["question_index"] == q] for q in range(len(problems))]
            curves.append(dsc.discovery_curve("multi_turn", firsts, t.budget, num_resamples=t.bootstrap_resamples,
                                              confidence=t.confidence, seed=cfg.seed))
        unchanged = params_fingerprint(params0) == init_fp
        summaries = [dsc.summarize(c, report_ks=t.report_ks, targets=t.targets) for c in curves]
        meta = {"budget": int(t.budget), "seeds": int(t.seeds), "batch_size": int(t.batch_size),
                "questions": names, "question_info": question_info, "methods": list(t.methods),
                "initial_params_fingerprint": init_fp, "initial_params_unchanged": unchanged,
                "wall_s": time.time() - begin, **timings, "config": cfg.to_dict()}
        if jax.process_index() == 0:
            write_outputs(cfg, rows, curves, meta, summaries, trace, title=f"discovery@k: {len(problems)} questions x "
                          f"{t.seeds} seeds")
        log(format_summaries(summaries, t.budget))
        log(f"wrote {cfg.run_dir}/results.csv, discovery.json, discovery.png ({time.time() - begin:.1f}s)")
        return {"rows": rows, "curves": curves, "summaries": summaries, "meta": meta, "problems": problems}
    finally:
        close()


def write_outputs(cfg, rows: list[dict], curves: list, meta: dict, summaries: list[dict], trace: list[dict], *,
                  title: str) -> None:
    """results.csv, discovery.json, discovery.png and (when SDPO ran) sdpo_steps.jsonl in cfg.run_dir."""
    dsc.write_results_csv(os.path.join(cfg.run_dir, "results.csv"), rows)
    dsc.write_curves_json(os.path.join(cfg.run_dir, "discovery.json"), curves, meta=meta, summaries=summaries)
    dsc.plot_discovery(os.path.join(cfg.run_dir, "discovery.png"), curves, title=title)
    if trace:
        import json

        with open(os.path.join(cfg.run_dir, "sdpo_steps.jsonl"), "w") as f:
            f.writelines(json.dumps(dsc._json_value(r)) + "\n" for r in trace)


def format_summaries(summaries: Sequence[dict], budget: int) -> str:
    """A small text table: discovery@k (90 % CI) per method, attempts to reach each target, mean attempts."""
    lines = []
    for s in summaries:
        parts = [f"{s['method']:>10}"]
        for key, value in s.items():
            if key.startswith("discovery@"):
                parts.append(f"{key}={value['mean']:.3f} [{value['lo']:.3f}, {value['hi']:.3f}]")
            elif key.startswith("attempts_to_"):
                parts.append(f"{key}={value if value is not None else f'>{budget}'}")
        if "mean_attempts_to_success" in s:
            parts.append(f"mean_attempts={s['mean_attempts_to_success']:.1f}")
        lines.append("  ".join(parts))
    return "\n".join(lines)


# --------------------------------------------------------------------------- entry


def main(argv: list[str]) -> int:
    from absl import app

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from absl import logging as absl_logging

    from sdpo_jax import config as config_lib

    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax INFO lines drown the progress lines

    from absl import flags

    if not flags.FLAGS["config"].present and not os.path.exists(_DEFAULT):
        print(f"error: no --config given and the default {_DEFAULT} does not exist (configs/ ships with the "
              "repository, not the wheel): pass --config=PATH/TO/configs/ttt_demo.py", file=sys.stderr)
        return 2
    cfg = _CONFIG.value
    try:
        validate_ttt(cfg)  # schema, types, ranges, paths: before jax starts
    except config_lib.ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from sdpo_jax import sharding

    sharding.maybe_initialize_distributed()  # a multi-host slice: every host runs this same command
    try:
        validate_ttt(cfg, num_devices=jax.device_count())
    except config_lib.ConfigError as err:
        if jax.process_index() == 0:
            print(f"error: {err}", file=sys.stderr)
        return 2
    run_ttt(cfg, log=lambda *args: print(*args, flush=True) if jax.process_index() == 0 else None)
    return 0


if __name__ == "__main__":
    from absl import app
    from ml_collections import config_flags

    _DEFAULT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "ttt_demo.py")
    _CONFIG = config_flags.DEFINE_config_file(
        "config", _DEFAULT, "TTT config file (configs/ttt_*.py); override fields with --config.a.b=v.",
        lock_config=True)
    app.run(lambda argv: sys.exit(main(argv) or 0))
