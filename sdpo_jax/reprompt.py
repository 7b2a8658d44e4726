"""Reprompting: the teacher prompt of every sample (docs/ALGORITHM.md §3; official `ray_trainer.py`).

For sample i of a generation batch:
  * a sibling counts as successful when its reward >= `success_threshold`; the demonstration is the
    first successful sample of i's group in batch order, skipping i itself when
    `dont_reprompt_on_self_success` (the yaml default) -- the student's own attempt is never shown;
    with `include_solution=False` no demonstration is ever used (a feedback-only teacher);
  * `<think>...</think>` and the whitespace after it are removed from the demonstration;
  * the environment feedback is used when `include_feedback`, when it is a non-blank string, and
    (with `feedback_only_without_solution`) only when there is no demonstration;
  * the teacher messages are the sample's original messages up to its last one (the system
    turn(s)) plus ONE new user turn: prompt + solution block + feedback block + instruction, with the
    official yaml texts by default; with neither context the user turn is the original prompt and
    the sample's self-distillation mask is 0;
  * the messages are chat-templated with `add_generation_prompt=True` and `enable_thinking`.

Truncation differs from the official right-truncation (which can cut the assistant header): when a
teacher prompt is longer than `max_len`, the demonstration / feedback text is shortened (its tail is
cut, the sample is counted in `num_trimmed`); the original prompt, the template text and the
assistant header are never cut. If the prompt does not fit even with empty context, a ValueError
names the sample.
"""
from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Hashable, Sequence

import numpy as np

from sdpo_jax import defaults
from sdpo_jax.tokenizer import render_chat

# The effective official texts (verl/trainer/config/actor/actor.yaml block scalars, `|-`).
SOLUTION_TEMPLATE = "\nCorrect solution:\n\n{successful_previous_attempt}"
FEEDBACK_TEMPLATE = (
    "\nThe following is feedback from your unsuccessful earlier attempt:\n\n{feedback_raw}")
INSTRUCTION = "\n\nCorrectly solve the original question."

_THINK_RE = re.compile(r"<think>.*?</think>\s*", flags=re.DOTALL)


@dataclass
class TeacherPrompts:
    ids: list[list[int]]  # templated teacher prompt per sample, unpadded, ends with the header
    sd_mask: np.ndarray  # [N] float32: 1 when the sample has a demonstration or used feedback
    metrics: dict[str, float] = field(default_factory=dict)
    num_trimmed: int = 0  # samples whose demonstration / feedback text was shortened to fit max_len
    texts: list[str] = field(default_factory=list)  # the new user turn's text per sample
    contexts: list[str] = field(default_factory=list)  # per sample: "solution", "feedback" or "none"


@dataclass(frozen=True)
class RepromptSettings:
    """The keyword settings of `build_teacher_prompts` a run fixes (config reprompt.*, tokenizer.enable_thinking;
    max_len None = no limit)."""
    success_threshold: float
    dont_reprompt_on_self_success: bool
    remove_thinking: bool
    include_feedback: bool
    include_solution: bool
    feedback_only_without_solution: bool
    enable_thinking: bool
    max_len: int


def strip_thinking(text: str) -> str:
    """Delete every `<think>...</think>` block and the whitespace that follows it."""
    return _THINK_RE.sub("", text)


def _check_template(name: str, template: str, placeholder: str, default: str) -> None:
    if "{" + placeholder + "}" not in template:
        raise ValueError(f"build_teacher_prompts: {name}={template!r} must contain the field "
                         f"'{{{placeholder}}}' (the official default is {default!r})")


def _fill(template: str, placeholder: str, value: str) -> str:
    # str.format semantics for the one field (so yaml templates port over), but literal braces in
    # the rest of a user's template are left alone instead of raising.
    return template.replace("{" + placeholder + "}", value)


def _water_fill(lengths: Sequence[int], budget: int) -> list[int]:
    """Per-part caps with sum <= budget: short parts keep everything, long parts share the rest."""
    caps = [0] * len(lengths)
    order = sorted(range(len(lengths)), key=lambda k: lengths[k])
    left = budget
    for rank, k in enumerate(order):
        share = left // (len(order) - rank)
        caps[k] = min(lengths[k], share)
        left -= caps[k]
    return caps


