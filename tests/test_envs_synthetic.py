"""The demo's synthetic task: determinism, difficulty, exact-match reward, feedback styles, uniform
answers, other names for the ops, disjoint question sets."""
import collections
import random

import pytest

from sdpo_jax.envs import get_env, synthetic


def test_make_problems_is_deterministic_for_a_seed():
    """Same (n, seed, difficulty) -> identical problems; another seed -> different ones."""
    a = synthetic.make_problems(50, seed=3, difficulty=2)
    b = synthetic.make_problems(50, seed=3, difficulty=2)
    c = synthetic.make_problems(50, seed=4, difficulty=2)
    assert a == b
    assert a != c
    assert len({p["id"] for p in a}) == 50


def test_difficulty_sets_length_and_chain():
    """Difficulty 1 = one op on 3-4 digits; difficulty 5 = four chained ops on 5-8 digits."""
    for p in synthetic.make_problems(40, seed=0, difficulty=1):
        assert len(p["ops"]) == 1 and 3 <= len(p["digits"]) <= 4
    for p in synthetic.make_problems(40, seed=0, difficulty=5):
        assert len(p["ops"]) == 4 and 5 <= len(p["digits"]) <= 8
        assert all(x != y for x, y in zip(p["ops"], p["ops"][1:]))


def test_expected_answer_applies_ops_left_to_right():
    """inc then reverse on 3 8 1 9 gives 0 2 9 4 (9 wraps to 0)."""
    p = {"id": "x", "digits": "3819", "ops": ["inc", "reverse"]}
    assert synthetic.expected_answer(p) == "0294"
    assert synthetic.expected_answer({"digits": "3819", "ops": ["sort"]}) == "1389"
    assert synthetic.expected_answer({"digits": "3819", "ops": ["rotate", "dec"]}) == "7082"
    assert synthetic.build_prompt(p) == [{"role": "user", "content": "inc reverse 3819"}]


def test_reward_is_exact_match_and_accepts_spaced_digits():
    """Reward 1 for the exact digits (with or without spaces, surrounding whitespace ignored)."""
    p = {"id": "x", "digits": "3814", "ops": ["reverse"]}
    for text in ("4183", " 4 1 8 3\n", "4183 "):
        s = synthetic.score(p, text)
        assert s.reward == 1.0 and s.feedback == ""
    assert synthetic.score(p, "4813").reward == 0.0


def test_feedback_names_wrong_positions_and_length():
    """feedback_style="positions": wrong digits are named by 1-based position with the expected
    digit; a length mismatch is said."""
    p = {"id": "x", "digits": "3814", "ops": ["reverse"]}
    s = synthetic.score(p, "4813", feedback_style="positions")
    assert s.feedback == "Wrong answer 4813. Position 2 should be 1. Position 3 should be 8."
    s = synthetic.score(p, "41", feedback_style="positions")
    assert "2 digits; it should have 4" in s.feedback and "Missing at the end: 8 3" in s.feedback
    s = synthetic.score(p, "41830", feedback_style="positions")
    assert "5 digits; it should have 4" in s.feedback


def test_expected_feedback_is_got_and_expected():
    """feedback_style="expected" reads like a failing unit test that prints both values: the answer
    given, the expected answer, the wrong positions, and a length mismatch."""
    p = {"id": "x", "digits": "3814", "ops": ["reverse"]}
    fb = lambda text: synthetic.score(p, text, feedback_style="expected").feedback  # noqa: E731
    assert fb("4813") == "Wrong answer 4813; expected 4183 (positions 2, 3 wrong)."
    assert fb("41") == "Wrong answer 41; expected 4183, 2 digits instead of 4."
    with pytest.raises(ValueError, match="feedback_style"):
        synthetic.score(p, "41", feedback_style="verbose")


def test_default_feedback_is_a_test_case_and_what_was_wrong():
    """The default ("example") feedback shows a test case of the same ops on another input with its
    expected output, then what was wrong with this attempt, and what each op word means; it never
    contains this question's answer when the test case's output differs from it."""
    p = {"id": "x", "digits": "3814", "ops": ["inc", "max"], "names": ["up", "top"], "difficulty": 1}
    digits, output = synthetic.test_case(p)
    assert digits != p["digits"] and 3 <= len(digits) <= 4
    assert output == synthetic.expected_answer({"digits": digits, "ops": ["inc", "max"]})
    case = f"Test case: up top {digits} -> {output}."
    assert synthetic.score(p, "3").feedback == f"{case} Your answer 3 is wrong; up top means inc max."
    assert synthetic.score(p, "35").feedback == (f"{case} Your answer 35 is wrong: it has 2 digits, not 1; "
                                                 "up top means inc max.")
    assert synthetic.score(p, "abc").feedback.startswith(f"{case} Format error")
    plain = {"id": "y", "digits": "3814", "ops": ["reverse"]}
    assert synthetic.score(plain, "4813").feedback.endswith("Your answer 4813 is wrong.")
    assert synthetic.score(p, "3").feedback == synthetic.score(p, "3").feedback  # deterministic


