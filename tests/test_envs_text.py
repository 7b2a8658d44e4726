"""Math, science-MCQ and tool-use environments: rewards, (off-by-default) feedback, converters."""

import json
import os

import pytest

from sdpo_jax.envs import get_env, math, mcq, tooluse

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def load(name):
    with open(os.path.join(FIXTURES, name)) as f:
        return json.load(f)


def test_math_boxed_answers_and_equivalence():
    """The last \\boxed{} counts; equal values in other forms (1/2, 0.5, \\frac12) are correct."""
    p = {"id": "m", "question": "half?", "answer": "\\frac{1}{2}"}
    assert math.score(p, "so \\boxed{0.5}").reward == 1.0
    assert math.score(p, "first \\boxed{3} then \\boxed{1/2}").reward == 1.0
    assert math.score(p, "\\boxed{\\frac{1}{2}}").reward == 1.0
    assert math.score(p, "\\boxed{\\frac{1}{3}}").reward == 0.0
    assert math.score(p, "the answer is 1/2").reward == 0.0  # no box, no reward (official)
    assert math.last_boxed("x \\boxed{\\frac{a}{b}} y") == "\\frac{a}{b}"
    assert math.last_boxed("\\boxed{unclosed") is None


def test_math_feedback_is_off_by_default():
    """No feedback unless asked; format/truncation texts with feedback=True; the answer only with
    correctness_feedback=True."""
    p = {"id": "m", "question": "q", "answer": "7"}
    assert math.score(p, "7").feedback == ""
    assert math.score(p, "7", feedback=True).feedback == math.FORMAT_FEEDBACK
    assert math.score(p, "7", truncated=True, feedback=True).feedback == math.TRUNCATED_FEEDBACK
    assert math.score(p, "\\boxed{8}", feedback=True).feedback == ""
    s = math.score(p, "\\boxed{8}", correctness_feedback=True)
    assert s.feedback == "Your answer is incorrect. The correct answer is 7."
    assert math.build_prompt(p)[-1]["content"].endswith("within \\boxed{}.")


def test_from_math_converts_gsm8k_math_and_plain_rows():
    """GSM8K '#### x', MATH's boxed solution and plain rows become {id, question, answer}."""
    gsm, mth, plain = (math.from_math(r) for r in load("math_rows.json"))
    assert gsm["answer"] == "7" and gsm["question"].startswith("Tom has")
    assert mth == {"id": "math/1", "question": "What is $\\frac{2}{4}$ in lowest terms?",
                   "answer": "\\frac{1}{2}"}
    assert plain["id"] == "plain-1" and math.score(plain, "\\boxed{1200}").reward == 1.0
    with pytest.raises(ValueError, match="no reference answer"):
        math.from_math({"question": "q"})


def test_mcq_answer_tag_reward():
    """Reward 1 iff the last <answer>X</answer> letter is the gold one; feedback empty."""
    p = mcq.from_sciknoweval(load("sciknoweval_rows.json")[0])
    assert p["answer"] == "B"
    assert p["question"].endswith("A: Oxygen\nB: Nitrogen\nC: Argon\nD: Carbon dioxide\n"
                                  "Please reason step by step.")
    good = "<reasoning>N2 is 78%</reasoning>\n<answer>\nB\n</answer>"
    assert (mcq.score(p, good).reward, mcq.score(p, good).feedback) == (1.0, "")
    assert mcq.score(p, "<answer>A</answer> no wait <answer>B</answer>").reward == 1.0
    assert mcq.score(p, "<answer>C</answer>").reward == 0.0
    assert mcq.score(p, "I think B").reward == 0.0
    assert mcq.score(p, "I think B", feedback=True).feedback == mcq.FORMAT_FEEDBACK
    msgs = mcq.build_prompt(p)
    assert msgs[0]["role"] == "system" and "<answer>" in msgs[0]["content"]


def test_from_sciknoweval_accepts_sdpo_formatted_rows():
    """The SDPO-shipped format (prompt/answer/system "None") converts with the official system."""
    p = mcq.from_sciknoweval(load("sciknoweval_rows.json")[1])
    assert p["id"] == "17" and p["answer"] == "A" and p["system"] == mcq.SYSTEM_PROMPT
    with pytest.raises(ValueError, match="one option letter"):
        mcq.from_sciknoweval({"prompt": "q", "answer": "AB"})


def test_tooluse_reward_and_feedback():
    """Reward 1 iff the action multiset and the merged inputs match; nested JSON inputs parse;
    the leaking feedback appears only with feedback=True."""
    weather, books = (tooluse.from_toolalpaca(r) for r in load("toolalpaca_rows.json"))
    good = ('Thought: I need the forecast.\nAction: getForecast\nAction Input: {"city": "Paris", '
            '"days": 2}\n')
    assert tooluse.score(weather, good).reward == 1.0
    wrong = good.replace("2}", "3}")
    s = tooluse.score(weather, wrong)
    assert (s.reward, s.feedback) == (0.0, "")
    s = tooluse.score(weather, wrong, feedback=True)
    assert s.feedback == ("Action inputs mismatch: predicted {'city': 'Paris', 'days': 3}, "
                          "expected {'city': 'Paris', 'days': 2}")
    two = ('Action: getDetails\nAction Input: {"id": 7, "options": {"reviews": true}}\n'
           'Action: search\nAction Input: {"query": "Dune"}')
    assert tooluse.score(books, two).reward == 1.0  # order-free actions, nested input
    assert tooluse.score(books, two.replace("Action: search", "Action: browse")).reward == 0.0
    assert "system" not in weather  # "None" is not a system prompt


def test_envs_found_by_name():
    """get_env resolves each built-in name to its module, and rejects unknown names clearly."""
    for name, mod in (("math", math), ("mcq", mcq), ("tooluse", tooluse)):
        assert get_env(name) is mod
    with pytest.raises(ValueError, match="not a built-in environment"):
        get_env("no_such_env_xyz")


def test_math_scores_in_the_pool():
    """math-verify (signal.alarm timeouts) runs in the scorer's worker processes."""
    from sdpo_jax.envs import Scorer
    p = {"id": "m", "question": "q", "answer": "\\frac{1}{2}"}
    with Scorer("math", num_workers=1, env_options={"unsafe": False}) as s:
        scores, stats = s.score([p, p], ["\\boxed{0.5}", "\\boxed{2}"])
    assert [x.reward for x in scores] == [1.0, 0.0] and stats["errors"] == 0