def _plain(x: Any) -> Any:
    return x.item() if isinstance(x, np.generic) else x


def _token_ends(tokenizer, text: str) -> list[int]:
    """Character offset where each token of `text` ends (proportional estimate without offsets)."""
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ends = [e for _, e in enc["offset_mapping"]]
    except (NotImplementedError, KeyError, TypeError, ValueError):
        n = max(len(tokenizer(text, add_special_tokens=False)["input_ids"]), 1)
        ends = [round(len(text) * (k + 1) / n) for k in range(n)]
    return ends or [len(text)]


def build_teacher_prompts(
    tokenizer,
    messages_per_sample: Sequence[Sequence[dict[str, Any]]],
    completions_text: Sequence[str | Sequence[int]],
    rewards: Sequence[float] | np.ndarray,
    feedbacks: Sequence[str | None] | None,
    group_ids: Sequence[Hashable],
    *,
    success_threshold: float = defaults.SUCCESS_THRESHOLD,
    dont_reprompt_on_self_success: bool = True,
    remove_thinking: bool = True,
    include_feedback: bool = True,
    include_solution: bool = True,
    feedback_only_without_solution: bool = True,
    solution_template: str = SOLUTION_TEMPLATE,
    feedback_template: str = FEEDBACK_TEMPLATE,
    instruction: str = INSTRUCTION,
    enable_thinking: bool = False,
    max_len: int = defaults.REPROMPT_MAX_LEN,
) -> TeacherPrompts:
    """Teacher prompt ids, self-distillation mask and reprompt metrics for N samples.

    `messages_per_sample[i]` is sample i's original chat (system turn(s) then the user turn);
    `completions_text[i]` its completion, as text decoded with `skip_special_tokens=True` (token ids
    are decoded that way here); `rewards[i]` its summed reward; `feedbacks[i]` the environment
    feedback string (None / "" when none); `group_ids[i]` its question's id.
    """
    n = len(messages_per_sample)
    lengths = {"completions_text": completions_text, "rewards": rewards, "group_ids": group_ids}
    if feedbacks is not None:
        lengths["feedbacks"] = feedbacks
    for name, seq in lengths.items():
        if len(seq) != n:
            raise ValueError(f"build_teacher_prompts: len({name})={len(seq)} but "
                             f"len(messages_per_sample)={n}; pass one entry per sample")
    if n == 0:
        raise ValueError("build_teacher_prompts: empty batch")
    _check_template("solution_template", solution_template, "successful_previous_attempt",
                    SOLUTION_TEMPLATE)
    _check_template("feedback_template", feedback_template, "feedback_raw", FEEDBACK_TEMPLATE)
    if max_len <= 0:
        raise ValueError(f"build_teacher_prompts: max_len={max_len} must be positive")
    for i, msgs in enumerate(messages_per_sample):
        if not msgs or not isinstance(msgs[-1], dict) or msgs[-1].get("role") != "user":
            raise ValueError(
                f"build_teacher_prompts: sample {i} (group {_plain(group_ids[i])!r}): the last "
                f"message must be the user turn with the question, got {msgs[-1:]!r}")
    rewards = np.asarray(rewards, dtype=np.float64)
    if rewards.ndim == 2:  # per-token rewards: a rollout's reward is their sum (official)
        rewards = rewards.sum(axis=-1)

    texts = [c if isinstance(c, str) else tokenizer.decode(list(c), skip_special_tokens=True)
             for c in completions_text]

    success_by_group: dict[Hashable, list[int]] = defaultdict(list)
    for i, g in enumerate(group_ids):
        if rewards[i] >= success_threshold:
            success_by_group[g].append(i)

    solutions: list[str | None] = []
    for i, g in enumerate(group_ids):
        candidates = [j for j in success_by_group[g]
                      if include_solution and not (dont_reprompt_on_self_success and j == i)]
        if not candidates:
            solutions.append(None)
            continue
        demo = texts[candidates[0]]
        solutions.append(strip_thinking(demo) if remove_thinking else demo)

    available: list[str | None] = [None] * n
    if include_feedback and feedbacks is not None:
        for i, fb in enumerate(feedbacks):
            if isinstance(fb, str) and fb.strip():
                available[i] = fb
    used = [available[i] is not None
            and not (feedback_only_without_solution and solutions[i] is not None)
            for i in range(n)]
    sd_mask = np.array([solutions[i] is not None or used[i] for i in range(n)], dtype=np.float32)

    def user_text(i: int, bodies: Sequence[str]) -> str:
        prompt = messages_per_sample[i][-1]["content"]
        if not sd_mask[i]:
            return prompt
        parts, k = [], 0
        if solutions[i] is not None:
            parts.append(_fill(solution_template, "successful_previous_attempt", bodies[k]))
            k += 1
        if used[i]:
            parts.append(_fill(feedback_template, "feedback_raw", bodies[k]))
        return prompt + "".join(parts) + instruction

    def bodies_of(i: int) -> list[str]:
        out = [solutions[i]] if solutions[i] is not None else []
        return out + ([available[i]] if used[i] else [])

    def teacher_messages(i: int, text: str) -> list[dict[str, Any]]:
        msgs = list(messages_per_sample[i])
        return msgs[:-1] + [{"role": "user", "content": text}]

    user_texts = [user_text(i, bodies_of(i)) for i in range(n)]
    rendered = [render_chat(tokenizer, teacher_messages(i, user_texts[i]),
                            enable_thinking=enable_thinking) for i in range(n)]
    ids = [list(x) for x in tokenizer(rendered, add_special_tokens=False)["input_ids"]]

    def encode(i: int, bodies: Sequence[str]) -> list[int]:
        text = render_chat(tokenizer, teacher_messages(i, user_text(i, bodies)),
                           enable_thinking=enable_thinking)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    num_trimmed = 0
    for i in range(n):
        if len(ids[i]) <= max_len:
            continue
        full = bodies_of(i)
        where = f"sample {i} (group {_plain(group_ids[i])!r})"
        empty_len = len(encode(i, [""] * len(full)))
        if not full or empty_len > max_len:
            raise ValueError(
                f"build_teacher_prompts: {where}: the teacher prompt needs {empty_len} tokens "
                f"without any demonstration or feedback, more than max_len={max_len}; raise max_len "
                "(config: the teacher's max prompt length) or shorten the question/system prompt.")
        # Cut the bodies' tails in token units (water-filled), shrinking the budget by the
        # measured excess until the re-templated prompt fits; budget 0 fits (checked above).
        ends = [_token_ends(tokenizer, b) for b in full]
        budget = sum(len(e) for e in ends) - (len(ids[i]) - max_len)
        while True:
            budget = max(budget, 0)
            caps = _water_fill([len(e) for e in ends], budget)
            cut = [b[:e[c - 1]] if c else "" for b, e, c in zip(full, ends, caps)]
            cand = encode(i, cut)
            if len(cand) <= max_len:
                break
            if budget == 0:  # unreachable: the empty-context length was checked above
                raise ValueError(f"build_teacher_prompts: {where}: cannot fit max_len={max_len}")
            budget -= len(cand) - max_len
        user_texts[i] = user_text(i, cut)
        ids[i] = cand
        num_trimmed += 1

    groups = set(group_ids)
    metrics = {
        "success_group_fraction": sum(1 for g in groups if success_by_group[g]) / len(groups),
        "success_sample_fraction": sum(s is not None for s in solutions) / n,
        "feedback_available_fraction": sum(f is not None for f in available) / n,
        "feedback_used_fraction": sum(used) / n,
        "reprompt_sample_fraction": float(sd_mask.mean()),
    }
    contexts = ["solution" if solutions[i] is not None else "feedback" if used[i] else "none" for i in range(n)]
    return TeacherPrompts(ids=ids, sd_mask=sd_mask, metrics=metrics, num_trimmed=num_trimmed,
                          texts=user_texts, contexts=contexts)
