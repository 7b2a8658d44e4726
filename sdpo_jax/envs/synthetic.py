"""The demo's synthetic task: digit-string transformations with rich feedback that never states the answer.

A problem is a short digit string and one or more operations applied left to right, e.g. the user
message "inc reverse 3814" asks for inc (add one to each digit, 9 -> 0) and then reverse:
4925 -> "5294".  The answer is the completion with surrounding whitespace stripped: the digits,
written together ("5294") or separated by whitespace ("5 2 9 4").  Reward is 1.0 iff exactly right.

Feedback on a wrong attempt (`score(..., feedback_style=...)`):
  * "example" (the default): what a code judge shows -- a test case of the same ops on another input
    with its expected output, then what was wrong with this attempt, e.g.
    "Test case: inc max 5271 -> 8. Your answer 3 is wrong." (with other names for the ops, it also says
    what they mean: "...; up top means inc max."). The test input is drawn independently of
    the question's digits, so the feedback never gives away this question's answer (tests/
    test_synthetic_leak.py checks that guessers reading only the feedback do no better than chance);
  * "expected": the answer given and the expected one ("Wrong answer 4813; expected 4183 (positions
    2, 3 wrong)."): it hands the model the answer (configs/demo_answer_feedback.py);
  * "positions": each wrong position and the digit expected there: also answer-revealing.

Character-simple on purpose: the CPU demo trains a ~1M-parameter model on it.

Difficulty (an int >= 1) sets the string length and the number of chained operations:
    1: one op, 3-4 digits      2: one op, 4-6 digits      3: two ops, 4-6 digits
    d >= 4: d-1 ops, 5..d+3 digits
`make_problems` is deterministic for its arguments; with `uniform_answers` the first answer digit is
uniform over 0-9 for every op chain (so neither the ops nor a test case hint at the answer).
"""

from __future__ import annotations

import functools
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
# Other names for the ops (`make_problems(..., aliases=True)`): a question then says "top flip 5271" for
# "max reverse 5271", and the default feedback says what each name means.
ALIASES: dict[str, str] = {"reverse": "flip", "sort": "order", "inc": "up", "dec": "down", "rotate": "spin",
                           "max": "top", "min": "low", "first": "head", "last": "tail"}
# Words the warm start gives a new random meaning in every example (ALIASES' names among them), so the
# model learns to read a name's meaning from the feedback rather than to memorise it.
NAME_POOL = tuple(ALIASES.values()) + ("zap", "mix", "pick", "turn", "move", "keep", "shift", "drop", "lift",
                                       "swap", "step", "hop", "fold", "grab", "cut")
DEFAULT_OPS = ("reverse", "sort", "inc")
FEEDBACK_STYLES = ("example", "expected", "positions")
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


def _chain(rng: random.Random, ops: tuple[str, ...], final_ops: tuple[str, ...], num_ops: int) -> list[str]:
    chain: list[str] = []
    for _ in range(num_ops):  # no op twice in a row ("sort sort" is one sort)
        choices = [op for op in ops if not chain or op != chain[-1]] or list(ops)
        chain.append(rng.choice(choices))
    if final_ops:
        chain.append(rng.choice(final_ops))
    return chain


def _digits(rng: random.Random, lo: int, hi: int) -> str:
    return "".join(str(rng.randrange(10)) for _ in range(rng.randint(lo, hi)))


@functools.lru_cache(maxsize=64)
def _strings_by_first_answer_digit(chain: tuple[str, ...], lo: int, hi: int) -> dict[str, tuple[list[str], list[float]]]:
    """Every digit string of length lo..hi, grouped by the first digit of `chain`'s answer on it, each
    weighted by its probability under `_digits` (a uniform length, then uniform digits)."""
    groups: dict[str, tuple[list[str], list[float]]] = {}
    for length in range(lo, hi + 1):
        weight = 10.0 ** -length
        for value in range(10 ** length):
            digits = str(value).zfill(length)
            strings, weights = groups.setdefault(expected_answer({"digits": digits, "ops": list(chain)})[:1], ([], []))
            strings.append(digits)
            weights.append(weight)
    return groups


def _digits_with_first_answer_digit(rng: random.Random, chain: tuple[str, ...], lo: int, hi: int, target: str) -> str:
    """`_digits` conditioned on the answer starting with `target`: exact (enumerated) for strings of at
    most 5 digits, by rejection beyond."""
    if hi <= 5:
        strings, weights = _strings_by_first_answer_digit(chain, lo, hi).get(target, ([], []))
        if strings:
            return rng.choices(strings, weights)[0]
        target = rng.choice(sorted(_strings_by_first_answer_digit(chain, lo, hi)))  # this chain never gives it
    while True:
        digits = _digits(rng, lo, hi)
        if expected_answer({"digits": digits, "ops": list(chain)})[:1] == target:
            return digits


