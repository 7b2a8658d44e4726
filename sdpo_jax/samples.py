"""Sample logs: a few rows of a step's batch as text, for reading what the policy and its teacher saw.

Every `logging.samples_every` steps (and at step 1) the loop passes the step's `rollout.Rollout`, the
`batch.RolloutBatch` it trained on and the `reprompt.TeacherPrompts` to `sample_records`; the logger writes
each record as one line of `samples.jsonl` in the run directory and the step's records as one TensorBoard
text summary (tag "samples"). Multi-process runs: process 0 writes; every process holds the same global
batch, so the rows are the global batch's (sampled on any host), chosen the same way on any process count.

A record: step, row (in the batch), group_id, prompt (the detokenised prompt_ids row), completion (the
decoded sample), reward, feedback (the environment's `Score.feedback` for the sample, None when it gave
none), teacher_prompt (the detokenised teacher_prompt_ids row the step trained on, special tokens kept),
teacher_context ("solution", "feedback" or "none") and self_distilled (the row's sd_mask).
"""

from __future__ import annotations

import numpy as np


def chosen_rows(num_rows: int, count: int) -> list[int]:
    """`count` rows spread evenly over the batch (first and last included), so several groups show."""
    if count >= num_rows:
        return list(range(num_rows))
    return sorted({int(round(x)) for x in np.linspace(0, num_rows - 1, count)})


def detokenise(tokenizer, ids, mask) -> str:
    """The text of a padded row's real tokens (mask 1), special tokens (the chat template's) kept."""
    return tokenizer.decode([int(t) for t, m in zip(ids, mask) if m], skip_special_tokens=False)


def sample_records(step: int, roll, batch, teacher_prompts, tokenizer, count: int) -> list[dict]:
    """The records of `count` rows of the batch built from `roll` at `step` (1-based, as logged)."""
    records = []
    for row in chosen_rows(len(roll.texts), count):
        feedback = roll.feedbacks[row] if roll.feedbacks is not None else None
        records.append({
            "step": step, "row": row, "group_id": int(batch.group_ids[row]),
            "prompt": detokenise(tokenizer, batch.prompt_ids[row], batch.prompt_mask[row]),
            "completion": roll.texts[row], "reward": float(roll.rewards[row]), "feedback": feedback,
            "teacher_prompt": detokenise(tokenizer, batch.teacher_prompt_ids[row], batch.teacher_prompt_mask[row]),
            "teacher_context": teacher_prompts.contexts[row] if teacher_prompts.contexts else None,
            "self_distilled": bool(batch.sd_mask[row])})
    return records


def markdown(records: list[dict]) -> str:
    """One step's records as Markdown for TensorBoard's text dashboard (code blocks keep the text as is)."""
    parts = []
    for r in records:
        parts.append(f"### row {r['row']} (group {r['group_id']}): reward {r['reward']:.3g}, "
                     f"teacher context {r['teacher_context']}")
        for key in ("prompt", "completion", "feedback", "teacher_prompt"):
            parts.append(f"**{key}**\n\n```\n{r[key]}\n```")
    return "\n\n".join(parts)
