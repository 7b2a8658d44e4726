"""What a run says about itself: the host it ran on, and its verdict on `eval.min_gain_points`.

Exit codes of `python -m sdpo_jax.main`: 0 done (also after a SIGTERM-requested stop), 2 bad input
(a config field, a data row, a stale warm start), 3 too many non-finite steps in a row, 4 the run did
not learn: the warm start hit its step cap before its held-out check passed, or a completed run
gained fewer points than `eval.min_gain_points`.
"""

from __future__ import annotations

import dataclasses
import os

import jax

from sdpo_jax.logging import read_jsonl
from sdpo_jax.run_files import run_path

EXIT_BAD_INPUT, EXIT_NONFINITE, EXIT_NO_LEARNING = 2, 3, 4


def platform_line() -> str:
    """CPU model, architecture, JAX backend and (on CPU) the vector instruction set XLA may use: CPU
    results can differ between instruction sets (XLA_FLAGS=--xla_cpu_max_isa=AVX2 lowers it)."""
    import platform
    import re

    model = platform.processor() or "unknown CPU"
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
        model = re.search(r"^model name\s*:\s*(.+)$", info, re.M).group(1) if "model name" in info else model
        flags = re.search(r"^(?:flags|Features)\s*:\s*(.+)$", info, re.M).group(1).split()
    except (OSError, AttributeError):
        pass
    best = next((isa for isa, flag in (("AVX512", "avx512f"), ("AVX2", "avx2"), ("AVX", "avx"), ("NEON", "asimd"))
                 if flag in flags), "unknown")
    forced = re.search(r"--xla_cpu_max_isa=(\S+)", os.environ.get("XLA_FLAGS", ""))
    isa = f"{forced.group(1)} (XLA_FLAGS; the CPU has {best})" if forced else f"{best} (the CPU's best; "\
        "XLA_FLAGS=--xla_cpu_max_isa= lowers it)"
    return (f"{model}, {platform.machine()}, {os.cpu_count()} cores; JAX {jax.__version__} on "
            f"{jax.default_backend()} ({jax.device_count()} devices); XLA CPU instruction set up to {isa}")


@dataclasses.dataclass(frozen=True)
class Verdict:
    line: str  # what the run prints at its end
    missed: bool  # eval.min_gain_points was set and not reached


def judge_gain(run_dir: str, objective: str, floor: float | None, *, completed: bool) -> Verdict:
    """Evaluation accuracy at the first and the last evaluation of the run (run_dir/metrics.jsonl), and the
    verdict on `floor` (eval.min_gain_points; None: none): judged only when the run completed train.steps
    with at least two evaluations, otherwise "no verdict" (and the exit code stays as it is)."""
    path = run_path(run_dir) / "metrics.jsonl"
    evals = [r for r in read_jsonl(path) if "eval/accuracy" in r] if path.exists() else []
    if len(evals) < 2:
        return Verdict(f"eval accuracy ({objective}): fewer than two evaluations"
                       + ("; no verdict on eval.min_gain_points" if floor is not None else ""), False)
    first, last = evals[0], evals[-1]
    gain = 100 * (last["eval/accuracy"] - first["eval/accuracy"])
    line = (f"eval accuracy ({objective}): {first['eval/accuracy']:.3f} at {first['generations']} generations "
            f"-> {last['eval/accuracy']:.3f} at {last['generations']} generations ({gain:+.1f} points)")
    if floor is None:
        return Verdict(line, False)
    if not completed:
        return Verdict(f"{line}; no verdict on eval.min_gain_points (the run did not complete train.steps)", False)
    if gain >= floor:
        return Verdict(f"{line}; passed the floor of {floor:+.1f} points (eval.min_gain_points)", False)
    return Verdict(f"{line}; error: below the floor of {floor:+.1f} points (eval.min_gain_points): exit code "
                   f"{EXIT_NO_LEARNING}", True)