def make_problems(n: int, *, seed: int, difficulty: int = 1, ops: Sequence[str] | None = None,
                  final_ops: Sequence[str] = (), uniform_answers: bool = False,
                  aliases: bool = False) -> list[dict]:
    """`n` problems, deterministic for the arguments.  Each is
    {"id", "digits": "3814", "ops": ["reverse"], "answer": "4183", "difficulty": 1}.
    With `final_ops` (e.g. ("max", "min", "first", "last")) one of them is appended to every chain,
    so each answer is a single digit. With `uniform_answers` the first answer digit is drawn uniformly
    first and the digits are redrawn until the chain gives it (rejection sampling), so every op chain
    has uniformly distributed answers (e.g. "max" is not mostly 8s and 9s). With `aliases` the question
    writes every op by its other name in `ALIASES` (field "names": "up top 5271" for "inc max 5271")."""
    ops = tuple(ops) if ops is not None else DEFAULT_OPS
    final_ops = tuple(final_ops)
    for op in ops + final_ops:
        if op not in OPS:
            raise ValueError(f"unknown synthetic op {op!r}; known: {', '.join(OPS)}")
    if not ops:
        raise ValueError("synthetic ops must not be empty")
    num_ops, lo, hi = _shape_for(int(difficulty))
    rng = random.Random(f"sdpo-synthetic/{seed}/{difficulty}/{','.join(ops)}"
                        + (f"/{','.join(final_ops)}" if final_ops else "")
                        + ("/uniform" if uniform_answers else "") + ("/aliases" if aliases else ""))
    problems = []
    for i in range(n):
        chain = _chain(rng, ops, final_ops, num_ops)
        digits = _digits(rng, lo, hi)
        if uniform_answers:
            digits = _digits_with_first_answer_digit(rng, tuple(chain), lo, hi, str(rng.randrange(10)))
        problem = {"id": f"synthetic-s{seed}-d{difficulty}-{i}", "digits": digits, "ops": chain,
                   "difficulty": int(difficulty)}
        if aliases:
            problem["names"] = [ALIASES[op] for op in chain]
        problem["answer"] = expected_answer(problem)
        problems.append(problem)
    return problems


def random_names(problem: dict, rng: random.Random) -> dict:
    """A copy of `problem` whose question names its ops by distinct words drawn from `NAME_POOL` (a new
    meaning for each word every time): the warm start's examples for reading names off the feedback."""
    words = rng.sample(NAME_POOL, len(set(problem["ops"])))
    name_of = dict(zip(dict.fromkeys(problem["ops"]), words))
    return {**problem, "names": [name_of[op] for op in problem["ops"]]}


def corrupt_answer(problem: dict, rng: random.Random) -> str:
    """A plausible wrong answer, as the model would give one: usually what another chain of the same
    shape (another op or reducer) gives on the same digits, else one digit changed; never the answer."""
    answer = expected_answer(problem)
    ops, reducers = DEFAULT_OPS + ("dec", "rotate"), ("max", "min", "first", "last")
    chain = list(problem["ops"])
    if rng.random() < 0.7:
        candidates = set()
        for k, op in enumerate(chain):
            for other in (reducers if op in reducers else ops):
                swapped = chain[:k] + [other] + chain[k + 1:]
                candidates.add(expected_answer({"digits": problem["digits"], "ops": swapped}))
        candidates = sorted(c for c in candidates if c != answer)
        if candidates:
            return rng.choice(candidates)
    chars = list(answer)
    i = rng.randrange(len(chars))
    chars[i] = str((int(chars[i]) + rng.randint(1, 9)) % 10)
    return "".join(chars)


SPLIT_SEED_OFFSETS = {"train": 0, "eval": 10_000, "check": 30_000, "warm_start": 20_000}


def make_splits(sizes: dict[str, int], *, seed: int, difficulty: int = 1, final_ops: Sequence[str] = (),
                uniform_answers: bool = False, aliases: bool = False) -> dict[str, list[dict]]:
    """Disjoint problem sets for a run, e.g. sizes {"train": 4096, "eval": 512, "check": 128,
    "warm_start": 8192}: no question (digits and ops) is in two of them. Each set is drawn from its own
    seed (`SPLIT_SEED_OFFSETS`), in that order, skipping questions an earlier set holds; duplicates
    within a set are kept. "warm_start" problems name the ops by their own names (the warm start's
    question examples teach the ops); the others use `aliases` when set."""
    seen: set = set()
    splits = {}
    for name, offset in SPLIT_SEED_OFFSETS.items():
        if not sizes.get(name):
            continue
        want = sizes[name]
        candidates = make_problems(4 * want, seed=seed + offset, difficulty=difficulty, final_ops=final_ops,
                                   uniform_answers=uniform_answers, aliases=aliases and name != "warm_start")
        fresh = [p for p in candidates if (p["digits"], tuple(p["ops"])) not in seen][:want]
        if len(fresh) < want:
            raise ValueError(f"synthetic: only {len(fresh)} {name} questions not in another set, {want} wanted; "
                             "lower the set sizes or raise data.synthetic_difficulty")
        seen.update((p["digits"], tuple(p["ops"])) for p in fresh)
        splits[name] = fresh
    return splits


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
    names = problem.get("names", ops)
    if (not isinstance(names, list) or len(names) != len(ops)
            or not all(isinstance(w, str) and w.isalpha() for w in names)):
        raise ValueError(f"synthetic problem {pid}: field 'names' must be one word per op in 'ops'; got {names!r}")