def test_get_env_finds_synthetic_by_name_and_path():
    """get_env resolves the built-in name and the import path to the same module."""
    assert get_env("synthetic") is synthetic
    assert get_env("sdpo_jax.envs.synthetic") is synthetic


def test_final_reducer_ops_give_single_digit_answers():
    """With final_ops, every chain ends in one reducer and the answer is that one digit; the problems
    stay deterministic for a seed and differ from the ones without final ops."""
    final = ("max", "min", "first", "last")
    a = synthetic.make_problems(40, seed=1, difficulty=1, final_ops=final)
    assert a == synthetic.make_problems(40, seed=1, difficulty=1, final_ops=final)
    assert all(p["ops"][-1] in final and len(p["answer"]) == 1 for p in a)
    p = {"id": "x", "digits": "1099", "ops": ["inc", "max"]}  # inc -> 2100 -> max 2
    assert synthetic.expected_answer(p) == "2"
    assert synthetic.expected_answer({"id": "y", "digits": "5274", "ops": ["sort", "last"]}) == "7"
    assert synthetic.score(p, "2").reward == 1.0
    with pytest.raises(ValueError, match="unknown synthetic op 'median'"):
        synthetic.make_problems(2, seed=0, final_ops=("median",))


def test_uniform_answers_make_every_chain_uniform():
    """With uniform_answers each op chain's answers are spread evenly over 0-9 (within 4 points of 10 %
    on 12,000 problems), where without it `max` answers are mostly high digits."""
    final = ("max", "min", "first", "last")
    by_chain = collections.defaultdict(collections.Counter)
    for p in synthetic.make_problems(12000, seed=3, final_ops=final, uniform_answers=True):
        assert synthetic.expected_answer(p) == p["answer"]
        by_chain[tuple(p["ops"])][p["answer"]] += 1
    assert len(by_chain) == 12
    for counts in by_chain.values():
        shares = [counts[str(d)] / sum(counts.values()) for d in range(10)]
        assert max(abs(x - 0.1) for x in shares) < 0.04, shares
    skewed = collections.Counter(p["answer"] for p in synthetic.make_problems(2000, seed=3, final_ops=("max",)))
    assert skewed["9"] > 2 * skewed["5"]


def test_aliases_rename_the_ops_in_the_question_only():
    """aliases=True writes the ops by their other names; the answer is the same computation."""
    final = ("max", "min", "first", "last")
    plain = synthetic.make_problems(30, seed=2, final_ops=final)
    named = synthetic.make_problems(30, seed=2, final_ops=final, aliases=True)
    for p in named:
        assert p["names"] == [synthetic.ALIASES[op] for op in p["ops"]]
        assert synthetic.build_prompt(p)[0]["content"] == " ".join(p["names"]) + " " + p["digits"]
        synthetic.validate_problem(p)
    assert [p["answer"] for p in plain] != [] and all(p["answer"] == synthetic.expected_answer(p) for p in named)
    with pytest.raises(ValueError, match="'names'"):
        synthetic.validate_problem({"id": "z", "digits": "12", "ops": ["max"], "names": ["a", "b"]})


def test_random_names_give_each_op_a_fresh_word_from_the_pool():
    """random_names: distinct words from NAME_POOL, one per distinct op, varying between draws."""
    p = {"id": "x", "digits": "3814", "ops": ["inc", "max"]}
    rng = random.Random(0)
    draws = [synthetic.random_names(p, rng)["names"] for _ in range(20)]
    assert all(len(set(d)) == 2 and set(d) <= set(synthetic.NAME_POOL) for d in draws)
    assert len({tuple(d) for d in draws}) > 10
    assert synthetic.random_names(p, rng)["ops"] == ["inc", "max"]


def test_corrupt_answer_is_a_plausible_wrong_answer():
    """corrupt_answer never returns the answer; for one-digit answers it is a digit."""
    rng = random.Random(1)
    for p in synthetic.make_problems(300, seed=4, final_ops=("max", "min", "first", "last")):
        wrong = synthetic.corrupt_answer(p, rng)
        assert wrong != p["answer"] and wrong.isdigit() and len(wrong) == 1


def test_splits_are_disjoint_and_the_warm_start_uses_the_ops_own_names():
    """make_splits: no question (digits, ops) in two sets -- evaluation is disjoint from the warm-start
    and RL training questions; warm-start questions use the ops' own names, the others the aliases."""
    sizes = {"train": 2000, "eval": 300, "check": 100, "warm_start": 2000}
    splits = synthetic.make_splits(sizes, seed=5, final_ops=("max", "min", "first", "last"), uniform_answers=True,
                                   aliases=True)
    keys = {name: {(p["digits"], tuple(p["ops"])) for p in rows} for name, rows in splits.items()}
    assert {name: len(rows) for name, rows in splits.items()} == sizes
    names = list(keys)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not keys[a] & keys[b], (a, b)
    assert all("names" not in p for p in splits["warm_start"])
    assert all("names" in p for name in ("train", "eval", "check") for p in splits[name])
    assert splits == synthetic.make_splits(sizes, seed=5, final_ops=("max", "min", "first", "last"),
                                           uniform_answers=True, aliases=True)
