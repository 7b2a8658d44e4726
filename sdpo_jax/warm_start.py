"""Supervised warm start for the CPU demo: the task, and reading the self-teacher's context, to a criterion.

The paper finds the self-teacher only helps when the model can use what is in its context. A random
tiny model cannot, so the demo first fine-tunes it (cross-entropy on the answer tokens) on a mix of
  * question examples: the question                                   -> the correct answer,
  * feedback examples: the question + the environment's feedback on a wrong attempt -> the answer,
  * solution examples: the question + a sibling's correct solution     -> the answer,
the last two built by the same `reprompt.build_teacher_prompts` the RL loop uses. Learning to read the
context is a sudden event in a tiny model (the loss sits on a plateau, then drops), and when it happens
depends on float rounding (it differs between CPUs). So the warm start does not run a fixed number of
steps: every `check_every` steps it measures, on held-out questions, the first answer token's accuracy
  (a) with a sibling's correct solution in context,
  (b) with the feedback on the model's own wrong attempt in context (the attempt is drawn from the
      model's own distribution over wrong first tokens, as a rollout would make it),
  (c) from the question alone,
and stops once (a) >= `min_solution_accuracy` and (b) >= (c) + `min_feedback_gain`; at the step cap
it raises `WarmStartError` with the figures. Few question examples leave room for RL to learn.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sdpo_jax import checkpoint as ckpt_lib
from sdpo_jax import models, reprompt
from sdpo_jax.context_probe import first_token_probs, next_token_probs
from sdpo_jax.sampling import pad_to_bucket
from sdpo_jax.tokenizer import apply_chat_template

KINDS = ("question", "feedback", "solution")


class WarmStartError(RuntimeError):
    """The warm start hit its step cap before the held-out in-context criterion."""


@dataclasses.dataclass(frozen=True)
class ExampleBuilder:
    """Turns a problem into (prompt ids, answer ids + eos) for one of `KINDS`."""
    tokenizer: Any
    env: Any
    score_options: dict
    enable_thinking: bool = False

    def answer_ids(self, problem: dict) -> list[int]:
        text = self.env.expected_answer(problem) + self.tokenizer.eos_token
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def prompt_ids(self, problem: dict, kind: str, attempt: str | None = None) -> list[int]:
        """`kind` "question": the question alone; "feedback": the teacher prompt with the feedback on
        `attempt` (a wrong answer); "solution": the teacher prompt with a sibling's correct solution."""
        messages = self.env.build_prompt(problem)
        if kind == "question":
            return apply_chat_template(self.tokenizer, messages, enable_thinking=self.enable_thinking)
        answer = self.env.expected_answer(problem)
        if kind == "feedback":
            feedback = self.env.score(problem, attempt, **self.score_options).feedback
            completions, rewards, feedbacks = [attempt], [0.0], [feedback]
        elif kind == "solution":  # a sibling solved it; this sample did not
            completions, rewards, feedbacks = [answer, attempt or ""], [1.0, 0.0], ["", ""]
        else:
            raise ValueError(f"unknown warm-start example kind {kind!r}; known: {', '.join(KINDS)}")
        built = reprompt.build_teacher_prompts(
            self.tokenizer, [messages] * len(completions), completions, rewards, feedbacks,
            [0] * len(completions), enable_thinking=self.enable_thinking)
        return built.ids[-1]


def corrupt_digits(problem: dict, answer: str, rng: random.Random) -> str:
    """A wrong attempt for environments without `corrupt_answer`: one or two digits changed (never the
    answer itself)."""
    chars = list(answer) or ["0"]
    for _ in range(rng.randint(1, min(2, len(chars)))):
        i = rng.randrange(len(chars))
        chars[i] = str((int(chars[i]) + rng.randint(1, 9)) % 10) if chars[i].isdigit() else "0"
    wrong = "".join(chars)
    return wrong if wrong != answer else str((int(answer[0]) + 1) % 10) + answer[1:]


def training_examples(builder: ExampleBuilder, problems: Sequence[dict], *, feedback_fraction: float,
                      solution_fraction: float, seed: int) -> list[tuple[list[int], list[int]]]:
    """One example per problem, its kind drawn with the given fractions (the rest: question examples);
    feedback examples show feedback on a wrong attempt: the environment's `corrupt_answer(problem, rng)`
    when it has one (a plausible mistake), else `corrupt_digits`. Feedback and solution examples go
    through the environment's `random_names(problem, rng)` when it has one (the synthetic task: the
    question's op words get new meanings, which only the feedback states)."""
    rng = random.Random(seed)
    env_corrupt = getattr(builder.env, "corrupt_answer", None)
    corrupt = (lambda p, a, r: env_corrupt(p, r)) if env_corrupt else corrupt_digits
    rename = getattr(builder.env, "random_names", None)
    examples = []
    for problem in problems:
        draw = rng.random()
        kind = "feedback" if draw < feedback_fraction else (
            "solution" if draw < feedback_fraction + solution_fraction else "question")
        if kind != "question" and rename is not None:
            problem = rename(problem, rng)
        attempt = corrupt(problem, builder.env.expected_answer(problem), rng) if kind != "question" else None
        examples.append((builder.prompt_ids(problem, kind, attempt), builder.answer_ids(problem)))
    return examples


