"""Supervised warm start: give a tiny random model the task and in-context ability before RL.

The paper finds the self-teacher only helps when the model can use what is in its context. A random
tiny model cannot, so the CPU demo first fine-tunes it (cross-entropy on the answer tokens) on a mix of
  * direct examples:   the question             -> the correct answer, and
  * teacher examples:  the question + feedback on a wrong attempt, or + a correct sibling solution,
                       built by the same `reprompt.build_teacher_prompts` the trainer uses
                                               -> the correct answer.
Few direct steps leave room for RL to learn; the teacher examples teach reading the feedback.
"""

from __future__ import annotations

import random
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sdpo_jax import models, reprompt
from sdpo_jax.sampling import pad_to_bucket
from sdpo_jax.tokenizer import apply_chat_template


def build_examples(tokenizer, env, problems: Sequence[dict], *, feedback_fraction: float,
                   corrupt: Callable[[str, random.Random], str], seed: int, enable_thinking: bool = False,
                   ) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, answer ids + eos) pairs: direct ones, and with probability `feedback_fraction`
    teacher-prompt ones (feedback on a corrupted attempt, or a sibling's correct solution)."""
    rng = random.Random(seed)
    eos = tokenizer.eos_token
    examples = []
    for index, problem in enumerate(problems):
        messages = env.build_prompt(problem)
        answer = env.expected_answer(problem)
        target = tokenizer(answer + eos, add_special_tokens=False)["input_ids"]
        if rng.random() >= feedback_fraction:
            examples.append((apply_chat_template(tokenizer, messages, enable_thinking=enable_thinking), target))
            continue
        wrong = corrupt(answer, rng)
        if rng.random() < 0.5:  # feedback on the student's own wrong attempt
            score = env.score(problem, wrong)
            completions, rewards, feedbacks = [wrong], [score.reward], [score.feedback]
        else:  # a sibling solved it; this sample did not
            completions, rewards, feedbacks = [answer, wrong], [1.0, 0.0], ["", ""]
        built = reprompt.build_teacher_prompts(
            tokenizer, [messages] * len(completions), completions, rewards, feedbacks,
            [index] * len(completions), enable_thinking=enable_thinking)
        examples.append((built.ids[-1], target))
    return examples


def _sft_loss(model_cfg, params, ids_bt, mask_bt, target_mask_bt):
    logits_btv = models.forward(model_cfg, params, ids_bt, mask_bt)
    logp_btv = jax.nn.log_softmax(logits_btv[:, :-1].astype(jnp.float32))
    nll_bt = -jnp.take_along_axis(logp_btv, ids_bt[:, 1:, None], axis=-1)[..., 0]
    weight_bt = target_mask_bt[:, 1:]
    return jnp.sum(nll_bt * weight_bt) / jnp.maximum(jnp.sum(weight_bt), 1.0)


def make_sft_step(model_cfg, optimizer):
    def step(params, opt_state, ids_bt, mask_bt, target_mask_bt):
        loss, grads = jax.value_and_grad(lambda p: _sft_loss(model_cfg, p, ids_bt, mask_bt, target_mask_bt))(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return jax.jit(step, donate_argnums=(0, 1))


def collate(examples: Sequence[tuple[list[int], list[int]]], pad_id: int, prompt_buckets, answer_buckets):
    """[prompt (left-padded) | answer (right-padded)] rows, as the RL rows are laid out."""
    prompt_ids, prompt_mask = pad_to_bucket([p for p, _ in examples], prompt_buckets, pad_id, side="left")
    answer_ids, answer_mask = pad_to_bucket([a for _, a in examples], answer_buckets, pad_id, side="right")
    ids = np.concatenate([prompt_ids, answer_ids], axis=1).astype(np.int32)
    mask = np.concatenate([prompt_mask, answer_mask], axis=1).astype(np.int32)
    target_mask = np.concatenate([np.zeros_like(prompt_mask), answer_mask], axis=1).astype(np.float32)
    return ids, mask, target_mask


def first_token_accuracy(model_cfg, params, examples: Sequence[tuple[list[int], list[int]]], *, pad_id: int,
                         prompt_buckets) -> float:
    """Share of (prompt, answer) examples whose first answer token is the model's argmax after the
    prompt: a cheap, teacher-forced check of a one-token answer (e.g. the demo's digit)."""
    if not examples:
        return float("nan")
    ids, mask = pad_to_bucket([p for p, _ in examples], prompt_buckets, pad_id, side="left")
    first_answer_ids = np.array([a[0] for _, a in examples], np.int32)

    @jax.jit
    def accuracy(params, ids_bt, mask_bt, first_b):  # a replicated scalar, also when params span processes
        logits_bv = models.forward(model_cfg, params, ids_bt, mask_bt)[:, -1]
        return jnp.mean((jnp.argmax(logits_bv, axis=-1) == first_b).astype(jnp.float32))

    return float(accuracy(params, ids.astype(np.int32), mask.astype(np.int32), first_answer_ids))


def warm_start(model_cfg, params, examples_for_step: Callable[[int], list], *, steps: int, lr: float,
               pad_id: int, prompt_buckets, answer_buckets, log: Callable[[int, dict], Any] | None = None):
    """Run `steps` SFT steps (AdamW, cosine decay) on the batches `examples_for_step(i)` gives."""
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, max(steps // 20, 1), steps, lr * 0.05)
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=0.01))
    opt_state = optimizer.init(params)
    step_fn = make_sft_step(model_cfg, optimizer)
    losses = []
    for i in range(steps):
        ids, mask, target_mask = collate(examples_for_step(i), pad_id, prompt_buckets, answer_buckets)
        params, opt_state, loss = step_fn(params, opt_state, ids, mask, target_mask)
        if log is not None and (i % 25 == 0 or i == steps - 1):
            losses.append(float(loss))
            log(i, {"warm_start/loss": losses[-1]})
    return params, losses
