#!/usr/bin/env bash
# 5 alternating rounds: bench/decode.py (each commit's own copy; the timing code is the same) and the step bench
# (one compat script for both commits), before = 8ef65db (/tmp/bench_before), after = /work/main.
# /tmp/refactor_check/step_compat.py is bench/step.py of 8ef65db with the patch kept in ../architecture_2026-12-07/
set -u
py=/work/main/.venv/bin/python
out=/tmp/bench14/logs; mkdir -p $out
export HF_HUB_OFFLINE=1
for i in 1 2 3 4 5; do
  for side in before after; do
    repo=$([ $side = before ] && echo /tmp/bench_before || echo /work/main)
    (cd $repo && PYTHONPATH=$repo $py bench/decode.py --no_hf --temperature 0 --repeats 5 > $out/decode_${side}_$i.log 2>&1)
    (cd $repo && PYTHONPATH=$repo $py /tmp/refactor_check/step_compat.py --skip_memory > $out/step_${side}_$i.log 2>&1)
  done
done
echo done
