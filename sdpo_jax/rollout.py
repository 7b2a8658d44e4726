"""Rollout: problems -> chat-templated prompts -> `sampling.generate` (n per prompt) -> scores -> a `Rollout`.

    rollout = sample(actor, decode_weights(actor, params), problems, key, actor.rollout_policy)
    metrics, successes = evaluate(actor, params, eval_problems, key)

`Actor` holds what sampling and scoring need (built once by `setup.build_actor`); `SamplingPolicy` is one
way of drawing (the rollout's, the evaluation's, best-of-k's). On several processes every process passes
the same global problems, gets every row back from `generate`, scores only its `sharding.scoring_block`
of the rows and gathers every score (`score_rows`), so every process holds the same `Rollout`.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Sequence

import jax
import numpy as np

from sdpo_jax import sampling, sharding
from sdpo_jax.envs.base import Score
from sdpo_jax.tokenizer import apply_chat_template


@dataclasses.dataclass(frozen=True)
class SamplingPolicy:
    """How one kind of call samples: n completions per problem at this temperature / top-p / top-k, under
    these names for its two programs (`compiled_calls`)."""
    n: int
    temperature: float
    top_p: float
    top_k: int = 0
    program_names: tuple[str, str] = ("prefill", "decode")


@dataclasses.dataclass
class Actor:
    """Everything `sample` needs besides the weights: the model and tokenizer, the environment and its
    scorer, and the generation settings shared by every policy."""
    model_cfg: Any
    mesh: Any
    tokenizer: Any
    env: Any
    scorer: Callable  # (problems, texts, truncated) -> (scores, stats): envs.base.Scorer.score
    eos_ids: tuple[int, ...]
    max_new_tokens: int
    prompt_buckets: tuple[int, ...]
    cache_dtype: str
    programs: sampling.SamplingPrograms  # the weights copy, prefill and decode jits, made once for the mesh
    enable_thinking: bool
    success_threshold: float
    rollout_policy: SamplingPolicy
    eval_policy: SamplingPolicy
    eval_chunk: int  # questions per evaluation call (data.prompts_per_step)


@dataclasses.dataclass
class Rollout:
    """n completions of each problem, rows in group order (row r: problem r // n, sample r % n).

    messages / prompt_ids: per row (a problem's repeated n times); tokens / logprobs [N, C] and lengths [N]
    from `sampling.generate`; texts, rewards [N], feedbacks: the scores; group_ids [N]."""
    messages: list
    prompt_ids: list[list[int]]
    tokens: np.ndarray
    lengths: np.ndarray
    logprobs: np.ndarray
    texts: list[str]
    rewards: np.ndarray
    feedbacks: list
    group_ids: np.ndarray
    score_stats: dict
    time_generate: float
    time_score: float
    decode_steps: int


def prompt_ids_for(actor: Actor, problems: Sequence[dict]) -> tuple[list, list[list[int]]]:
    """(chat messages, chat-templated prompt ids), one per problem."""
    messages = [actor.env.build_prompt(p) for p in problems]
    ids = [apply_chat_template(actor.tokenizer, m, enable_thinking=actor.enable_thinking) for m in messages]
    return messages, ids


def completion_texts(tokenizer, tokens_nc: np.ndarray, lengths_n: np.ndarray) -> list[str]:
    return [tokenizer.decode(list(row[:length]), skip_special_tokens=True)
            for row, length in zip(tokens_nc, lengths_n)]


def score_rows(actor: Actor, row_problems: list[dict], texts: list[str], truncated: list[bool]):
    """(every row's Score, stats summed over processes): on several processes each scores its
    `sharding.scoring_block` of the rows and the scores are gathered, so every process gets them all."""
    if jax.process_count() == 1:
        return actor.scorer(row_problems, texts, truncated)
    block = sharding.scoring_block(len(texts))
    scores, stats = actor.scorer(row_problems[block], texts[block], truncated[block])
    gathered = sharding.gather_objects([[s.to_json() for s in scores], stats])
    scores = [Score.from_json(d) for part in gathered[0::2] for d in part]
    counts = {k: sum(part.get(k, 0) for part in gathered[1::2])
              for k in ("items", "errors", "timeouts", "crashes", "restarts")}
    return scores, {**stats, **counts, "scored_rows": [block.start, block.stop]}


def decode_weights(actor: Actor, params):
    """The weights `generate` reads: a compute-dtype copy without fsdp (rollout.decode_weights "gathered": no
    all-gather of the weights at every decode step), a compute-dtype copy in the parameters' sharding (fp32
    master weights, bf16 compute: half the bytes per step; same values, the forward casts them anyway), or
    the parameters themselves (`SamplingPrograms.weights_copy`, made at set-up). Call it once per set of parameters and
    pass the result to every `sample` with them."""
    copy = actor.programs.weights_copy
    return params if copy is None else copy(params)


def generate(actor: Actor, weights, prompt_ids: list[list[int]], key, policy: SamplingPolicy, *,
             prompt_buckets: tuple[int, ...] | None = None) -> sampling.GenerateOutput:
    """`sampling.generate` with the actor's settings and `policy`, on `weights` (`decode_weights`)."""
    return sampling.generate(
        actor.model_cfg, weights, prompt_ids, max_new_tokens=actor.max_new_tokens, temperature=policy.temperature,
        top_p=policy.top_p, top_k=policy.top_k, eos_ids=actor.eos_ids, n=policy.n, rng=key,
        prompt_buckets=prompt_buckets or actor.prompt_buckets, mesh=actor.mesh, cache_dtype=actor.cache_dtype,
        pad_id=actor.tokenizer.pad_token_id, program_names=policy.program_names, programs=actor.programs)


def sample(actor: Actor, weights, problems: list[dict], key, policy: SamplingPolicy, *,
           first_group_id: int = 0) -> Rollout:
    """Generate `policy.n` completions per problem from `weights` (`decode_weights`) and score them; a group's
    rows are contiguous, group ids count from `first_group_id`. On several processes every process passes
    the same (global) problems and gets every row and score back."""
    n = policy.n
    messages, prompt_ids = prompt_ids_for(actor, problems)
    start = time.time()
    out = generate(actor, weights, prompt_ids, key, policy)
    tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
    generate_s = time.time() - start
    texts = completion_texts(actor.tokenizer, tokens, lengths)
    truncated = list(np.asarray(out.finish_reason) == sampling.FINISH_LENGTH)
    row_problems = [p for p in problems for _ in range(n)]
    start = time.time()
    scores, score_stats = score_rows(actor, row_problems, texts, truncated)
    return Rollout(messages=[m for m in messages for _ in range(n)], prompt_ids=[p for p in prompt_ids for _ in range(n)],
                   tokens=tokens, lengths=lengths, logprobs=np.asarray(out.logprobs), texts=texts,
                   rewards=np.array([s.reward for s in scores], np.float32), feedbacks=[s.feedback for s in scores],
                   group_ids=np.repeat(np.arange(len(problems)) + first_group_id, n), score_stats=score_stats,
                   time_generate=generate_s, time_score=time.time() - start, decode_steps=int(out.num_decode_steps))


def evaluate(actor: Actor, params, problems: list[dict], key) -> tuple[dict, np.ndarray]:
    """(metrics, successes [Q] int): avg@k (mean success over k samples per question: the pass@1
    estimate), its standard error over questions, pass@k; and each question's number of successes.

    Chunks of `actor.eval_chunk` questions (`sample`: the same global numbers on every process)."""
    policy, per_call = actor.eval_policy, max(actor.eval_chunk, 1)
    weights = decode_weights(actor, params)  # once for every chunk
    rewards = []
    for start in range(0, len(problems), per_call):
        chunk = problems[start:start + per_call]
        key, chunk_key = jax.random.split(key)
        rewards.append(sample(actor, weights, chunk, chunk_key, policy).rewards.reshape(len(chunk), policy.n))
    success = np.concatenate(rewards) >= actor.success_threshold
    per_question = success.mean(1)
    metrics = {"eval/accuracy": float(success.mean()), f"eval/pass@{policy.n}": float(success.any(1).mean()),
               "eval/accuracy_se": float(per_question.std(ddof=1) / np.sqrt(len(success))) if len(success) > 1 else 0.0,
               "eval/questions": len(success)}
    return metrics, success.sum(1).astype(np.int64)
