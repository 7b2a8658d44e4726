#!/usr/bin/env bash
# SDPO vs GRPO on the CPU demo over 3 seeds: each seed makes one warm start, shared by both methods;
# prints mean and spread of evaluation accuracy against the number of generations, and writes
# runs/compare/summary.json and runs/compare/curves.png.
#   bash bench/demo_compare.sh [seeds...]        (default: 0 1 2; extra config flags via $EXTRA)
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=("${@:-0 1 2}")
read -r -a seeds <<< "${seeds[*]}"
out=runs/compare
mkdir -p "$out"
for seed in "${seeds[@]}"; do
  for method in demo demo_grpo; do
    python -m sdpo_jax.main --config="configs/$method.py" --config.seed="$seed" \
      --config.run_dir="$out/${method}_s$seed" --config.checkpoint.warm_start_dir="$out/warm_start_s$seed" \
      --config.logging.plot=False ${EXTRA:-} | grep -v "^\[" || true
  done
done
python - "$out" "${seeds[@]}" <<'PY'
import json, os, sys
import numpy as np
from sdpo_jax.logging import plot_curves, read_jsonl
out, seeds = sys.argv[1], sys.argv[2:]
summary, curves = {}, {}
for method, label in (("demo", "SDPO"), ("demo_grpo", "GRPO")):
    per_seed = []
    for seed in seeds:
        rows = [r for r in read_jsonl(os.path.join(out, f"{method}_s{seed}", "metrics.jsonl")) if "eval/accuracy" in r]
        per_seed.append({r["generations"]: r["eval/accuracy"] for r in rows})
    gens = sorted(set.intersection(*(set(p) for p in per_seed)))
    acc = np.array([[p[g] for g in gens] for p in per_seed])
    summary[label] = {"generations": gens, "mean": acc.mean(0).tolist(), "std": acc.std(0).tolist(),
                      "per_seed": acc.tolist()}
    curves[label] = [{"generations": g, "eval/accuracy": m} for g, m in zip(gens, acc.mean(0))]
    print(f"{label}: eval accuracy (mean ± std over seeds {' '.join(seeds)})")
    for g, m, s in zip(gens, acc.mean(0), acc.std(0)):
        print(f"  {g:6d} generations: {m:.3f} ± {s:.3f}")
json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=1)
print("plot:", plot_curves(curves, os.path.join(out, "curves.png"), title="CPU demo: SDPO vs GRPO, mean over seeds"))
PY
