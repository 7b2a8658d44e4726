"""Tool use (ToolAlpaca, Thought / Action / Action Input; docs/ALGORITHM.md §6, the official
`feedback/tooluse.py`).

Problem schema: {"id": str, "question": str (tools + format + question), "answer": [{"Action": str,
"Action_Input": dict}]}.  Reward 1.0 iff the multiset of `Action:` names equals the gold one and
the merged dict of every `Action Input:` JSON object equals the merged gold inputs.  Each JSON
object is read with a real JSON decoder, so nested inputs work (the official regex stops at the
first "}").  The official feedback names the expected actions and inputs, i.e. it leaks the answer,
so it is off by default (`feedback=True` turns it on; the paper's §3 runs have it off).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter

from sdpo_jax.envs.base import Score

_ACTION = re.compile(r"Action:\s*(\w+)")
_ACTION_INPUT = re.compile(r"Action Input:\s*(?=\{)")
_FORMAT = re.compile(r"Action:.*?\nAction Input:.*?", re.DOTALL)


def extract_actions(text: str) -> list[str]:
    return _ACTION.findall(text)


def extract_action_inputs(text: str) -> dict:
    """Every JSON object after "Action Input:", merged in order (unparsable ones skipped)."""
    decoder, merged = json.JSONDecoder(), {}
    for m in _ACTION_INPUT.finditer(text):
        try:
            value, _ = decoder.raw_decode(text, m.end())
        except ValueError:
            continue
        if isinstance(value, dict):
            merged.update(value)
    return merged


def _gold_inputs(answer: list) -> dict:
    merged = {}
    for step in answer:
        value = step.get("Action_Input", {})
        if isinstance(value, str):
            try:
                value = json.loads(value) if value.strip() else {}
            except ValueError:
                value = {}
        if isinstance(value, dict):
            merged.update(value)
    return merged


def build_prompt(problem: dict) -> list[dict]:
    """The ToolAlpaca prompt as one user message (plus the problem's system message, if any)."""
    messages = [{"role": "system", "content": problem["system"]}] if problem.get("system") else []
    return messages + [{"role": "user", "content": problem["question"]}]


def validate_problem(problem: dict) -> None:
    """Raise ValueError naming the problem and field when it is not a tool-use problem."""
    if not isinstance(problem, dict):
        raise ValueError(f"tooluse problem must be a dict, got {type(problem).__name__}")
    pid = problem.get("id", "<no id>")
    if not isinstance(problem.get("question"), str) or not problem["question"].strip():
        raise ValueError(f"tooluse problem {pid}: field 'question' must be a non-empty string")
    answer = problem.get("answer")
    if not isinstance(answer, list) or not answer or not all(
            isinstance(s, dict) and isinstance(s.get("Action"), str) for s in answer):
        raise ValueError(f"tooluse problem {pid}: field 'answer' must be a non-empty list of "
                         "{'Action': name, 'Action_Input': {...}}")


def score(problem: dict, completion: str, *, truncated: bool = False,
          feedback: bool = False) -> Score:
    """1.0 iff the actions (as a multiset) and the merged action inputs match the gold ones."""
    gold_actions = [s["Action"] for s in problem["answer"]]
    gold_inputs = _gold_inputs(problem["answer"])
    actions, inputs = extract_actions(completion), extract_action_inputs(completion)
    actions_ok = Counter(actions) == Counter(gold_actions)
    inputs_ok = inputs == gold_inputs
    parts = []
    if feedback and not actions_ok:
        parts.append(f"Actions mismatch: predicted {actions}, expected {gold_actions}")
    if feedback and not inputs_ok:
        parts.append(f"Action inputs mismatch: predicted {inputs}, expected {gold_inputs}")
    info = {"actions_ok": actions_ok, "inputs_ok": inputs_ok, "truncated": bool(truncated),
            "incorrect_format": _FORMAT.search(completion) is None}
    return Score(1.0 if actions_ok and inputs_ok else 0.0, "; ".join(parts), info)


def from_toolalpaca(row: dict) -> dict:
    """A ToolAlpaca row as SDPO ships it (datasets/tooluse/*.json: "prompt", "answer" = JSON list of
    {"Action", "Action_Input"}, "idx", "system") -> a tool-use problem."""
    if not isinstance(row, dict):
        raise ValueError(f"ToolAlpaca row must be an object, got {type(row).__name__}")
    question = row.get("prompt", row.get("question"))
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"ToolAlpaca row {row.get('idx', '?')}: needs a non-empty 'prompt'")
    answer = row.get("answer")
    if isinstance(answer, str):
        try:
            answer = json.loads(answer)
        except ValueError as e:
            raise ValueError(f"ToolAlpaca row {row.get('idx', '?')}: 'answer' is not JSON "
                             f"({e})") from e
    pid = str(row.get("id") or row.get("idx")
              or "tooluse-" + hashlib.sha1(question.encode()).hexdigest()[:12])
    system = row.get("system")
    problem = {"id": pid, "question": question, "answer": answer}
    if isinstance(system, str) and system.strip() and system != "None":
        problem["system"] = system
    validate_problem(problem)
    return problem
