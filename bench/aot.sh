#!/usr/bin/env bash
# Ahead-of-time compiles of the paper configs for TPU slices (and 8xH100 with requirements-gpu-aot.txt), on
# this CPU host: one log + JSON per config x topology under bench/logs/aot_<date>/, then the table
# (bench/aot_table.py). Each full-size run compiles every program of the run: ~5 min on 2 cores.
#   bash bench/aot.sh                                   # the default matrix below
#   CONFIGS="lcb_qwen3_8b" TOPOLOGIES="v5p-64" bash bench/aot.sh
#   EXTRA="--config.rollout.decode_weights=sharded" TAG=sharded bash bench/aot.sh
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIGS=${CONFIGS:-"lcb_qwen3_8b lcb_qwen3_8b_grpo science_qwen3_8b tooluse_qwen3_8b ttt_lcb_qwen3_8b"}
TOPOLOGIES=${TOPOLOGIES:-"v5p-64 v6e-64"}
OUT=${OUT:-bench/logs/aot_$(date +%F)}
mkdir -p "$OUT"
declare -A EVAL_QUESTIONS=([lcb_qwen3_8b]=131 [lcb_qwen3_8b_grpo]=131 [science_qwen3_8b]=210
                           [science_qwen3_8b_grpo]=210 [tooluse_qwen3_8b]=68 [tooluse_qwen3_8b_grpo]=68)
for config in $CONFIGS; do
  for topology in $TOPOLOGIES; do
    name="$config${TAG:+.$TAG}.$topology"
    echo "== $name"
    set +e
    python -m sdpo_jax.tools.aot --config="configs/$config.py" --topology="$topology" \
      --eval_questions="${EVAL_QUESTIONS[$config]:-0}" --json="$OUT/$name.json" ${EXTRA:-} > "$OUT/$name.log" 2>&1
    echo "   exit $? ($(grep -c '^compiling' "$OUT/$name.log") programs compiled)"
    set -e
  done
done
python bench/aot_table.py "$OUT"/*.json