def expected_answer(problem: dict) -> str:
    """The correct answer string (digits, no spaces)."""
    digits = [int(c) for c in problem["digits"]]
    for op in problem["ops"]:
        digits = _apply(op, digits)
    return "".join(str(d) for d in digits)


def build_prompt(problem: dict) -> list[dict]:
    """One user message: the ops, then the digits, e.g. "inc reverse 3814" (no system turn: the
    demo's tiny model learns the task format in its warm start, and short prompts keep CPU steps fast)."""
    return [{"role": "user", "content": " ".join(_names(problem)) + " " + problem["digits"]}]


def _names(problem: dict) -> list[str]:
    """The words the question uses for its ops: `names` when given, else the ops themselves."""
    return list(problem.get("names") or problem["ops"])


def test_case(problem: dict) -> tuple[str, str]:
    """(digits, expected output) of a test case for `problem`'s ops: another input, its length drawn
    from the difficulty's range (not the question's length, which `uniform_answers` ties to the answer),
    from a generator seeded by the question (so a question always shows the same test case) but
    independent of its answer."""
    rng = random.Random(f"sdpo-synthetic-test-case/{problem['digits']}/{','.join(problem['ops'])}")
    _, lo, hi = _shape_for(int(problem.get("difficulty", 1)))
    digits = problem["digits"]
    while digits == problem["digits"]:
        digits = _digits(rng, lo, hi)
    return digits, expected_answer({"digits": digits, "ops": list(problem["ops"])})


def parse_answer(completion: str) -> str | None:
    """The digits of the answer, or None when the stripped completion is not digits (optionally
    separated by whitespace)."""
    tokens = completion.split()
    if not tokens or not all(t.isascii() and t.isdigit() for t in tokens):
        return None
    return "".join(tokens)


def _shown(completion: str) -> str:
    shown = completion.strip()
    return shown[:40] + ("..." if len(shown) > 40 else "")


def _example_feedback(problem: dict, answer: str | None, completion: str, truncated: bool,
                      expected_len: int) -> str:
    """"Test case: <names> <digits> -> <output>. <what was wrong>; <names> means <ops>." """
    digits, output = test_case(problem)
    case = f"Test case: {' '.join(_names(problem))} {digits} -> {output}."
    names = _names(problem)
    meaning = f"; {' '.join(names)} means {' '.join(problem['ops'])}" if names != list(problem["ops"]) else ""
    if truncated:
        wrong = (f"Truncated attempt: the answer was cut off at the length limit. Answer with {expected_len} "
                 f"digit{'s' if expected_len > 1 else ''} only, then stop")
    elif answer is None:
        wrong = f"Format error: answer with digits only, like 123; got {_shown(completion)!r}"
    elif len(answer) != expected_len:
        wrong = f"Your answer {answer} is wrong: it has {len(answer)} digits, not {expected_len}"
    else:
        wrong = f"Your answer {answer} is wrong"
    return f"{case} {wrong}{meaning}."


def score(problem: dict, completion: str, *, truncated: bool = False,
          feedback_style: str = "example") -> Score:
    """Reward 1.0 iff the answer equals `expected_answer(problem)`. Feedback on a wrong answer in the
    chosen `feedback_style` (the module docstring): "example" (default) never states the answer;
    "expected" and "positions" do."""
    if feedback_style not in FEEDBACK_STYLES:
        raise ValueError(f"synthetic feedback_style={feedback_style!r}: use one of {', '.join(FEEDBACK_STYLES)}")
    expected = expected_answer(problem)
    answer = parse_answer(completion)
    info = {"expected_len": len(expected), "truncated": bool(truncated)}
    if answer is not None:
        info.update(format_ok=True, correct_positions=sum(a == b for a, b in zip(answer, expected)),
                    answer_len=len(answer))
    else:
        info.update(format_ok=False, correct_positions=0)
    if answer == expected and answer is not None:
        return Score(1.0, "", info)
    if feedback_style == "example":
        return Score(0.0, _example_feedback(problem, answer, completion, truncated, len(expected)), info)
    notes = []
    if truncated:
        notes.append(f"Truncated attempt: the answer was cut off at the length limit. "
                     f"Answer with the {len(expected)} digits only, then stop.")
    if answer is None:
        if not truncated:
            notes.append("Format error: answer with digits only, like 1 2 3 or 123; "
                         f"got {_shown(completion)!r}.")
        return Score(0.0, " ".join(notes), info)
    wrong = [i + 1 for i, (a, e) in enumerate(zip(answer, expected)) if a != e]
    if feedback_style == "expected":  # got / expected: hands over the answer
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