@dataclasses.dataclass(frozen=True)
class ContextCheck:
    """First-answer-token accuracy (argmax right) and mean probability of the right token on held-out
    questions: with a sibling's solution (a), with feedback on the model's own wrong attempt (b), from
    the question alone (c)."""
    solution: float
    feedback: float
    question: float
    p_solution: float
    p_feedback: float
    p_question: float
    questions: int

    def passes(self, min_solution_accuracy: float, min_feedback_gain: float) -> bool:
        return self.solution >= min_solution_accuracy and self.feedback >= self.question + min_feedback_gain

    def describe(self) -> str:
        return (f"first answer token right {self.solution:.2f} with a sibling's solution in context, "
                f"{self.feedback:.2f} with feedback on its own wrong attempt, {self.question:.2f} from the question "
                f"alone (p(right) {self.p_solution:.2f} / {self.p_feedback:.2f} / {self.p_question:.2f}; "
                f"{self.questions} held-out questions)")

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def context_check(model_cfg, params, builder: ExampleBuilder, problems: Sequence[dict], *, pad_id: int,
                  buckets, seed: int = 1) -> ContextCheck:
    """The three-part held-out check (module docstring). The wrong attempt of (b) replaces the answer's
    first token by one drawn from the model's own distribution over the other digits after the question."""
    tok = builder.tokenizer
    digit_ids = np.array([tok.convert_tokens_to_ids(str(d)) for d in range(10)])
    first = [builder.answer_ids(p)[0] for p in problems]
    question = [builder.prompt_ids(p, "question") for p in problems]
    kw = dict(pad_id=pad_id, buckets=buckets)
    student = next_token_probs(model_cfg, params, question, **kw)
    rng = np.random.default_rng(seed)
    attempts = []
    for problem, probs in zip(problems, student):
        answer = builder.env.expected_answer(problem)
        weights = np.where(digit_ids == tok.convert_tokens_to_ids(answer[0]), 0.0, probs[digit_ids] + 1e-9)
        attempts.append(str(rng.choice(10, p=weights / weights.sum())) + answer[1:])
    p_q = student[np.arange(len(first)), first]
    hit_q = student.argmax(-1) == np.asarray(first)
    p_f, hit_f = first_token_probs(model_cfg, params, [builder.prompt_ids(p, "feedback", a) for p, a in
                                                       zip(problems, attempts)], first, **kw)
    p_s, hit_s = first_token_probs(model_cfg, params, [builder.prompt_ids(p, "solution", a) for p, a in
                                                       zip(problems, attempts)], first, **kw)
    return ContextCheck(solution=float(hit_s.mean()), feedback=float(hit_f.mean()), question=float(hit_q.mean()),
                        p_solution=float(p_s.mean()), p_feedback=float(p_f.mean()), p_question=float(p_q.mean()),
                        questions=len(problems))


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


@dataclasses.dataclass
class WarmStartResult:
    params: Any
    steps: int  # steps run
    passed: bool  # the last check met the criterion
    checks: list  # (step, ContextCheck) at every check

    @property
    def check(self) -> ContextCheck:
        return self.checks[-1][1]


