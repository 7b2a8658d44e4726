"""What every environment returns, environment lookup, and the batched scorer.

An environment is a module (or any object) with
    score(problem: dict, completion: str, *, truncated: bool = False, **options) -> Score
    build_prompt(problem: dict) -> list[dict]          # chat messages: system + user
and optionally `validate_problem(problem)` (raises ValueError naming the bad field) and
`check_ready(**options)` (raises before training starts when the host cannot run it, e.g. a code
environment with no sandbox).  Built-in names: code, math, mcq, tooluse, synthetic; anything else is
an import path ("my_pkg.my_env" or "my_pkg.my_env:ENV").

`Scorer` runs many `score` calls in parallel in a pool of worker processes that stays
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
import os
import select
import signal
import time
import traceback
import types
from dataclasses import dataclass, field
from typing import Any, Sequence

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
                raise ValueError(f"env {name_or_path!r}: module {module_name} has no attribute "
                                 f"{attr!r}")
            env = getattr(env, attr)
    for needed in ("score", "build_prompt"):
        if not callable(getattr(env, needed, None)):
            raise ValueError(f"env {name_or_path!r} has no callable {needed}(); an environment "
                             "needs score(problem, completion, *, truncated=False) and "
                             "build_prompt(problem)")
    return env


# ======================================================================================
# The batched scorer: a pool of worker processes, JSON over pipes, a timeout per item
# ======================================================================================

def default_num_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


_WORKER_BOOT = "from sdpo_jax.envs.base import _worker_main; _worker_main()"


def _worker_main() -> None:
    """A pool worker (`python -c _WORKER_BOOT`): newline-delimited JSON requests on stdin, answers
    on the original stdout; anything the environment prints goes to stderr instead."""
    import sys
    out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    env = get_env(os.environ["SDPO_ENV_NAME"])
    env_options = json.loads(os.environ.get("SDPO_ENV_OPTIONS") or "{}")
    batch, cache = None, {}
    for line in sys.stdin:
        request = json.loads(line)
        if request.get("b") != batch:
            batch, cache = request.get("b"), {}
        if "p" in request:
            cache[request["k"]] = request["p"]
        try:
            result = env.score(cache[request["k"]], request["c"], truncated=bool(request["t"]),
                               **env_options)
            if not isinstance(result, Score):
                result = Score(*result)
            data = json.dumps({"i": request["i"], "score": result.to_json()})
        except Exception as e:  # noqa: BLE001 - reported to the parent as an item error
            data = json.dumps({"i": request["i"], "error": f"{type(e).__name__}: {e}",
                               "trace": traceback.format_exc()[-2000:]})
        out.write(data + "\n")
        out.flush()


class _Worker:
    """One worker process in its own session, so killing it takes everything it started."""

    def __init__(self, env_name: str, env_options: dict):
        import subprocess
        import sys
        env = dict(os.environ, SDPO_ENV_NAME=env_name, SDPO_ENV_OPTIONS=json.dumps(env_options),
                   PYTHONPATH=os.pathsep.join(p for p in sys.path if p and os.path.isdir(p)))
        self.proc = subprocess.Popen([sys.executable, "-c", _WORKER_BOOT], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env, start_new_session=True)
        self.fd = self.proc.stdout.fileno()
        os.set_blocking(self.fd, False)
        self.buf = b""
        self.sent_keys: set = set()
        self.batch = None
        self.item = None
        self.deadline = math.inf

    def alive(self) -> bool:
        return self.proc.poll() is None

    def send(self, data: str) -> None:
        self.proc.stdin.write(data.encode("utf-8") + b"\n")
        self.proc.stdin.flush()

    def read_answer(self):
        """The next answer line if complete, else None; raises EOFError when the worker is gone."""
        try:
            chunk = os.read(self.fd, 1 << 20)
        except BlockingIOError:
            chunk = None
        if chunk == b"":
            raise EOFError("worker closed its output")
        if chunk:
            self.buf += chunk
        if b"\n" not in self.buf:
            return None
        line, _, self.buf = self.buf.partition(b"\n")
        return json.loads(line.decode("utf-8"))

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.kill()
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass


def accepted_options(env, env_name: str, options: dict | None) -> dict:
    """The options `env.score` takes.  `unsafe` (the config's env.unsafe_allow_no_sandbox) is
    dropped for environments that run no code; any other unknown option is an error."""
    import inspect
    options = dict(options or {})
    params = inspect.signature(env.score).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return options
    if "unsafe" not in params:
        options.pop("unsafe", None)
    unknown = sorted(set(options) - set(params))
    if unknown:
        known = sorted(k for k, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY
                       and k != "truncated")
        raise ValueError(f"env {env_name!r}: score() takes no option {', '.join(unknown)}; "
                         f"it takes {', '.join(known) or 'none'}")
    return options


class Scorer:
    """Scores completions in parallel with `env.score`, in worker processes kept alive between
    calls.  Use as a context manager or call `close()`.

        with Scorer("code", num_workers=8, timeout_s=30, env_options={"unsafe": False}) as s:
            scores, stats = s.score(problems, completions, truncated)

    `env_options` are keyword arguments for every `score` call (e.g. the code env's `unsafe`, the
    math env's `feedback`).  `check_ready(**env_options)`, when the env has it, runs here at
    construction, so a host that cannot run the env fails before training starts.
    """

    def __init__(self, env_name: str, *, num_workers: int | None = None, timeout_s: float = 30.0,
                 env_options: dict | None = None):
        if not isinstance(env_name, str):
            raise TypeError("Scorer needs the env as a name or import path (workers import it)")
        env = get_env(env_name)
        self.env_name, self.env_options = env_name, accepted_options(env, env_name, env_options)
        json.dumps(self.env_options)  # must cross to the workers as JSON
        if callable(getattr(env, "check_ready", None)):
            env.check_ready(**self.env_options)
        self.num_workers = (int(num_workers) if num_workers and num_workers > 0
                            else default_num_workers())
        self.timeout_s = float(timeout_s)
        self._workers: list[_Worker | None] = [None] * self.num_workers
        self._started = [False] * self.num_workers
        self._batch = 0
        self.totals = {"items": 0, "errors": 0, "timeouts": 0, "crashes": 0, "restarts": 0}

    def __enter__(self) -> "Scorer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for i, w in enumerate(self._workers):
            if w is not None:
                w.kill()
                self._workers[i] = None

    def _worker(self, i: int) -> _Worker:
        w = self._workers[i]
        if w is None or not w.alive():
            if w is not None:
                w.kill()
            if self._started[i]:
                self.totals["restarts"] += 1
            self._started[i] = True
            w = self._workers[i] = _Worker(self.env_name, self.env_options)
        return w

    def score(self, problems: Sequence[dict], completions: Sequence[str],
              truncated: Sequence[bool] | None = None) -> tuple[list[Score], dict]:
        """Scores in input order, and stats {items, errors, timeouts, crashes, restarts, wall_s,
        items_per_s, mean_reward}.  Never raises for an item's failure."""
        n = len(completions)
        if len(problems) != n:
            raise ValueError(f"{len(problems)} problems but {n} completions")
        truncated = [False] * n if truncated is None else [bool(t) for t in truncated]
        if len(truncated) != n:
            raise ValueError(f"{len(truncated)} truncated flags but {n} completions")
        start = time.monotonic()
        self._batch += 1
        keys, encoded = [], {}
        for p in problems:  # a problem shared by a group's samples crosses once per worker
            k = str(id(p))
            keys.append(k)
            if k not in encoded:
                try:
                    encoded[k] = json.dumps(p)
                except (TypeError, ValueError) as e:
                    encoded[k] = e
        results: list[Score | None] = [None] * n
        stats = {"items": n, "errors": 0, "timeouts": 0, "crashes": 0, "restarts": 0}
        pending = list(range(n - 1, -1, -1))
        busy: dict[int, _Worker] = {}

        def fail(i: int, kind: str, text: str, detail: str = "") -> None:
            stats[kind] += 1
            results[i] = Score(0.0, text, {"error": kind, "detail": detail[-1500:]})

        while pending or busy:
            for wi in range(self.num_workers):
                if not pending:
                    break
                if wi in busy:
                    continue
                i = pending.pop()
                if isinstance(encoded[keys[i]], Exception):
                    fail(i, "errors", "Scoring failed: the problem is not JSON.",
                         str(encoded[keys[i]]))
                    continue
                restarts_before = self.totals["restarts"]
                w = self._worker(wi)
                stats["restarts"] += self.totals["restarts"] - restarts_before
                if w.batch != self._batch:
                    w.batch, w.sent_keys = self._batch, set()
                head = json.dumps({"b": self._batch, "k": keys[i], "i": i, "c": completions[i],
                                   "t": truncated[i]})
                if keys[i] not in w.sent_keys:
                    head = head[:-1] + ', "p": ' + encoded[keys[i]] + "}"
                    w.sent_keys.add(keys[i])
                try:
                    w.send(head)
                except OSError as e:
                    w.kill()
                    self._workers[wi] = None
                    fail(i, "crashes", "Scoring failed: the environment worker crashed.", str(e))
                    continue
                w.item, w.deadline = i, time.monotonic() + self.timeout_s
                busy[wi] = w
            if not busy:
                continue
            now = time.monotonic()
            wait_s = max(0.0, min(w.deadline for w in busy.values()) - now)
            ready, _, _ = select.select([w.fd for w in busy.values()], [], [], wait_s)
            for wi, w in list(busy.items()):
                answer = None
                if w.fd in ready:
                    try:
                        answer = w.read_answer()
                    except (EOFError, OSError, ValueError) as e:
                        code = w.proc.poll()
                        w.kill()
                        self._workers[wi] = None
                        fail(w.item, "crashes", "Scoring failed: the environment process crashed "
                             f"(exit {code}).", repr(e))
                        del busy[wi]
                        continue
                if answer is not None:
                    if answer.get("i") != w.item:  # cannot happen with one request in flight
                        w.kill()
                        self._workers[wi] = None
                        fail(w.item, "crashes", "Scoring failed: the worker answered out of order.")
                    elif "score" in answer:
                        results[w.item] = Score.from_json(answer["score"])
                    else:
                        fail(w.item, "errors", "Scoring failed: the environment raised "
                             f"{answer.get('error', 'an error')}"[:500], answer.get("trace", ""))
                    del busy[wi]
                elif time.monotonic() >= w.deadline:
                    w.kill()
                    self._workers[wi] = None
                    fail(w.item, "timeouts", "Scoring failed: the environment did not finish "
                         f"within {self.timeout_s:g} s.")
                    del busy[wi]
        wall = time.monotonic() - start
        for k in ("errors", "timeouts", "crashes"):
            self.totals[k] += stats[k]
        self.totals["items"] += n
        stats.update(wall_s=wall, items_per_s=n / wall if wall > 0 else float("inf"),
                     mean_reward=sum(s.reward for s in results) / n if n else 0.0,
                     workers=self.num_workers)
        return results, stats
