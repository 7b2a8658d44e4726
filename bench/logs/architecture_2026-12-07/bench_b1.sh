#!/usr/bin/env bash
set -u
py=/work/main/.venv/bin/python
out=/tmp/refactor_check/bench_b1; mkdir -p $out
export HF_HUB_OFFLINE=1
for i in 1 2 3 4 5 6 7; do
  for side in before after; do
    repo=$([ $side = before ] && echo /tmp/base || echo /work/main)
    (cd $repo && PYTHONPATH=$repo $py bench/decode.py --no_hf --temperature 0 --batches 1 --repeats 5 > $out/decode_${side}_$i.log 2>&1)
  done
done
echo done
