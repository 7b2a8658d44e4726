"""Test-time SDPO (paper §5, docs/ALGORITHM.md §7): solve one hard question by self-distilling on it, and the
best-of-k and multi-turn baselines on the same model and attempt budget.

    python -m sdpo_jax.ttt --config=configs/ttt_demo.py [--config.ttt.seeds=3 ...]

This module is the comparison over typed settings (`TTTSettings`, `TTTRun`, built by `setup.build_ttt`);
`sdpo_jax/ttt/__main__.py` is the command line.

For each question and seed, SDPO starts from the initial weights (the EMA teacher initialised to the
same) and repeats: sample a batch of attempts (16), score them with feedback, stop at the first
success; otherwise take one SDPO step on the batch (the teacher sees the environment feedback, no
sibling has succeeded) and update the EMA teacher. The first success is indexed counting every
attempt: batch b (0-based), in-batch position j (1-based, the sampler's row order) gives b*16 + j.

Baselines, from the same initial weights:
  * best-of-k: N >= budget i.i.d. attempts per question, the unbiased pass@k estimator;
  * multi-turn: one attempt per turn, re-prompted with the question and all past feedback (never past
    attempts), the oldest feedback dropped first to fit `ttt.multi_turn_max_prompt_tokens`.
Outputs in the run directory: results.csv (one row per method/question/seed), discovery.json (curves with
bootstrap CIs over seeds and summaries) and discovery.png. Estimators live in `sdpo_jax/discovery.py`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sdpo_jax import batch as batch_lib
from sdpo_jax import discovery as dsc
from sdpo_jax import rollout, sampling
from sdpo_jax import train_step as ts
from sdpo_jax.reprompt import FEEDBACK_TEMPLATE, INSTRUCTION
from sdpo_jax.run_files import run_path, write_text
from sdpo_jax.tokenizer import render_chat

METHODS = ("sdpo", "best_of_k", "multi_turn")


@dataclasses.dataclass(frozen=True)
class TTTSettings:
    """The comparison's settings (config ttt.*, with seed and run_dir): which
    methods, how many seeds and attempts per (question, seed), the SDPO batch, best-of-k's draws, the
    selection of hard questions, the multi-turn prompt budget, the bootstrap; `config` the resolved config
    as a plain dict (written to discovery.json)."""
    methods: tuple[str, ...]
    seed: int
    seeds: int
    budget: int
    batch_size: int
    best_of_k_samples: int
    sample_rows: int
    num_questions: int
    select_samples: int
    select_min_rate: float
    select_max_rate: float
    multi_turn_max_prompt_tokens: int
    multi_turn_prompt_buckets: tuple[int, ...]
    bootstrap_resamples: int
    confidence: float
    report_ks: tuple[int, ...]
    targets: tuple[float, ...]
    run_dir: str
    config: dict


@dataclasses.dataclass
class TTTRun:
    """What every method needs: the settings, the actor (model, tokenizer, env, scorer, the rollout's sampling
    policy, the success threshold), the SDPO step's jitted programs (made once) and its batch settings."""
    settings: TTTSettings
    actor: rollout.Actor
    train_step: ts.TrainStep
    batch_settings: batch_lib.BatchSettings


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


def select_questions(run: TTTRun, params0, rows: list[dict], *, log: Callable[..., None] = print
                     ) -> tuple[list[dict], dict]:
    """The question set from the candidate `rows`: with `select_samples`, only those whose success rate under
    the initial model over that many draws (independent of best-of-k's) lies in [select_min_rate,
    select_max_rate]; then the first `num_questions` (0: all)."""
    t = run.settings
    info = {"candidates": len(rows)}
    if t.select_samples:
        start = time.time()
        counts = sample_success_counts(run, params0, rows, t.select_samples, key=_key(t.seed, "select"))
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


def _policy(run: TTTRun, n: int, program_names: tuple[str, str] = ("prefill", "decode")) -> rollout.SamplingPolicy:
    """The rollout's sampling (temperature, top-p, top-k) with n samples per prompt."""
    return dataclasses.replace(run.actor.rollout_policy, n=n, program_names=program_names)


# --------------------------------------------------------------------------- best-of-k / selection