def warm_start(model_cfg, params, examples_for_step: Callable[[int], list], check: Callable[[Any], ContextCheck], *,
               steps: int, lr: float, check_every: int, min_solution_accuracy: float, min_feedback_gain: float,
               pad_id: int, prompt_buckets, answer_buckets, log: Callable[[str], Any] = print) -> WarmStartResult:
    """SFT steps (AdamW, a short linear warmup then constant `lr`) on the batches `examples_for_step(i)`
    gives, with `check(params)` every `check_every` steps and after the last; stops at the first check
    that passes (`passed`), else after `steps` (the cap)."""
    warmup = max(min(steps // 20, 50), 1)
    optimizer = optax.chain(optax.clip_by_global_norm(1.0),
                            optax.adamw(optax.linear_schedule(0.0, lr, warmup), weight_decay=0.01))
    opt_state = optimizer.init(params)
    step_fn = make_sft_step(model_cfg, optimizer)
    checks = []
    for i in range(steps):
        ids, mask, target_mask = collate(examples_for_step(i), pad_id, prompt_buckets, answer_buckets)
        params, opt_state, loss = step_fn(params, opt_state, ids, mask, target_mask)
        if (i + 1) % check_every and i + 1 != steps:
            continue
        result = check(params)
        checks.append((i + 1, result))
        log(f"warm start step {i + 1}/{steps}: loss {float(loss):.4f}; {result.describe()}")
        if result.passes(min_solution_accuracy, min_feedback_gain):
            return WarmStartResult(params, i + 1, True, checks)
    return WarmStartResult(params, steps, False, checks)


def cap_message(result: WarmStartResult, *, min_solution_accuracy: float, min_feedback_gain: float) -> str:
    last = result.check
    return (f"the warm start reached its cap of {result.steps} steps (warm_start.steps) without the in-context "
            f"criterion: first answer token right {last.solution:.2f} with a sibling's solution in context (needs >= "
            f"{min_solution_accuracy:.2f}, warm_start.min_solution_accuracy) and {last.feedback:.2f} with feedback "
            f"vs {last.question:.2f} from the question alone (needs a gain >= {min_feedback_gain:.2f}, "
            "warm_start.min_feedback_gain). Raise warm_start.steps or warm_start.lr, or try another seed.")


# ------------------------------------------------------------------ the run's warm start (made once, reused)


class StaleWarmStart(ValueError):
    """The warm-start directory holds a model made with other settings."""


@dataclasses.dataclass(frozen=True)
class WarmStartSettings:
    """The demo's warm start (config warm_start.*): where it lives, the fingerprint of the settings a saved
    one must match to be reused, its step cap and optimizer, its example mix, its held-out criterion, and
    the shapes and options it shares with the RL run (env.options, the teacher prompt buckets as prompt
    buckets, the completion buckets as answer buckets)."""
    directory: str
    fingerprint: dict
    steps: int
    lr: float
    batch_size: int
    feedback_fraction: float
    solution_fraction: float
    check_every: int
    min_solution_accuracy: float
    min_feedback_gain: float
    seed: int
    env_options: dict
    enable_thinking: bool
    prompt_buckets: tuple[int, ...]
    answer_buckets: tuple[int, ...]


def warm_started_params(ws: WarmStartSettings, actor, params, splits: dict[str, list[dict]],
                        log: Callable[[str], Any]):
    """The demo's warm start of `actor`'s model, made once under `ws.directory` and reused by every run with
    the same `ws.fingerprint` (SDPO, GRPO and test-time runs share it).
    `splits` holds its "warm_start" training questions and held-out "check" questions. Raises
    `WarmStartError` at the step cap, `StaleWarmStart` when the directory was made with other settings."""
    directory, fingerprint = ws.directory, ws.fingerprint
    if ckpt_lib.RunCheckpointer(directory, async_save=False).latest_step() is not None:
        restored, meta = ckpt_lib.restore_params(directory, params)
        if meta.get("settings") != fingerprint:
            saved = meta.get("settings") or {}
            differ = sorted(k for k in set(fingerprint) | set(saved) if fingerprint.get(k) != saved.get(k))
            raise StaleWarmStart(
                f"{directory} holds a warm start made with other settings ({', '.join(differ) or 'an older format'} "
                "differ); delete that directory to make a new one, or set --config.checkpoint.warm_start_dir")
        log(f"warm start: reusing {directory} ({meta['steps']} steps); held-out check: {meta['check_line']}")
        return restored
    builder = ExampleBuilder(actor.tokenizer, actor.env, ws.env_options, ws.enable_thinking)
    pool = splits["warm_start"]
    log(f"warm start: up to {ws.steps} supervised steps on {len(pool)} questions, until the held-out check "
        f"passes (every {ws.check_every} steps); saving to {directory}")
    buckets = dict(pad_id=actor.tokenizer.pad_token_id, prompt_buckets=ws.prompt_buckets)

    def examples_for_step(i):
        rows = [pool[(i * ws.batch_size + k) % len(pool)] for k in range(ws.batch_size)]
        return training_examples(builder, rows, feedback_fraction=ws.feedback_fraction,
                                 solution_fraction=ws.solution_fraction, seed=ws.seed * 100_003 + i)

    def check(p):
        return context_check(actor.model_cfg, p, builder, splits["check"], pad_id=buckets["pad_id"],
                             buckets=buckets["prompt_buckets"], seed=ws.seed)

    params = jax.tree.map(jnp.copy, params)  # the SFT step donates its input
    result = warm_start(actor.model_cfg, params, examples_for_step, check, steps=ws.steps, lr=ws.lr,
                        check_every=ws.check_every, min_solution_accuracy=ws.min_solution_accuracy,
                        min_feedback_gain=ws.min_feedback_gain, answer_buckets=ws.answer_buckets,
                        log=log, **buckets)
    if not result.passed:
        raise WarmStartError(cap_message(result, min_solution_accuracy=ws.min_solution_accuracy,
                                         min_feedback_gain=ws.min_feedback_gain))
    ckpt_lib.save_params(directory, result.params, {"settings": fingerprint, "steps": result.steps,
                                                    "check": result.check.as_dict(),
                                                    "check_line": result.check.describe()})
    log(f"warm start done after {result.steps} steps: {result.check.describe()}")
    return result.params
