"""The demo's synthetic task: determinism, difficulty, exact-match reward, position feedback."""
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
    assert synthetic.build_prompt(p)[1] == {"role": "user", "content": "inc reverse 3 8 1 9"}
    assert synthetic.build_prompt(p)[0]["role"] == "system"


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


def test_default_feedback_is_got_and_expected():
    """Default feedback reads like a failing unit test: the answer given, the expected answer, the
    wrong positions, and a length mismatch."""
    p = {"id": "x", "digits": "3814", "ops": ["reverse"]}
    assert synthetic.score(p, "4813").feedback == "Wrong answer 4813; expected 4183 (positions 2, 3 wrong)."
    assert synthetic.score(p, "41").feedback == "Wrong answer 41; expected 4183, 2 digits instead of 4."
    with pytest.raises(ValueError, match="feedback_style"):
        synthetic.score(p, "41", feedback_style="verbose")


def test_format_error_and_truncation_feedback():
    """Non-digit answers get a format-error feedback; truncated ones say so."""
    p = {"id": "x", "digits": "3814", "ops": ["reverse"]}
    s = synthetic.score(p, "the answer is 4183")
    assert s.reward == 0.0 and s.feedback.startswith("Format error") and "4183" in s.feedback
    s = synthetic.score(p, "")
    assert s.reward == 0.0 and "Format error" in s.feedback
    s = synthetic.score(p, "4 4 4 4 4 4 4", truncated=True)
    assert s.reward == 0.0 and s.feedback.startswith("Truncated attempt") and s.info["truncated"]


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