def sample_success_counts(run: TTTRun, params, problems: Sequence[dict], num_samples: int, *, key) -> np.ndarray:
    """Successes among `num_samples` i.i.d. attempts per problem, [Q] int (rollout sampling settings)."""
    t = run.settings
    per_call = max(1, min(num_samples, t.sample_rows // max(len(problems), 1) or 1))
    group = max(1, t.sample_rows // per_call)
    counts = np.zeros(len(problems), np.int64)
    weights = rollout.decode_weights(run.actor, params)  # once for every call
    for g0 in range(0, len(problems), group):
        chunk = list(problems[g0:g0 + group])
        done = 0
        while done < num_samples:
            n = min(per_call, num_samples - done)
            out = rollout.sample(run.actor, weights, chunk, jax.random.fold_in(key, g0 * 1_000_003 + done),
                                 _policy(run, n, ("best_of_k_prefill", "best_of_k_decode")))
            ok = (out.rewards >= run.actor.success_threshold).reshape(len(chunk), n)
            counts[g0:g0 + len(chunk)] += ok.sum(axis=1)
            done += n
    return counts


# --------------------------------------------------------------------------- test-time SDPO


def sdpo_on_question(run: TTTRun, params0, problem: dict, *, seed: int, question_index: int,
                     trace: list | None = None) -> dict:
    """One (question, seed) run of test-time SDPO from `params0` (never modified). Returns the first
    success index (None when the budget ran out), the attempts and steps taken, and fingerprints of
    the weights at the start and the end."""
    t, actor = run.settings, run.actor
    start = time.time()
    state = run.train_step.init_state(jax.tree.map(jnp.copy, params0))
    start_fp = params_fingerprint(state.params)
    attempts, steps, first = 0, 0, None
    while attempts < t.budget:
        key = _key(t.seed, "sdpo", question_index, seed, steps)
        roll = rollout.sample(actor, rollout.decode_weights(actor, state.params), [problem], key,
                              _policy(run, t.batch_size))
        counted = min(t.batch_size, t.budget - attempts)  # the last batch may overrun the budget
        first = dsc.first_success_index(roll.rewards[:counted], actor.success_threshold, offset=attempts)
        attempts += counted
        if first is not None or attempts >= t.budget:
            break
        batch, reprompt_metrics, _ = batch_lib.build(roll, actor.tokenizer, run.batch_settings)
        state, metrics = ts.update_on_generation_batch(run.train_step, state, batch)
        steps += 1
        if trace is not None:
            trace.append({"question_index": question_index, "seed": seed, "step": steps,
                          "reward": float(roll.rewards.mean()),
                          **{k: float(np.mean(np.asarray(jax.device_get(v)))) for k, v in metrics.items()},
                          "feedback_used_fraction": reprompt_metrics.get("feedback_used_fraction")})
    return {"first_success": first, "attempts": attempts, "steps": steps, "start_fingerprint": start_fp,
            "end_fingerprint": params_fingerprint(state.params), "wall_s": time.time() - start}


# --------------------------------------------------------------------------- multi-turn


def multi_turn(run: TTTRun, params0, problems: Sequence[dict], *, seeds: int,
               log: Callable[..., None] = print) -> list[dict]:
    """Sequential multi-turn chains, one per (question, seed), batched across chains: each turn every
    unsolved chain makes one attempt from its feedback-history prompt. Returns one record per chain."""
    t, actor = run.settings, run.actor
    tok = actor.tokenizer
    chains = [{"question_index": q, "seed": s, "feedbacks": [], "start": 0, "first_success": None,
               "max_prompt_tokens_used": 0, "trimmed": 0}
              for q in range(len(problems)) for s in range(seeds)]
    messages = [actor.env.build_prompt(p) for p in problems]
    weights = rollout.decode_weights(actor, params0)
    policy = _policy(run, 1, ("multi_turn_prefill", "multi_turn_decode"))
    begin = time.time()
    for turn in range(t.budget):
        active = [c for c in chains if c["first_success"] is None]
        if not active:
            break
        prompts = []
        for c in active:
            ids, c["start"] = build_multi_turn_prompt(
                tok, messages[c["question_index"]], c["feedbacks"], max_prompt_tokens=t.multi_turn_max_prompt_tokens,
                enable_thinking=actor.enable_thinking, min_start=c["start"])
            c["trimmed"] = c["start"]
            c["max_prompt_tokens_used"] = max(c["max_prompt_tokens_used"], len(ids))
            prompts.append(ids)
        rows = 1 << (len(prompts) - 1).bit_length()  # pad to a power of two: few distinct compiles
        padded = prompts + [prompts[0]] * (rows - len(prompts))
        out = rollout.generate(actor, weights, padded, _key(t.seed, "multi_turn", turn), policy,
                               prompt_buckets=t.multi_turn_prompt_buckets)
        tokens, lengths = np.asarray(out.tokens)[:len(active)], np.asarray(out.lengths)[:len(active)]
        texts = rollout.completion_texts(tok, tokens, lengths)
        truncated = list(np.asarray(out.finish_reason)[:len(active)] == sampling.FINISH_LENGTH)
        scores, _ = rollout.score_rows(actor, [problems[c["question_index"]] for c in active], texts, truncated)
        for c, score in zip(active, scores):
            if score.reward >= actor.success_threshold:
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


def compare(run: TTTRun, params0, candidates: list[dict], *, log: Callable[..., None] = print) -> dict:
    """Run every method in the settings on the questions selected from `candidates`; write results.csv,
    discovery.json and discovery.png to the run directory (process 0); return {"rows", "curves", "summaries",
    "meta", "problems"}. On several processes every process runs the same comparison on the same data
    (`rollout.sample`: each scores its block of the attempts) and returns the same results."""
    t = run.settings
    run_path(t.run_dir).mkdir(parents=True, exist_ok=True)
    begin = time.time()
    init_fp = params_fingerprint(params0)
    problems, question_info = select_questions(run, params0, candidates, log=log)
    names = [str(p.get("id", i)) for i, p in enumerate(problems)]
    log(f"ttt: {len(problems)} questions x {t.seeds} seeds, budget {t.budget} attempts, methods {tuple(t.methods)}")
    rows, curves, timings, trace = [], [], {}, []
    if "sdpo" in t.methods:
        start = time.time()
        firsts = []
        for q, problem in enumerate(problems):
            per_seed = []
            for seed in range(t.seeds):
                result = sdpo_on_question(run, params0, problem, seed=seed, question_index=q, trace=trace)
                per_seed.append(result["first_success"])
                rows.append({"method": "sdpo", "question": names[q], "question_index": q, "seed": seed, **result})
            firsts.append(per_seed)
            log(f"sdpo: question {q} first successes {per_seed} ({time.time() - start:.1f}s)")
        timings["sdpo_wall_s"] = time.time() - start
        curves.append(dsc.discovery_curve("sdpo", firsts, t.budget, num_resamples=t.bootstrap_resamples,
                                          confidence=t.confidence, seed=t.seed))
    if "best_of_k" in t.methods:
        start = time.time()
        counts = sample_success_counts(run, params0, problems, t.best_of_k_samples, key=_key(t.seed, "best_of_k"))
        for q, c in enumerate(counts):
            rows.append({"method": "best_of_k", "question": names[q], "question_index": q,
                         "samples": int(t.best_of_k_samples), "successes": int(c),
                         f"pass@{t.budget}": dsc.pass_at_k(t.best_of_k_samples, int(c), t.budget)})
        timings["best_of_k_wall_s"] = time.time() - start
        log(f"best-of-k: successes per question {counts.tolist()} of {t.best_of_k_samples} "
            f"({timings['best_of_k_wall_s']:.1f}s)")
        curves.append(dsc.pass_at_k_bootstrap_curve(
            "best_of_k", [(t.best_of_k_samples, int(c)) for c in counts], t.budget,
            num_resamples=t.bootstrap_resamples, confidence=t.confidence, seed=t.seed))
    if "multi_turn" in t.methods:
        start = time.time()
        chains = multi_turn(run, params0, problems, seeds=t.seeds, log=log)
        for c in chains:
            rows.append({"method": "multi_turn", "question": names[c["question_index"]], **c})
        timings["multi_turn_wall_s"] = time.time() - start
        firsts = [[c["first_success"] for c in chains if c["question_index"] == q] for q in range(len(problems))]
        curves.append(dsc.discovery_curve("multi_turn", firsts, t.budget, num_resamples=t.bootstrap_resamples,
                                          confidence=t.confidence, seed=t.seed))
    unchanged = params_fingerprint(params0) == init_fp
    summaries = [dsc.summarize(c, report_ks=t.report_ks, targets=t.targets) for c in curves]
    meta = {"budget": int(t.budget), "seeds": int(t.seeds), "batch_size": int(t.batch_size),
            "questions": names, "question_info": question_info, "methods": list(t.methods),
            "initial_params_fingerprint": init_fp, "initial_params_unchanged": unchanged,
            "wall_s": time.time() - begin, **timings, "config": t.config}
    if jax.process_index() == 0:
        write_outputs(t.run_dir, rows, curves, meta, summaries, trace,
                      title=f"discovery@k: {len(problems)} questions x {t.seeds} seeds")
    log(format_summaries(summaries, t.budget))
    log(f"wrote {t.run_dir}/results.csv, discovery.json, discovery.png ({time.time() - begin:.1f}s)")
    return {"rows": rows, "curves": curves, "summaries": summaries, "meta": meta, "problems": problems}


def write_outputs(run_dir: str, rows: list[dict], curves: list, meta: dict, summaries: list[dict], trace: list[dict],
                  *, title: str) -> None:
    """results.csv, discovery.json, discovery.png and (when SDPO ran) sdpo_steps.jsonl in `run_dir` (local or
    gs://)."""
    dsc.write_results_csv(os.path.join(run_dir, "results.csv"), rows)
    dsc.write_curves_json(os.path.join(run_dir, "discovery.json"), curves, meta=meta, summaries=summaries)
    dsc.plot_discovery(os.path.join(run_dir, "discovery.png"), curves, title=title)
    if trace:
        lines = "".join(json.dumps(dsc._json_value(r)) + "\n" for r in trace)
        write_text(os.path.join(run_dir, "sdpo_steps.jsonl"), lines)


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
