"""Summary of bench/demo_compare.sh: SDPO (the first label) against each other method, over seeds.

    python bench/demo_compare.py runs/compare --seeds 0 1 2 3 4 --labels sdpo grpo

Per method: evaluation accuracy (mean ± std over seeds) at each evaluation point. Per seed: the gain
(first to last evaluation) with its standard error, paired over the evaluation questions (each run
writes every question's successes to evals.jsonl); the final accuracy of SDPO minus the other method's
with the standard error of that difference (the two runs' samples are independent: the errors add in
quadrature). Over seeds: the generations SDPO needs to reach the other method's final mean accuracy,
linearly interpolated between evaluation points of SDPO's mean curve, and the ratio to the other's
budget. Writes summary.json and curves.png into the directory.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sdpo_jax.logging import plot_curves, read_jsonl  # noqa: E402


def load_run(directory: str) -> dict:
    """{generations: accuracy}, {generations: per-question success rates} of one run."""
    rows = [r for r in read_jsonl(os.path.join(directory, "metrics.jsonl")) if "eval/accuracy" in r]
    by_step = {}
    for record in read_jsonl(os.path.join(directory, "evals.jsonl")):
        by_step[record["step"]] = np.asarray(record["successes"], np.float64) / record["samples_per_question"]
    steps = {r["step"]: r["generations"] for r in read_jsonl(os.path.join(directory, "metrics.jsonl"))
             if "generations" in r}
    steps[0] = 0
    accuracy = {r["generations"]: r["eval/accuracy"] for r in rows}
    per_question = {steps[s]: v for s, v in by_step.items() if s in steps}
    return {"accuracy": accuracy, "per_question": per_question}


def paired_se(a: np.ndarray, b: np.ndarray) -> float:
    """Standard error of mean(b - a) over questions."""
    d = b - a
    return float(d.std(ddof=1) / np.sqrt(len(d)))


def se(a: np.ndarray) -> float:
    return float(a.std(ddof=1) / np.sqrt(len(a)))


def generations_to_reach(gens: list[int], curve: np.ndarray, target: float) -> float | None:
    """First generations count at which the piecewise-linear `curve` reaches `target` (None if never)."""
    if curve[0] >= target:
        return float(gens[0])
    for (g0, c0), (g1, c1) in zip(zip(gens, curve), zip(gens[1:], curve[1:])):
        if c1 >= target > c0:
            return float(g0 + (target - c0) / (c1 - c0) * (g1 - g0))
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--seeds", nargs="+", required=True)
    ap.add_argument("--labels", nargs="+", required=True, help="the first is SDPO, compared with each other")
    args = ap.parse_args()
    runs = {label: {seed: load_run(os.path.join(args.out, f"{label}_s{seed}")) for seed in args.seeds
                    if os.path.isfile(os.path.join(args.out, f"{label}_s{seed}", "evals.jsonl"))}
            for label in args.labels}
    summary, curves = {}, {}
    for label, per_seed in runs.items():
        if not per_seed:
            continue
        gens = sorted(set.intersection(*(set(r["accuracy"]) for r in per_seed.values())))
        acc = np.array([[r["accuracy"][g] for g in gens] for r in per_seed.values()])
        seeds = {}
        for seed, r in per_seed.items():
            first, last = r["per_question"][gens[0]], r["per_question"][gens[-1]]
            seeds[seed] = {"first": float(first.mean()), "final": float(last.mean()), "final_se": se(last),
                           "gain_points": 100 * float(last.mean() - first.mean()),
                           "gain_se_points": 100 * paired_se(first, last)}
        summary[label] = {"generations": gens, "mean": acc.mean(0).tolist(), "std": acc.std(0).tolist(),
                          "seeds": seeds}
        curves[label] = [{"generations": g, "eval/accuracy": m} for g, m in zip(gens, acc.mean(0))]
        print(f"{label}: eval accuracy, mean ± std over seeds {' '.join(per_seed)}")
        for g, m, s in zip(gens, acc.mean(0), acc.std(0)):
            print(f"  {g:6d} generations: {m:.3f} ± {s:.3f}")
        for seed, x in seeds.items():
            print(f"  seed {seed}: {x['first']:.3f} -> {x['final']:.3f}, gain {x['gain_points']:+.1f} "
                  f"± {x['gain_se_points']:.1f} points (SE over questions)")
    reference = args.labels[0]
    for label in args.labels[1:]:
        if reference not in summary or label not in summary:
            continue
        ref, other = summary[reference], summary[label]
        common = sorted(set(ref["seeds"]) & set(other["seeds"]))
        diffs = {}
        for seed in common:
            a, b = ref["seeds"][seed], other["seeds"][seed]
            d, d_se = 100 * (a["final"] - b["final"]), 100 * float(np.hypot(a["final_se"], b["final_se"]))
            diffs[seed] = {"points": d, "se_points": d_se, "over_two_se": bool(d > 2 * d_se)}
            print(f"{reference} - {label}, seed {seed}: {d:+.1f} ± {d_se:.1f} points"
                  f"{'' if d > 2 * d_se else '  (NOT more than 2 SE)'}")
        target = other["mean"][-1]
        reach = generations_to_reach(ref["generations"], np.array(ref["mean"]), target)
        budget = other["generations"][-1]
        ratio = budget / reach if reach else None
        print(f"{reference} reaches {label}'s final mean accuracy {target:.3f} at "
              + (f"{reach:.0f} generations: {ratio:.2f}x fewer than {label}'s {budget}" if reach
                 else "no evaluation point (never)"))
        summary[f"{reference}_vs_{label}"] = {"final_difference": diffs, "target": target,
                                             "generations_to_reach": reach, "budget": budget,
                                             "fewer_generations_ratio": ratio}
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print("plot:", plot_curves(curves, os.path.join(args.out, "curves.png"),
                               title="CPU demo: mean eval accuracy over seeds"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
