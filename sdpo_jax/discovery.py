"""discovery@k, unbiased pass@k, bootstrap confidence intervals, and the JSON / CSV / PNG writers.

Test-time methods are compared by discovery@k = P(first success <= k), counting every attempt
(docs/ALGORITHM.md §7). For one question and one method, each seed s gives a first-success index T_s (1-based,
every attempt counted, whole batches included) or is censored at the attempt budget B (no success);
discovery@k for k <= B is the fraction of seeds with T_s <= k. For i.i.d. sampling (best-of-k)
discovery@k equals pass@k, estimated without bias from N >= k samples with c successes:

    pass@k = 1 - C(N - c, k) / C(N, k)        (Chen et al. 2021)

A method's curve is the mean over questions of the per-question curves. Confidence intervals come
from a percentile bootstrap that resamples seeds with replacement within each question (for best-of-k:
resamples the N attempts, i.e. c* ~ Binomial(N, c / N)), 90 % by default as in the paper.

Summaries read off a curve on the full grid k = 1..B: the attempts needed to reach a discovery
probability p (the paper's "3x fewer attempts to reach 22 %"), and the mean number of attempts to the
first success, E[min(T, B)] = sum_{k=0}^{B-1} (1 - discovery@k), which counts a censored seed as B
(a lower bound when some seeds never succeed).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from sdpo_jax.run_files import write_figure, write_text

CENSORED = None  # a seed that found no success within the budget


# ------------------------------------------------------------------------------- first success


def first_success_index(rewards: Sequence[float], threshold: float = 0.5, *, offset: int = 0) -> int | None:
    """1-based index (plus `offset` earlier attempts) of the first reward >= threshold, else None."""
    for i, reward in enumerate(rewards):
        if reward >= threshold:
            return offset + i + 1
    return CENSORED


def _as_times(first_success: Iterable[int | None], budget: int, where: str = "") -> np.ndarray:
    """Float array of first-success indices with censored seeds as +inf; checks 1 <= T <= budget."""
    times = []
    for s, t in enumerate(first_success):
        if t is None:
            times.append(math.inf)
            continue
        if isinstance(t, float) and math.isinf(t):
            times.append(math.inf)
            continue
        if int(t) != t or not 1 <= t <= budget:
            raise ValueError(f"first-success index {t!r} of seed {s}{where} must be an integer in [1, budget={budget}] "
                             "or None (no success within the budget)")
        times.append(float(t))
    if not times:
        raise ValueError(f"no seeds{where}: discovery@k needs at least one first-success index (or None)")
    return np.asarray(times, np.float64)


def _check_ks(ks: Sequence[int], budget: int) -> np.ndarray:
    ks = np.asarray(ks, np.int64)
    if ks.ndim != 1 or ks.size == 0 or ks.min() < 1 or ks.max() > budget:
        raise ValueError(f"ks must be a non-empty list of attempt counts in [1, budget={budget}]; got "
                         f"min={ks.min() if ks.size else None} max={ks.max() if ks.size else None}. discovery@k "
                         "past the budget is unknown (censored seeds might succeed later)")
    return ks


# ------------------------------------------------------------------------------- estimators


def discovery_at_k(first_success: Sequence[int | None], ks: Sequence[int], budget: int) -> np.ndarray:
    """P(first success <= k) over seeds, for each k in ks (k <= budget); None = censored at budget."""
    times = _as_times(first_success, budget)
    ks = _check_ks(ks, budget)
    return (times[:, None] <= ks[None, :]).mean(axis=0)


def pass_at_k(num_samples: int, num_correct: int, k: int) -> float:
    """Unbiased pass@k from `num_samples` attempts with `num_correct` successes (needs k <= N).

    Computed as 1 - prod_{i=N-c+1}^{N} (1 - k / i): no huge binomials, exact 0 for c = 0 and 1 when
    fewer than k failures exist."""
    n, c = int(num_samples), int(num_correct)
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= num_correct <= num_samples and 1 <= k <= num_samples; "
                         f"got num_samples={num_samples}, num_correct={num_correct}, k={k}")
    if n - c < k:
        return 1.0
    log_fail = float(np.sum(np.log1p(-k / np.arange(n - c + 1, n + 1, dtype=np.float64))))
    return float(0.0 - np.expm1(log_fail))


def pass_at_k_curve(num_samples: int, num_correct: np.ndarray | int, ks: Sequence[int]) -> np.ndarray:
    """Vectorised unbiased pass@k: `num_correct` of any shape [...] -> [..., len(ks)].

    log C(N-c, k)/C(N, k) = sum_{i<c} log1p(-k / (N - i)): one cumulative sum over i gives every c at
    once, with no cancellation (exact 0 for c = 0, full relative precision for tiny pass@k); then
    1 - exp(.) as -expm1(.); exactly 1 where N - c < k."""
    n = int(num_samples)
    ks = _check_ks(ks, n).astype(np.float64)
    c = np.asarray(num_correct)
    if c.size and (c.min() < 0 or c.max() > n or np.any(c != np.round(c))):
        raise ValueError(f"pass_at_k_curve: num_correct must be integers in [0, num_samples={n}]")
    c = c.astype(np.int64)
    c_max = int(c.max()) if c.size else 0
    remaining_i = n - np.arange(c_max, dtype=np.float64)  # N - i for i = 0..c_max-1
    with np.errstate(divide="ignore", invalid="ignore"):
        terms_ik = np.where(ks[None, :] < remaining_i[:, None],
                            np.log1p(-ks[None, :] / remaining_i[:, None]), -np.inf)
    log_ratio_ck = np.concatenate([np.zeros((1, ks.size)), np.cumsum(terms_ik, axis=0)])  # [c_max+1, K]
    return 0.0 - np.expm1(log_ratio_ck[c])  # 0.0 - x: no negative zeros


# ------------------------------------------------------------------------------- curves + bootstrap


@dataclasses.dataclass
class Curve:
    """One method's discovery@k curve (mean over questions) with a bootstrap confidence band."""

    method: str
    ks: np.ndarray  # [K] attempt counts
    mean: np.ndarray  # [K]
    lo: np.ndarray  # [K] lower percentile of the bootstrap
    hi: np.ndarray  # [K] upper percentile
    per_question: np.ndarray  # [Q, K] point estimates
    confidence: float = 0.9
    num_resamples: int = 0

    def at(self, k: int) -> tuple[float, float, float]:
        """(mean, lo, hi) at attempt count k (must be on the grid)."""
        where = np.nonzero(self.ks == k)[0]
        if not where.size:
            raise ValueError(f"k={k} is not on this curve's grid ({self.ks[0]}..{self.ks[-1]})")
        i = int(where[0])
        return float(self.mean[i]), float(self.lo[i]), float(self.hi[i])


