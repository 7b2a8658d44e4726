#!/usr/bin/env bash
# 5 alternating runs of bench/decode.py (unchanged file) and the step bench (one compat file) on both commits.
set -u
py=/work/main/.venv/bin/python
out=/tmp/refactor_check/bench; mkdir -p $out
export HF_HUB_OFFLINE=1
for i in 1 2 3 4 5; do
  for side in before after; do
    repo=$([ $side = before ] && echo /tmp/base || echo /work/main)
    (cd $repo && PYTHONPATH=$repo $py bench/decode.py --no_hf --temperature 0 > $out/decode_${side}_$i.log 2>&1)
    (cd $repo && PYTHONPATH=$repo $py /tmp/refactor_check/step_compat.py --skip_memory > $out/step_${side}_$i.log 2>&1)
  done
done
echo done
