"""`python -m sdpo_jax.tools.prepare_lcb` on fixture rows in LiveCodeBench's raw format (offline, --source):
the contest-date window, the official 50 % test split, private-test decoding, and problems the code
environment scores."""

import base64
import json
import os
import pickle
import zlib

import numpy as np
import pytest

from sdpo_jax.envs import code, sandbox
from sdpo_jax.tools import prepare_lcb


def _private(cases: list[dict]) -> str:
    """LiveCodeBench's private-test encoding: base64(zlib(pickle(JSON string)))."""
    return base64.b64encode(zlib.compress(pickle.dumps(json.dumps(cases)))).decode()


def _row(qid: str, date: str, cases: list[dict], *, starter: str = "", func_name: str = "") -> dict:
    return {"question_title": qid, "question_content": f"Problem {qid}: read two integers, print their sum.",
            "platform": "atcoder", "question_id": qid, "contest_id": "c1", "contest_date": date,
            "starter_code": starter, "difficulty": "easy",
            "public_test_cases": json.dumps(cases[:1]), "private_test_cases": _private(cases),
            "metadata": json.dumps({"func_name": func_name} if func_name else {})}


STDIN = [{"input": f"{a} {b}\n", "output": f"{a + b}\n", "testtype": "stdin"} for a, b in
         [(1, 2), (3, 4), (10, 20), (7, 8), (0, 0)]]
CALL = [{"input": f"{a}\n{b}", "output": str(a + b), "testtype": "functional"} for a, b in [(1, 1), (2, 5), (9, 9)]]
STARTER = "class Solution:\n    def add(self, a: int, b: int) -> int:\n        "


@pytest.fixture()
def source(tmp_path):
    """Two raw files: test.jsonl holds rows inside the window (one on its first day), one on its end date
    (excluded) and one before it; test2.jsonl one more inside."""
    rows1 = [_row("in_a", "2025-03-10T00:00:00", STDIN),
             _row("end_excluded", "2025-05-01T00:00:00", STDIN),
             _row("in_functional", "2025-02-01T00:00:00", CALL, starter=STARTER, func_name="add"),
             _row("too_early", "2024-12-01T00:00:00", STDIN)]
    rows2 = [_row("in_b", "2025-04-30T12:00:00", STDIN[:1])]
    directory = tmp_path / "raw"
    directory.mkdir()
    for name, rows in (("test.jsonl", rows1), ("test2.jsonl", rows2)):
        (directory / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(directory)


def _read(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_window_split_and_private_tests(source, tmp_path):
    """Invariant: eval.jsonl holds exactly the questions with contest date in [2025-02-01, 2025-05-01), in file
    order, with every private test decoded; train.jsonl the same questions with max(1, int(n / 2)) tests each,
    the very indices the official data/split_tests.py draws (global numpy seed 0, one choice per question in
    order, sorted); the summary counts both."""
    out = str(tmp_path / "out")
    assert prepare_lcb.main(["--out", out, "--source", source]) == 0
    evaluation, train = _read(os.path.join(out, "eval.jsonl")), _read(os.path.join(out, "train.jsonl"))
    assert [p["id"] for p in evaluation] == [p["id"] for p in train] == ["in_a", "in_functional", "in_b"]
    assert evaluation[0]["tests"]["inputs"] == [c["input"] for c in STDIN]
    assert evaluation[1]["tests"] == {"type": "functional", "inputs": [c["input"] for c in CALL],
                                      "outputs": [c["output"] for c in CALL], "fn_name": "add"}
    assert "def add(self, a: int, b: int) -> int:" in evaluation[1]["question"]  # the signature line
    assert all(p["time_limit_s"] == 6 for p in evaluation)
    np.random.seed(0)  # the official procedure, on the legacy global generator
    for full, reduced in zip(evaluation, train):
        n = len(full["tests"]["inputs"])
        keep = np.sort(np.random.choice(n, size=max(1, int(n * 0.5)), replace=False))
        assert reduced["tests"]["inputs"] == [full["tests"]["inputs"][i] for i in keep]
        assert reduced["tests"]["outputs"] == [full["tests"]["outputs"][i] for i in keep]
    assert [len(p["tests"]["inputs"]) for p in train] == [2, 1, 1]
    summary = json.loads(open(os.path.join(out, "summary.json")).read())
    assert summary["eval"]["questions"] == summary["train"]["questions"] == 3
    assert (summary["eval"]["tests"], summary["train"]["tests"]) == (9, 4)
    assert summary["files"] == ["test.jsonl", "test2.jsonl"] and summary["rows_read"] == 5


def test_bad_rows_and_offline_fetch_say_what_to_fix(source, tmp_path, monkeypatch, capsys):
    """Invariant: a row with an unreadable contest date, or unreadable private tests, is refused naming its
    file:line and the column; without --source and without network (HF_HUB_OFFLINE=1) the tool exits 2 and
    prints the command that fetches the files."""
    path = os.path.join(source, "test2.jsonl")
    with open(path, "a") as f:
        f.write(json.dumps(dict(_row("bad_date", "soon", STDIN))) + "\n")
    with pytest.raises(prepare_lcb.PrepareError, match=r"test2.jsonl:2: column 'contest_date' is 'soon'"):
        prepare_lcb.prepare(str(tmp_path / "o1"), source=source)
    with open(path, "w") as f:
        f.write(json.dumps(dict(_row("bad_tests", "2025-03-01T00:00:00", STDIN), private_test_cases="!!")) + "\n")
    with pytest.raises(prepare_lcb.PrepareError, match=r"test2.jsonl:1: .*bad_tests.*test cases"):
        prepare_lcb.prepare(str(tmp_path / "o2"), source=source)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert prepare_lcb.main(["--out", str(tmp_path / "o3")]) == 2
    err = capsys.readouterr().err
    assert "huggingface-cli download livecodebench/code_generation_lite" in err and "--source DIR" in err


@pytest.mark.skipif(sandbox.detect_kind() == "none", reason="no sandbox on this host; the code env refuses to run")
def test_prepared_problems_are_scored_by_the_code_environment(source, tmp_path):
    """Invariant: a prepared stdin problem and a functional one score 1 with a correct solution and 0 with a
    broken one, whose feedback is the judge's (a failing case with its input and expected output)."""
    prepare_lcb.prepare(str(tmp_path / "out"), source=source)
    stdin_problem, call_problem, _ = _read(str(tmp_path / "out" / "eval.jsonl"))
    good = "```python\na, b = map(int, input().split())\nprint(a + b)\n```"
    bad = "```python\na, b = map(int, input().split())\nprint(a - b)\n```"
    assert code.score(stdin_problem, good).reward == 1.0
    broken = code.score(stdin_problem, bad)
    assert broken.reward == 0.0 and "Wrong Answer" in broken.feedback and "Expected" in broken.feedback
    good_call = f"```python\n{STARTER}return a + b\n```"
    bad_call = f"```python\n{STARTER}return a * b\n```"
    assert code.score(call_problem, good_call).reward == 1.0
    assert code.score(call_problem, bad_call).reward == 0.0
