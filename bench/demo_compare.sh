#!/usr/bin/env bash
# SDPO vs GRPO on the CPU demo over seeds: each seed makes one warm start, shared by every method of
# that seed; bench/demo_compare.py then prints mean ± std of evaluation accuracy per evaluation point,
# each seed's gain with its standard error, SDPO - GRPO per seed with the standard error of the
# difference, and the generations SDPO needs to reach GRPO's final mean accuracy; it writes
# $OUT/summary.json and $OUT/curves.png. Every run's log is kept in $OUT/<label>_s<seed>.log.
#   bash bench/demo_compare.sh [seeds...]          default seeds 0 1 2 3 4
#   ISA=AVX2 bash bench/demo_compare.sh 0 1 2      XLA_FLAGS=--xla_cpu_max_isa=AVX2 (any ISA XLA knows)
#   RUNS='label|config|flags;...'                  default 'sdpo|demo|;grpo|demo_grpo|' (first = SDPO)
#   OUT=dir (default runs/compare, runs/compare_<ISA> with ISA), EXTRA='--config.a=b' for every run
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=("${@:-0 1 2 3 4}")
read -r -a seeds <<< "${seeds[*]}"
runs=${RUNS:-"sdpo|demo|;grpo|demo_grpo|"}
out=${OUT:-runs/compare${ISA:+_$ISA}}
if [ -n "${ISA:-}" ]; then export XLA_FLAGS="${XLA_FLAGS:-} --xla_cpu_max_isa=$ISA"; fi
mkdir -p "$out"
labels=()
IFS=';' read -r -a specs <<< "$runs"
for seed in "${seeds[@]}"; do
  for spec in "${specs[@]}"; do
    IFS='|' read -r label config flags <<< "$spec"
    [ "$seed" = "${seeds[0]}" ] && labels+=("$label")
    if [ -f "$out/${label}_s$seed/metrics.jsonl" ] && grep -q '"step": ' "$out/${label}_s$seed/metrics.jsonl" \
        && [ -f "$out/${label}_s$seed/done" ]; then
      echo "== $label seed $seed: done already ($out/${label}_s$seed)"; continue
    fi
    echo "== $label seed $seed ($config $flags)"
    # shellcheck disable=SC2086
    python -m sdpo_jax.main --config="configs/$config.py" --config.seed="$seed" \
      --config.run_dir="$out/${label}_s$seed" --config.checkpoint.warm_start_dir="$out/warm_start_s$seed" \
      --config.logging.plot=False --config.logging.progress_bar=False $flags ${EXTRA:-} \
      > "$out/${label}_s$seed.log" 2>&1 || echo "   exit code $? (see $out/${label}_s$seed.log)"
    grep -E "^(host|warm start done|warm start: reusing|eval accuracy|error)" "$out/${label}_s$seed.log" || true
    touch "$out/${label}_s$seed/done"
  done
done
python bench/demo_compare.py "$out" --seeds "${seeds[@]}" --labels "${labels[@]}"
