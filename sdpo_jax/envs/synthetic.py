"""The demo's synthetic task: digit-string transformations with rich, position-level feedback.

A problem is a short digit string and one or more operations applied left to right, e.g. the user
message "inc reverse 3 8 1 4" asks for inc (add one to each digit, 9 -> 0) and then reverse:
4 9 2 5 -> "5294".  The answer is the completion with surrounding whitespace stripped: the digits,
written together ("5294") or separated by whitespace ("5 2 9 4").  Reward is 1.0 iff exactly right.
The feedback names each wrong position and what belongs there, plus any length mismatch, e.g.
"Wrong answer 5249. Position 3 should be 9. Position 4 should be 4." -- rich enough that a
self-teacher conditioned on it can fix the attempt, which is what SDPO needs.

Character-simple on purpose: the CPU demo trains a ~1M-parameter model on it.

Difficulty (an int >= 1) sets the string length and the number of chained operations:
    1: one op, 3-4 digits      2: one op, 4-6 digits      3: two ops, 4-6 digits
    d >= 4: d-1 ops, 5..d+3 digits
`make_problems` is deterministic for (n, seed, difficulty, ops).
"""

from __future__ import annotations

import random
from typing import Sequence

from sdpo_jax.envs.base import Score

OPS: dict[str, str] = {
    "reverse": "reverse the order",
    "sort": "sort ascending",
    "inc": "add one to each digit (9 becomes 0)",
    "dec": "subtract one from each digit (0 becomes 9)",
    "rotate": "move the first digit to the end",
    "max": "keep only the largest digit",
    "min": "keep only the smallest digit",
    "first": "keep only the first digit",
    "last": "keep only the last digit",
}
DEFAULT_OPS = ("reverse", "sort", "inc")
SYSTEM_PROMPT = "Apply the ops left to right. Answer with digits only."
MAX_POSITION_NOTES = 12


def _apply(op: str, digits: list[int]) -> list[int]:
    if op == "reverse":
        return digits[::-1]
    if op == "sort":
        return sorted(digits)
    if op == "inc":
        return [(d + 1) % 10 for d in digits]
    if op == "dec":
        return [(d - 1) % 10 for d in digits]
    if op == "rotate":
        return digits[1:] + digits[:1]
    if op in ("max", "min"):
        return [max(digits) if op == "max" else min(digits)]
    if op in ("first", "last"):
        return [digits[0] if op == "first" else digits[-1]]
    raise ValueError(f"unknown synthetic op {op!r}; known: {', '.join(OPS)}")


def _shape_for(difficulty: int) -> tuple[int, int, int]:
    """(number of ops, min length, max length) for a difficulty level."""
    if difficulty < 1:
        raise ValueError(f"synthetic difficulty must be an int >= 1, got {difficulty!r}")
    if difficulty == 1:
        return 1, 3, 4
    if difficulty == 2:
        return 1, 4, 6
    if difficulty == 3:
        return 2, 4, 6
    return difficulty - 1, 5, difficulty + 3


def make_problems(n: int, *, seed: int, difficulty: int = 1,
                  ops: Sequence[str] | None = None, final_ops: Sequence[str] = ()) -> list[dict]:
    """`n` problems, deterministic for the arguments.  Each is
    {"id", "digits": "3814", "ops": ["reverse"], "answer": "4183", "difficulty": 1}.
    With `final_ops` (e.g. ("max", "min", "first", "last")) one of them is appended to every chain,
    so each answer is a single digit."""
    ops = tuple(ops) if ops is not None else DEFAULT_OPS
    final_ops = tuple(final_ops)
    for op in ops + final_ops:
        if op not in OPS:
            raise ValueError(f"unknown synthetic op {op!r}; known: {', '.join(OPS)}")
    if not ops:
        raise ValueError("synthetic ops must not be empty")
    num_ops, lo, hi = _shape_for(int(difficulty))
    rng = random.Random(f"sdpo-synthetic/{seed}/{difficulty}/{','.join(ops)}"
                        + (f"/{','.join(final_ops)}" if final_ops else ""))
    problems = []
    for i in range(n):
        length = rng.randint(lo, hi)
        digits = "".join(str(rng.randrange(10)) for _ in range(length))
        chain = []
        for _ in range(num_ops):  # no op twice in a row ("sort sort" is one sort)
            choices = [op for op in ops if not chain or op != chain[-1]] or list(ops)
            chain.append(rng.choice(choices))
        if final_ops:
            chain.append(rng.choice(final_ops))
        problem = {"id": f"synthetic-s{seed}-d{difficulty}-{i}", "digits": digits, "ops": chain,
                   "difficulty": int(difficulty)}
        problem["answer"] = expected_answer(problem)
        problems.append(problem)
    return problems


