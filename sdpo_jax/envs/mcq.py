"""Science multiple choice (SciKnowEval, docs/ALGORITHM.md §6; the official `feedback/mcq.py`).

Problem schema: {"id": str, "question": str (question, "A: ..." option lines, "Please reason step
by step."), "answer": "A", "system": SYSTEM_PROMPT}.  Reward 1.0 iff the stripped text between the
last <answer> and the following </answer> equals the gold letter (as the official code: a
completion with no tags is compared whole).  The official feedback is empty; `feedback=True` adds a
format reminder that does not reveal the answer.
"""

from __future__ import annotations

import hashlib
import re

from sdpo_jax.envs.base import Score

SYSTEM_PROMPT = """
Given a question and four options, please select the right answer. Respond in the following format:
<reasoning>
...
</reasoning>
<answer>
...
</answer>

For the answer, only output the letter corresponding to the correct option (A, B, C, or D), and nothing else. Do not restate the answer text. For example, if the answer is "A", just output:
<answer>
A
</answer>
"""
FORMAT_FEEDBACK = ("Your answer had the wrong format. End with <answer>X</answer>, X the option "
                   "letter.")
_FORMAT = re.compile(r"<answer>\s*([A-Z])\s*</answer>\s*$")


def extract_answer(text: str) -> str:
    return text.split("<answer>")[-1].split("</answer>")[0].strip()


def build_prompt(problem: dict) -> list[dict]:
    """System (the official answer-format instructions) + the question as the user message."""
    system = problem.get("system", SYSTEM_PROMPT)
    messages = [{"role": "system", "content": system}] if system else []
    return messages + [{"role": "user", "content": problem["question"]}]


def validate_problem(problem: dict) -> None:
    """Raise ValueError naming the problem and field when it is not an MCQ problem."""
    if not isinstance(problem, dict):
        raise ValueError(f"mcq problem must be a dict, got {type(problem).__name__}")
    pid = problem.get("id", "<no id>")
    if not isinstance(problem.get("question"), str) or not problem["question"].strip():
        raise ValueError(f"mcq problem {pid}: field 'question' must be a non-empty string")
    answer = problem.get("answer")
    if not isinstance(answer, str) or not re.fullmatch(r"[A-Z]", answer):
        raise ValueError(f"mcq problem {pid}: field 'answer' must be one option letter, "
                         f"got {answer!r}")


def score(problem: dict, completion: str, *, truncated: bool = False,
          feedback: bool = False) -> Score:
    """1.0 iff the <answer> letter equals the gold one."""
    pred = extract_answer(completion)
    correct = pred == problem["answer"]
    good_format = _FORMAT.search(completion) is not None
    text = FORMAT_FEEDBACK if feedback and not good_format and not correct else ""
    info = {"pred": pred[:50], "incorrect_format": not good_format, "truncated": bool(truncated)}
    return Score(1.0 if correct else 0.0, text, info)


def from_sciknoweval(row: dict) -> dict:
    """A `hicai-zju/SciKnowEval` row ({"question", "choices": {"text", "label"}, "answerKey"}) or an
    SDPO-formatted one ({"prompt", "answer", "system"}) -> an MCQ problem with the official
    prompt."""
    if not isinstance(row, dict):
        raise ValueError(f"SciKnowEval row must be an object, got {type(row).__name__}")
    if "choices" in row:
        choices = row["choices"]
        texts = choices.get("text") if isinstance(choices, dict) else None
        labels = choices.get("label") if isinstance(choices, dict) else None
        if not isinstance(texts, list) or not isinstance(labels, list) or len(texts) != len(labels):
            raise ValueError(f"SciKnowEval row {row.get('id', '?')}: 'choices' needs equal-length "
                             "'text' and 'label' lists")
        options = "\n".join(f"{lab}: {txt}" for lab, txt in zip(labels, texts))
        question = f"{row['question']}\n\n{options}\nPlease reason step by step."
        answer, system = row.get("answerKey"), SYSTEM_PROMPT
    else:
        question, answer = row.get("prompt"), row.get("answer")
        system = row.get("system") if row.get("system") not in (None, "None", "") else SYSTEM_PROMPT
    if not isinstance(question, str):
        raise ValueError("SciKnowEval row: needs 'question' + 'choices' or a formatted 'prompt'")
    pid = str(row.get("id") or row.get("idx")
              or "sciknoweval-" + hashlib.sha1(question.encode()).hexdigest()[:12])
    problem = {"id": pid, "question": question, "answer": answer, "system": system}
    validate_problem(problem)
    return problem
