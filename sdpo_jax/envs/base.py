"""What every environment returns, environment lookup, and the batched scorer.

An environment is a module (or any object) with
    score(problem: dict, completion: str, *, truncated: bool = False, **options) -> Score
    build_prompt(problem: dict) -> list[dict]          # chat messages: system + user
and optionally `validate_problem(problem)` (raises ValueError naming the bad field) and
`check_ready(**options)` (raises before training starts when the host cannot run it, e.g. a code
environment with no sandbox).  Built-in names: code, math, mcq, tooluse, synthetic; anything else is
an import path ("my_pkg.my_env" or "my_pkg.my_env:ENV").

`Scorer` / `score_batch` run many `score` calls in parallel in a pool of worker processes that stays
alive between calls.  Requests and answers cross the process boundary as JSON (never pickles), each
item has a wall-clock limit, and a worker that crashes, hangs or raises turns into
Score(0.0, <explanation>, {"error": ...}) for that item and a counter in the stats: never an
exception in the trainer.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import multiprocessing
import multiprocessing.connection
import os
import signal
import time
import traceback
import types
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

log = logging.getLogger(__name__)

BUILTIN_ENVS = ("code", "math", "mcq", "tooluse", "synthetic")


@dataclass(frozen=True)
class Score:
    """One scored completion: reward, the feedback text for the teacher prompt ("" = none), and
    plain JSON-able diagnostics (verdict, counts, error...)."""

    reward: float
    feedback: str
    info: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"reward": float(self.reward), "feedback": str(self.feedback), "info": self.info}

    @staticmethod
    def from_json(d: dict) -> "Score":
        return Score(float(d["reward"]), str(d["feedback"]), dict(d.get("info") or {}))


def get_env(name_or_path: str | types.ModuleType | Any):
    """The environment for a built-in name ("code", "math", "mcq", "tooluse", "synthetic") or an
    import path ("my_pkg.my_env", or "my_pkg.my_env:OBJ" for an attribute).  An object that already
    has `score` and `build_prompt` is returned as is."""
    if not isinstance(name_or_path, str):
        env = name_or_path
    else:
        module_name, _, attr = name_or_path.partition(":")
        if module_name in BUILTIN_ENVS:
            module_name = f"sdpo_jax.envs.{module_name}"
        try:
            env = importlib.import_module(module_name)
        except ImportError as e:
            raise ValueError(
                f"env {name_or_path!r}: not a built-in environment ({', '.join(BUILTIN_ENVS)}) and "
                f"not importable ({e}); give a module path like 'my_pkg.my_env'") from e
        if attr:
            if not hasattr(env, attr):
                raise ValueError(f"env {name_or_path!r}: module {module_name} has no attribute {attr!r}")
            env = getattr(env, attr)
    for needed in ("score", "build_prompt"):
        if not callable(getattr(env, needed, None)):
            raise ValueError(f"env {name_or_path!r} has no callable {needed}(); an environment needs "
                             "score(problem, completion, *, truncated=False) and build_prompt(problem)")
    return env