def validate_problem(problem: dict) -> None:
    """Raise ValueError naming the field when `problem` is not a synthetic problem."""
    pid = problem.get("id", "<no id>") if isinstance(problem, dict) else "<not a dict>"
    if not isinstance(problem, dict):
        raise ValueError(f"synthetic problem must be a dict, got {type(problem).__name__}")
    digits = problem.get("digits")
    if not isinstance(digits, str) or not digits.isdigit():
        raise ValueError(f"synthetic problem {pid}: field 'digits' must be a non-empty digit "
                         "string")
    ops = problem.get("ops")
    if not isinstance(ops, list) or not ops or any(op not in OPS for op in ops):
        raise ValueError(f"synthetic problem {pid}: field 'ops' must be a non-empty list of "
                         f"{', '.join(OPS)}; got {ops!r}")


def expected_answer(problem: dict) -> str:
    """The correct answer string (digits, no spaces)."""
    digits = [int(c) for c in problem["digits"]]
    for op in problem["ops"]:
        digits = _apply(op, digits)
    return "".join(str(d) for d in digits)


def build_prompt(problem: dict) -> list[dict]:
    """System + user chat messages; the user message is e.g. "inc reverse 3 8 1 4"."""
    user = " ".join(list(problem["ops"]) + list(problem["digits"]))
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def parse_answer(completion: str) -> str | None:
    """The digits of the answer, or None when the stripped completion is not digits (optionally
    separated by whitespace)."""
    tokens = completion.split()
    if not tokens or not all(t.isascii() and t.isdigit() for t in tokens):
        return None
    return "".join(tokens)


def score(problem: dict, completion: str, *, truncated: bool = False,
          feedback_style: str = "expected") -> Score:
    """Reward 1.0 iff the answer equals `expected_answer(problem)`. Feedback on a wrong answer, like a
    failing unit test: `feedback_style="expected"` (default) shows the answer given, the expected one and
    the wrong positions ("Wrong answer 4813; expected 4183 (positions 2, 3 wrong)."); "positions" names
    each wrong position and the digit expected there ("Wrong answer 4813. Position 2 should be 1. ...")
    and any length mismatch -- harder for a tiny model to use in context."""
    if feedback_style not in ("expected", "positions"):
        raise ValueError(f"synthetic feedback_style={feedback_style!r}: use 'expected' or 'positions'")
    expected = expected_answer(problem)
    answer = parse_answer(completion)
    info = {"expected_len": len(expected), "truncated": bool(truncated)}
    notes = []
    if truncated:
        notes.append(f"Truncated attempt: the answer was cut off at the length limit. "
                     f"Answer with the {len(expected)} digits only, then stop.")
    if answer is None:
        shown = completion.strip()
        shown = shown[:40] + ("..." if len(shown) > 40 else "")
        if not truncated:
            notes.append("Format error: answer with digits only, like 1 2 3 or 123; "
                         f"got {shown!r}.")
        return Score(0.0, " ".join(notes), {**info, "format_ok": False, "correct_positions": 0})
    correct = sum(a == b for a, b in zip(answer, expected))
    info.update(format_ok=True, correct_positions=correct, answer_len=len(answer))
    if answer == expected:
        return Score(1.0, "", info)
    wrong = [i + 1 for i, (a, e) in enumerate(zip(answer, expected)) if a != e]
    if feedback_style == "expected":  # what a failing unit test says: got / expected
        where = f" (positions {', '.join(map(str, wrong[:MAX_POSITION_NOTES]))} wrong)" if wrong else ""
        length = f", {len(answer)} digits instead of {len(expected)}" if len(answer) != len(expected) else ""
        notes.append(f"Wrong answer {answer}; expected {expected}{where}{length}.")
        return Score(0.0, " ".join(notes), info)
    notes.append(f"Wrong answer {answer}.")
    if len(answer) != len(expected):
        notes.append(f"The answer has {len(answer)} digits; it should have {len(expected)}.")
    for i in wrong[:MAX_POSITION_NOTES]:
        notes.append(f"Position {i} should be {expected[i - 1]}.")
    if len(wrong) > MAX_POSITION_NOTES:
        notes.append(f"({len(wrong) - MAX_POSITION_NOTES} more wrong positions.)")
    if len(answer) < len(expected):
        missing = expected[len(answer):]
        notes.append(f"Missing at the end: {' '.join(missing)}.")
    return Score(0.0, " ".join(notes), info)