def _band(samples_bk: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence} must be in (0, 1), e.g. 0.9 for a 90 % interval")
    tail = 100.0 * (1.0 - confidence) / 2.0
    return np.percentile(samples_bk, tail, axis=0), np.percentile(samples_bk, 100.0 - tail, axis=0)


def discovery_curve(method: str, first_success_per_question: Sequence[Sequence[int | None]], budget: int,
                    ks: Sequence[int] | None = None, *, num_resamples: int = 1000, confidence: float = 0.9,
                    seed: int = 0) -> Curve:
    """discovery@k averaged over questions; CIs from resampling each question's seeds (stratified)."""
    if not first_success_per_question:
        raise ValueError(f"discovery_curve({method!r}): no questions")
    ks = _check_ks(np.arange(1, budget + 1) if ks is None else ks, budget)
    rng = np.random.default_rng(seed)
    per_question, boot = [], np.zeros((max(num_resamples, 1), ks.size))
    for q, seeds in enumerate(first_success_per_question):
        times = _as_times(seeds, budget, where=f" of question {q}")
        hit_sk = times[:, None] <= ks[None, :]
        per_question.append(hit_sk.mean(axis=0))
        if num_resamples:
            draw_bs = rng.integers(0, times.size, size=(num_resamples, times.size))
            # resampled fraction = mean over drawn seeds; via counts of how often each seed is drawn
            counts_bs = np.stack([np.bincount(row, minlength=times.size) for row in draw_bs])
            boot += counts_bs @ hit_sk / times.size
    per_question = np.stack(per_question)
    mean = per_question.mean(axis=0)
    if num_resamples:
        lo, hi = _band(boot / len(first_success_per_question), confidence)
    else:
        lo, hi = mean.copy(), mean.copy()
    return Curve(method, ks, mean, lo, hi, per_question, confidence, num_resamples)


