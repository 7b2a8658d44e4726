"""The demo's default feedback does not give the answer away: guessers that read only the feedback and
the attempt, never the question, predict the expected answer no better than chance + 5 points, for
every kind of wrong attempt. The answer-revealing style ("expected") fails the same test."""
import random

import numpy as np
import pytest

from sdpo_jax.envs import synthetic

FINAL_OPS = ("max", "min", "first", "last")  # configs/demo.py




def _attempt(kind: str, answer: str, rng: random.Random) -> tuple[str, bool]:
    """(completion, truncated) of one wrong attempt of `kind`."""
    wrong = str((int(answer) + rng.randint(1, 9)) % 10)
    if kind == "wrong_digit":
        return wrong, False
    if kind == "wrong_length":
        return wrong + "".join(str(rng.randrange(10)) for _ in range(rng.randint(1, 3))), False
    if kind == "format_error":
        return rng.choice(["the answer is", "no idea", "x", "?!", "digits"]), False
    if kind == "truncated":
        return " ".join(str(rng.randrange(10)) for _ in range(8)), True
    assert kind == "empty"
    return "", False


KINDS = ("wrong_digit", "wrong_length", "format_error", "truncated", "empty")


def _records(problems, kind: str, style: str, seed: int):
    rng = random.Random(seed)
    out = []
    for p in problems:
        completion, truncated = _attempt(kind, p["answer"], rng)
        score = synthetic.score(p, completion, truncated=truncated, feedback_style=style)
        assert score.reward == 0.0
        out.append((score.feedback, completion, int(p["answer"])))
    return out


def _digit_features(records) -> np.ndarray:
    """Counts of each digit in the feedback and in the attempt (20 features)."""
    rows = [[fb.count(str(d)) for d in range(10)] + [att.count(str(d)) for d in range(10)] for fb, att, _ in records]
    return np.asarray(rows, np.float64)


def _fit_softmax_regression(x, y, steps=400, lr=0.5, l2=1e-3):
    mean, std = x.mean(0), x.std(0) + 1e-6
    x = np.concatenate([(x - mean) / std, np.ones((len(x), 1))], 1)
    w = np.zeros((x.shape[1], 10))
    onehot = np.eye(10)[y]
    for _ in range(steps):
        logits = x @ w
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        w -= lr * (x.T @ (p - onehot) / len(x) + l2 * w)
    return lambda z: (np.concatenate([(z - mean) / std, np.ones((len(z), 1))], 1) @ w).argmax(1)


def _guesser_accuracies(train, test) -> dict[str, float]:
    """Accuracy of each question-blind guesser on `test` (records: feedback, attempt, answer)."""
    answers = np.array([a for _, _, a in test])
    digits = [[int(c) for c in fb if c.isdigit()] for fb, _, _ in test]
    width = max(len(d) for d in digits)
    acc = {}
    for k in range(width):  # "the k-th digit the feedback contains"
        acc[f"feedback digit {k + 1}"] = float(np.mean([len(d) > k and d[k] == a for d, a in zip(digits, answers)]))
    acc["first digit"] = float(np.mean([bool(d) and d[0] == a for d, a in zip(digits, answers)]))
    acc["last digit"] = float(np.mean([bool(d) and d[-1] == a for d, a in zip(digits, answers)]))
    predict = _fit_softmax_regression(_digit_features(train), np.array([a for _, _, a in train]))
    acc["logistic regression on digit counts"] = float(np.mean(predict(_digit_features(test)) == answers))
    return acc


@pytest.fixture(scope="module")
def problem_sets():
    """1,000 test problems and 5,000 other problems (no question in both) to fit the regression on: a
    question always shows the same test case, so a question seen with its answer could be recognised."""
    splits = synthetic.make_splits({"train": 5000, "eval": 1000}, seed=7, final_ops=FINAL_OPS,
                                   uniform_answers=True, aliases=True)
    return splits["eval"], splits["train"]


def _chance(train, test) -> float:
    """Chance: 0.10 (ten digits), or the accuracy on `test` of the most frequent answer of `train`."""
    majority = np.bincount([int(p["answer"]) for p in train], minlength=10).argmax()
    return max(0.10, float(np.mean([int(p["answer"]) == majority for p in test])))


@pytest.mark.parametrize("kind", KINDS)
def test_default_feedback_does_not_reveal_the_answer(problem_sets, kind):
    """Every guesser reading the "example" feedback and the attempt of 1,000 problems stays within
    chance + 5 points (the logistic regression is fitted on 5,000 other problems)."""
    test, train = problem_sets
    chance = _chance(train, test)
    assert chance < 0.13  # the answers are close to uniform (0.10)
    accuracies = _guesser_accuracies(_records(train, kind, "example", 1), _records(test, kind, "example", 2))
    over = {name: a for name, a in accuracies.items() if a > chance + 0.05}
    assert not over, f"{kind}: guessers above chance {chance:.3f} + 0.05: {over}"


def test_answer_revealing_feedback_fails_the_same_guessers(problem_sets):
    """The "expected" style states the answer: the same guessers find it (the test can fail)."""
    test, train = problem_sets
    accuracies = _guesser_accuracies(_records(train, "wrong_digit", "expected", 1),
                                     _records(test, "wrong_digit", "expected", 2))
    assert max(accuracies.values()) > 0.9, accuracies
