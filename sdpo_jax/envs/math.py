"""Math environment: the last \\boxed{...} answer, compared with the reference by exact string and
then by `math-verify` (docs/ALGORITHM.md §6; the official `feedback/math.py`).

Problem schema: {"id": str, "question": str, "answer": str (the reference, no \\boxed)}.
Reward 1.0 iff correct.  Feedback is off by default (the issue's choice; the official code turns
the format part on): `feedback=True` gives the official format / truncation texts, and
`correctness_feedback=True` adds "Your answer is incorrect. The correct answer is X." (it leaks the
answer).  math-verify times itself with `signal.alarm`, so timeouts apply only in a process's main
thread (the scorer's workers); elsewhere they are off.
"""

from __future__ import annotations

import hashlib
import re
import threading

from sdpo_jax.envs.base import Score

PROMPT = "{problem}\n\nPlease reason step by step, and put your final answer within \\boxed{{}}."
FORMAT_FEEDBACK = ("Your answer had the wrong format. The solution must be given in the format: "
                   "\\boxed{your_answer}.")
TRUNCATED_FEEDBACK = "Your response was truncated because it exceeded the maximum length."
VERIFY_TIMEOUT_S = 5


def last_boxed(text: str) -> str | None:
    """The content of the last \\boxed{...} (or \\fbox{...}), braces balanced; None if absent or
    unclosed."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start)
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1:j]
    return None


def _normalize(s: str) -> str:
    return re.sub(r"\s+", "", s).strip("$.")


def is_equivalent(pred: str, answer: str) -> bool:
    """Exact match (ignoring spaces, $ and a final period), else math-verify's equivalence."""
    if _normalize(pred) == _normalize(answer):
        return True
    from math_verify import parse, verify
    in_main = threading.current_thread() is threading.main_thread()
    timeout = VERIFY_TIMEOUT_S if in_main else None
    try:
        gold = (parse("\\boxed{" + answer + "}", parsing_timeout=timeout)
                or parse(answer, parsing_timeout=timeout))
        guess = parse("\\boxed{" + pred + "}", parsing_timeout=timeout)
        return bool(gold and guess and verify(gold, guess, timeout_seconds=timeout))
    except Exception:  # noqa: BLE001 - math-verify raises on odd input and on its timeout
        return False


def build_prompt(problem: dict) -> list[dict]:
    """The official math prompt as one user message (plus the problem's system message, if any)."""
    messages = [{"role": "system", "content": problem["system"]}] if problem.get("system") else []
    return messages + [{"role": "user", "content": PROMPT.format(problem=problem["question"])}]


def validate_problem(problem: dict) -> None:
    """Raise ValueError naming the problem and field when it is not a math problem."""
    if not isinstance(problem, dict):
        raise ValueError(f"math problem must be a dict, got {type(problem).__name__}")
    pid = problem.get("id", "<no id>")
    for key in ("question", "answer"):
        if not isinstance(problem.get(key), str) or not problem[key].strip():
            raise ValueError(f"math problem {pid}: field {key!r} must be a non-empty string")


def score(problem: dict, completion: str, *, truncated: bool = False, feedback: bool = False,
          correctness_feedback: bool = False) -> Score:
    """1.0 iff the last boxed answer equals the reference (see module docstring)."""
    pred = last_boxed(completion)
    correct = bool(pred) and is_equivalent(pred, problem["answer"])
    bad_format = not pred
    text = ""
    if feedback and truncated:
        text = TRUNCATED_FEEDBACK
    elif feedback and bad_format:
        text = FORMAT_FEEDBACK
    elif correctness_feedback and not correct:
        text = f"Your answer is incorrect. The correct answer is {problem['answer']}."
    info = {"pred": (pred or "")[:200], "incorrect_format": bad_format,
            "truncated": bool(truncated)}
    return Score(1.0 if correct else 0.0, text, info)


def from_math(row: dict) -> dict:
    """GSM8K ({"question", "answer": "... #### 72"}), MATH ({"problem", "solution" with \\boxed,
    optional "answer"}) or plain {"question"|"problem", "answer"} -> a math problem."""
    if not isinstance(row, dict):
        raise ValueError(f"math row must be an object, got {type(row).__name__}")
    question = row.get("question", row.get("problem"))
    if not isinstance(question, str) or not question.strip():
        raise ValueError("math row: needs a non-empty 'question' or 'problem'")
    answer = row.get("answer")
    if isinstance(answer, str) and "####" in answer:  # GSM8K: the number after ####
        answer = answer.rsplit("####", 1)[1].strip().replace(",", "")
    elif answer is None and isinstance(row.get("solution"), str):
        answer = last_boxed(row["solution"])
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        answer = str(answer)
    pid = str(row.get("id") or row.get("unique_id") or row.get("idx")
              or "math-" + hashlib.sha1(question.encode()).hexdigest()[:12])
    if not isinstance(answer, str) or not answer.strip():
        raise ValueError(f"math row {pid}: no reference answer (give 'answer', a GSM8K '#### x' "
                         "answer, or a 'solution' with \\boxed{...})")
    problem = {"id": pid, "question": question, "answer": answer.strip()}
    validate_problem(problem)
    return problem