def pass_at_k_bootstrap_curve(method: str, samples_per_question: Sequence[tuple[int, int]], budget: int,
                              ks: Sequence[int] | None = None, *, num_resamples: int = 1000,
                              confidence: float = 0.9, seed: int = 0) -> Curve:
    """best-of-k: unbiased pass@k from (N, c) per question, averaged over questions; CIs from
    resampling the N attempts of every question (c* ~ Binomial(N, c / N))."""
    if not samples_per_question:
        raise ValueError(f"pass_at_k_bootstrap_curve({method!r}): no questions")
    ks = _check_ks(np.arange(1, budget + 1) if ks is None else ks, budget)
    rng = np.random.default_rng(seed)
    per_question, boot = [], np.zeros((max(num_resamples, 1), ks.size))
    for q, (n, c) in enumerate(samples_per_question):
        if n < ks.max():
            raise ValueError(f"question {q}: best-of-k from N={n} samples cannot estimate pass@k for "
                             f"k={int(ks.max())}; draw at least as many samples as the attempt budget")
        per_question.append(pass_at_k_curve(n, c, ks))
        if num_resamples:
            c_b = rng.binomial(n, c / n, size=num_resamples)
            values, inverse = np.unique(c_b, return_inverse=True)
            boot += pass_at_k_curve(n, values, ks)[inverse]
    per_question = np.stack(per_question)
    mean = per_question.mean(axis=0)
    if num_resamples:
        lo, hi = _band(boot / len(samples_per_question), confidence)
    else:
        lo, hi = mean.copy(), mean.copy()
    return Curve(method, ks, mean, lo, hi, per_question, confidence, num_resamples)


def attempts_to_reach(curve: Curve, target: float) -> int | None:
    """The smallest k on the curve's grid with mean discovery@k >= target, or None if never."""
    where = np.nonzero(curve.mean >= target - 1e-12)[0]
    return int(curve.ks[where[0]]) if where.size else None


def mean_attempts_to_success(curve: Curve) -> float:
    """E[min(T, B)] = sum_{k=0}^{B-1} (1 - discovery@k) on the full grid 1..B (censored seeds count B)."""
    budget = int(curve.ks[-1])
    if curve.ks.size != budget or not np.array_equal(curve.ks, np.arange(1, budget + 1)):
        raise ValueError("mean_attempts_to_success needs the curve on the full grid k = 1..budget")
    return float(1.0 + np.sum(1.0 - curve.mean[:-1]))


def summarize(curve: Curve, *, report_ks: Sequence[int], targets: Sequence[float] = ()) -> dict:
    """JSON-able summary: discovery@k (mean, lo, hi) at report_ks, attempts to reach each target."""
    out: dict[str, Any] = {"method": curve.method, "questions": int(curve.per_question.shape[0])}
    for k in report_ks:
        mean, lo, hi = curve.at(int(k))
        out[f"discovery@{int(k)}"] = {"mean": mean, "lo": lo, "hi": hi}
    for target in targets:
        out[f"attempts_to_{target:g}"] = attempts_to_reach(curve, target)
    if curve.ks.size == int(curve.ks[-1]) and curve.ks[0] == 1:
        out["mean_attempts_to_success"] = mean_attempts_to_success(curve)
    return out


# ------------------------------------------------------------------------------- writers


def _json_value(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return [_json_value(v) for v in value.tolist()]
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, Mapping):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    return value


def write_curves_json(path: str, curves: Sequence[Curve], meta: Mapping[str, Any] | None = None,
                      summaries: Sequence[Mapping[str, Any]] = ()) -> str:
    """{"meta": ..., "summaries": [...], "curves": {method: {ks, mean, lo, hi, per_question, ...}}}."""
    payload = {
        "meta": dict(meta or {}),
        "summaries": list(summaries),
        "curves": {c.method: {"ks": c.ks, "mean": c.mean, "lo": c.lo, "hi": c.hi, "per_question": c.per_question,
                              "confidence": c.confidence, "num_resamples": c.num_resamples} for c in curves},
    }
    write_text(path, json.dumps(_json_value(payload), indent=1))
    return path


def write_results_csv(path: str, rows: Sequence[Mapping[str, Any]]) -> str:
    """One row per (method, question, seed); columns are the union of keys in first-seen order;
    None is written as an empty cell."""
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else _json_value(row.get(k)) for k in columns})
    write_text(path, text.getvalue())
    return path


def plot_discovery(path: str, curves: Sequence[Curve], *, title: str = "discovery@k") -> str:
    """discovery@k against k (log x axis, as in the paper), one line per method with its CI band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for curve in curves:
        (line,) = ax.plot(curve.ks, curve.mean, label=curve.method, lw=1.8)
        if curve.num_resamples:
            ax.fill_between(curve.ks, curve.lo, curve.hi, color=line.get_color(), alpha=0.18, lw=0)
    ax.set_xscale("log")
    ax.set_ylim(0.0, 1.0)
    band = f" ({int(round(100 * curves[0].confidence))} % bootstrap CI)" if curves and curves[0].num_resamples else ""
    ax.set(xlabel="attempts k (every attempt counted)", ylabel="discovery@k = P(first success <= k)",
           title=title + band)
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="upper left")
    fig.tight_layout()
    write_figure(fig, path, dpi=110)
    plt.close(fig)
    return path
