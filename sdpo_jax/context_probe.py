"""How much the self-teacher's context helps: the model's probability of the right first answer token
after a prompt, with and without feedback or a sibling's solution in it.

SDPO only teaches something when the self-teacher, reading feedback or a sibling's correct solution,
puts more mass on a right answer than the student does on the question alone. For environments that
know the reference answer (the synthetic task's `expected_answer`), `first_token_probs` measures that
directly: one forward per prompt, the softmax at its last position, read at the answer's first token.
The warm start's held-out check and the RL loop's `context/*` metrics both use it.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sdpo_jax import models
from sdpo_jax.sampling import pad_to_bucket


@functools.partial(jax.jit, static_argnames=("model_cfg",))
def _last_position_probs(model_cfg, params, ids_bt, mask_bt):
    logits_bv = models.forward(model_cfg, params, ids_bt, mask_bt)[:, -1]
    return jax.nn.softmax(logits_bv.astype(jnp.float32), axis=-1)


def next_token_probs(model_cfg, params, prompts: Sequence[Sequence[int]], *, pad_id: int, buckets,
                     chunk: int = 256) -> np.ndarray:
    """[len(prompts), V] float32: the next-token distribution after each (left-padded) prompt, in chunks
    of `chunk` prompts; a chunk's rows are padded to a power of two and its width to a bucket, so a
    few shapes compile, not one per batch."""
    out = []
    for start in range(0, len(prompts), chunk):
        part = list(prompts[start:start + chunk])
        rows = len(part)
        part += [part[0]] * (max(8, 1 << (rows - 1).bit_length()) - rows)
        ids, mask = pad_to_bucket(part, buckets, pad_id, side="left")
        probs = _last_position_probs(model_cfg, params, ids.astype(np.int32), mask.astype(np.int32))
        out.append(np.asarray(jax.device_get(probs))[:rows])
    return np.concatenate(out) if out else np.zeros((0, model_cfg.vocab_size), np.float32)


def first_token_probs(model_cfg, params, prompts: Sequence[Sequence[int]], first_answer_ids: Sequence[int], *,
                      pad_id: int, buckets) -> tuple[np.ndarray, np.ndarray]:
    """(p [N], hit [N]): the probability of each prompt's right first answer token, and whether that
    token is the argmax."""
    probs = next_token_probs(model_cfg, params, prompts, pad_id=pad_id, buckets=buckets)
    target = np.asarray(first_answer_ids, np.int64)
    rows = np.arange(len(target))
    return probs[rows, target], probs.argmax(-1) == target


def rollout_context_metrics(model_cfg, student_params, teacher_params, prompt_ids, teacher_prompt_ids,
                            contexts: Sequence[str], first_answer_ids: Sequence[int], *, pad_id: int,
                            prompt_buckets, teacher_prompt_buckets) -> dict[str, float]:
    """Per generation batch: the student's probability of the right first answer token after each row's
    prompt, and the teacher's after the row's teacher prompt (`teacher_params`: the teacher's own
    parameters; the trust-region teacher is read from its initial parameters alone), over the rows
    whose teacher prompt carries a sibling's solution or feedback (`contexts`), with the student's on
    the same rows."""
    contexts = np.asarray(contexts)
    p_student, _ = first_token_probs(model_cfg, student_params, prompt_ids, first_answer_ids, pad_id=pad_id,
                                     buckets=prompt_buckets)
    out = {"context/p_right_student": float(p_student.mean())}
    for kind in ("solution", "feedback"):
        rows = np.flatnonzero(contexts == kind)
        if not len(rows):
            continue
        p_teacher, _ = first_token_probs(model_cfg, teacher_params, [teacher_prompt_ids[r] for r in rows],
                                         [first_answer_ids[r] for r in rows], pad_id=pad_id,
                                         buckets=teacher_prompt_buckets)
        out[f"context/p_right_teacher_{kind}"] = float(p_teacher.mean())
        out[f"context/p_right_student_{kind}"] = float(p_student[rows].mean())
    return out


def context_metrics(actor, state, problems: Sequence[dict], roll, teacher_prompts,
                    teacher_prompt_buckets: Sequence[int]) -> dict[str, float]:
    """`context/*` metrics (`rollout_context_metrics`) of one generation batch (a `rollout.Rollout` and its
    `reprompt.TeacherPrompts`) for environments that know the reference answer (`expected_answer`); {}
    otherwise and on several processes (the probe runs on one process's devices)."""
    if jax.process_count() > 1 or not hasattr(actor.env, "expected_answer"):
        return {}
    tok, n = actor.tokenizer, actor.rollout_policy.n
    first_ids = [tok(actor.env.expected_answer(p), add_special_tokens=False)["input_ids"][0] for p in problems]
    teacher_params = state.teacher_params if state.teacher_params is not None else state.params
    return rollout_context_metrics(
        actor.model_cfg, state.params, teacher_params, roll.prompt_ids, teacher_prompts.ids, teacher_prompts.contexts,
        [i for i in first_ids for _ in range(n)], pad_id=tok.pad_token_id, prompt_buckets=actor.prompt_buckets,
        teacher_prompt_buckets=tuple(teacher_prompt_buckets))
