"""Count the module-boundary crossings of one RL step: `python -m sdpo_jax.tools.trace_crossings`.

Runs the main job (`sdpo_jax.main`, as `python -m sdpo_jax.main` would) in-process on a tiny demo
(configs/demo.py, 3 steps, no warm start / eval / checkpoint / plot, a fresh temp run_dir; further
`--config.a.b=v` arguments are passed through) under `sys.setprofile` / `threading.setprofile`, and
reports, per step of the training loop, how often Python crossed from one sdpo_jax module into another.
It relies only on `sdpo_jax.main`, the config file and the train iterator's `__next__` in
`sdpo_jax.data`, so the same file runs on commits whose trainer internals differ.

The counting rule (Python 'call' and 'return' events; a frame's module is `f_globals['__name__']`;
only modules named `sdpo_jax.*` count, this tool excluded):
- caller of a call: the nearest sdpo_jax frame up the `f_back` chain. Usually the direct caller; when
  the callee is entered from library code (jax tracing our function, a callback, `map`), the walk
  passes the library frames and the call counts as if our frame had called it directly.
- crossing: a call into an sdpo_jax function whose caller module differs from the callee module. Every
  call counts, including jax re-tracing our functions (that happens in the first step: compilation).
- step k: from the k-th call of `__next__` in `sdpo_jax.data` (the train iterator) made by the loop
  frame, the frame that first called it, to the next such call. The last step runs to the loop
  frame's return, so it also holds the loop's epilogue. The loop module is that frame's module.
- return to the loop module: a 'return' event of a frame in another sdpo_jax module whose nearest
  sdpo_jax frame up the chain (the same walk) is in the loop module.
- distinct hops: the distinct (caller function, callee function) pairs among the crossings: a hop counts
  once however many rows or chunks repeat it.
- modules entered: the distinct sdpo_jax modules that had a call event in the step.
Threads started by the job are traced too (their events count in the step current at the time);
subprocesses (e.g. a scorer pool) are not.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

_PREFIX = "sdpo_jax."
_SELF = "sdpo_jax.tools.trace_crossings"
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_TINY = ["--config.eval.every=0", "--config.warm_start.steps=0", "--config.checkpoint.every=0",
         "--config.checkpoint.at_end=False", "--config.checkpoint.export_hf_at_end=False",
         "--config.logging.plot=False", "--config.logging.context_every=0",
         "--config.logging.tensorboard=False", "--config.logging.progress_bar=False"]


def _module(frame: FrameType) -> str:
    name = frame.f_globals.get("__name__")
    return name if isinstance(name, str) and name.startswith(_PREFIX) and name != _SELF else ""


def _nearest(frame: FrameType | None) -> FrameType | None:
    """The nearest frame of an sdpo_jax module, starting at `frame`."""
    while frame is not None and not _module(frame):
        frame = frame.f_back
    return frame


@dataclass
class StepCounts:
    calls: int = 0
    crossings: int = 0
    returns_to_loop: int = 0
    pairs: collections.Counter = field(default_factory=collections.Counter)
    hops: set[tuple[str, str]] = field(default_factory=set)
    modules: set[str] = field(default_factory=set)

    def as_dict(self, step: int, top: int) -> dict[str, Any]:
        return {"step": step, "crossings": self.crossings, "returns_to_loop": self.returns_to_loop,
                "modules_entered": len(self.modules), "modules": sorted(self.modules), "calls": self.calls,
                "distinct_pairs": len(self.pairs), "distinct_hops": len(self.hops),
                "pairs": [[a, b, n] for (a, b), n in self.pairs.most_common(top)]}


class Tracer:
    """The profile function: splits the events into steps and counts them (see the module docstring)."""

    def __init__(self) -> None:
        self.loop_frame: FrameType | None = None
        self.loop_module = ""
        self.loop_function = ""
        self.steps: list[StepCounts] = []
        self.done = False

    def __call__(self, frame: FrameType, event: str, arg: Any) -> None:
        if event == "call":
            self._call(frame)
        elif event == "return" and self.steps and not self.done:
            self._return(frame)

    def _call(self, frame: FrameType) -> None:
        callee = _module(frame)
        if not callee or self.done:
            return
        caller = _nearest(frame.f_back)
        caller_module = _module(caller) if caller is not None else ""
        if (frame.f_code.co_name == "__next__" and callee == "sdpo_jax.data" and caller is not None
                and caller_module != callee):
            if self.loop_frame is None:
                self.loop_frame, self.loop_module = caller, caller_module
                self.loop_function = caller.f_code.co_name
            if caller is self.loop_frame:
                self.steps.append(StepCounts())
        if not self.steps:
            return
        counts = self.steps[-1]
        counts.calls += 1
        counts.modules.add(callee)
        if caller_module and caller_module != callee:
            counts.crossings += 1
            counts.pairs[(caller_module, callee)] += 1
            counts.hops.add((f"{caller_module}.{caller.f_code.co_name}", f"{callee}.{frame.f_code.co_name}"))

    def _return(self, frame: FrameType) -> None:
        if frame is self.loop_frame:
            self.done = True
            return
        module = _module(frame)
        if not module or module == self.loop_module:
            return
        target = _nearest(frame.f_back)
        if target is not None and _module(target) == self.loop_module:
            self.steps[-1].returns_to_loop += 1


def run_main(argv: list[str], tracer: Tracer) -> int:
    """`python -m sdpo_jax.main ARGV` in this process under `tracer`; returns its exit code."""
    from absl import app

    import sdpo_jax.main as job
    from sdpo_jax import cli

    codes: list[int] = []
    sys.argv = ["sdpo_jax.main", *argv]
    threading.setprofile(tracer)
    sys.setprofile(tracer)
    try:
        app.run(lambda args: codes.append(job.main(args) or 0), flags_parser=cli.flags_parser(None, job.__doc__))
    except SystemExit as exit_:
        if not codes:
            codes.append(exit_.code if isinstance(exit_.code, int) else 1)
    finally:
        sys.setprofile(None)
        threading.setprofile(None)  # type: ignore[arg-type]
    return codes[0]


def _print_step(d: dict[str, Any], top: int) -> None:
    print(f"step {d['step']}: {d['crossings']} crossings ({d['distinct_hops']} distinct hops, {d['distinct_pairs']} "
          f"module pairs), "
          f"{d['returns_to_loop']} returns to the loop module, {d['modules_entered']} modules entered, "
          f"{d['calls']} sdpo_jax calls")
    for caller, callee, n in d["pairs"][:top]:
        print(f"  {n:8d}  {caller} -> {callee}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--config", default=os.path.join(_ROOT, "configs", "demo.py"))
    parser.add_argument("--steps", type=int, default=3, help="train.steps of the traced run")
    parser.add_argument("--step", type=int, default=1, help="the step to report in full (0-based)")
    parser.add_argument("--top", type=int, default=30, help="module pairs to list")
    parser.add_argument("--json", default=None, help="write the counts here as JSON")
    args, overrides = parser.parse_known_args(argv)
    if not 0 <= args.step < args.steps:
        parser.error(f"--step must be in [0, {args.steps})")
    with tempfile.TemporaryDirectory(prefix="trace_crossings_") as run_dir:
        job_argv = [f"--config={args.config}", f"--config.train.steps={args.steps}", *_TINY,
                    f"--config.run_dir={run_dir}", *overrides]
        tracer = Tracer()
        exit_code = run_main(job_argv, tracer)
    steps = [c.as_dict(k, args.top) for k, c in enumerate(tracer.steps)]
    if args.step >= len(steps):
        print(f"error: the trace saw {len(steps)} steps (job exit code {exit_code}); no step {args.step}",
              file=sys.stderr)
        return 1
    result = {"loop_module": tracer.loop_module, "loop_function": tracer.loop_function, "exit_code": exit_code,
              "job_argv": job_argv, "steps_seen": len(steps), **steps[args.step], "per_step": steps}
    print(f"\nloop: {tracer.loop_module}.{tracer.loop_function}; {len(steps)} steps traced; "
          f"job exit code {exit_code} (the last step also holds the loop's epilogue)")
    for d in steps:
        print(f"  step {d['step']}: {d['crossings']} crossings, {d['returns_to_loop']} returns to the loop "
              f"module, {d['modules_entered']} modules entered")
    _print_step(steps[args.step], args.top)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
