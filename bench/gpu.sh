#!/usr/bin/env bash
# The one prepared script for an accelerator machine (GPU here; runs unchanged on a TPU VM, where
# the cuDNN line is skipped). Each issue adds its benchmark below. Budget: the section timeouts add
# up to 450 s, so the whole script ends within 8 minutes on one H100/H200 (the device lease is 15
# minutes, machine start included); a section that fails or times out does not stop the rest.
#
#   bash bench/gpu.sh                  # on the accelerator machine (PYTHON=... picks the interpreter;
#                                      # results are also written to $OUT or /tmp/bench_out)
#   bash bench/gpu.sh --fetch-wheels   # HERE, before the device call: download into .whl/ the
#                                      # packages the lent GPU image lacks (ml-collections, grain and
#                                      # grain's array-record, portpicker; cp312, x86_64), then call
#                                      # the device with carry [".whl"]. A TPU VM installed from
#                                      # requirements.txt needs none of this.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS="grain==0.2.18 array_record==0.8.6 ml_collections==1.1.0 portpicker==1.6.0"

if [ "${1:-}" = "--fetch-wheels" ]; then
  # shellcheck disable=SC2086
  $PY -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl $WHEELS
  ls -l .whl
  exit 0
fi

export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# leave GPU memory for the PyTorch peers that run in the same process
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.6}
RESULTS=${OUT:-/tmp/bench_out}
mkdir -p "$RESULTS"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
# The lent GPU image has jax, flax, optax, orbax, transformers and torch but not the loop's
# ml_collections / grain (no network there): install the wheels carried in .whl/ when they are missing.
if ! $PY -c "import ml_collections, grain" 2>/dev/null; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/sdpo_site \
      .whl/*.whl && export PYTHONPATH=/tmp/sdpo_site${PYTHONPATH:+:$PYTHONPATH} || true
  else
    echo "note: ml_collections / grain missing and no .whl/ carried: the RL-step section will fail" \
         "(run 'bash bench/gpu.sh --fetch-wheels' here first and carry .whl)"
  fi
fi
$PY -c "import jax, sys; print('python', sys.version.split()[0], 'jax', jax.__version__, jax.devices())"
platform=$($PY -c "import jax; print(jax.devices()[0].platform)")
if [ "$platform" = "gpu" ]; then fused=cudnn; else fused=splash; fi

# --- issue 6: the whole SDPO RL step through the real loop (train.run), vs transformers generate --
# Qwen3-0.6B-shaped random weights (saved bf16 with save_pretrained; fp32 master + AdamW + EMA
# teacher, bf16 compute and KV cache), 16 prompts x n=8, prompt bucket 256, 512 new tokens, synthetic
# env, reprompt, old log-probs, teacher, 2 mini-batches, EMA; 3 steps, step 1 (compile) discarded.
# The peer (transformers generate of the same batch shape on the same checkpoint) runs on CUDA only.
timeout 190 $PY bench/rl_step.py --size qwen3-0.6b --steps 3 --attention "$fused" \
  --json "$RESULTS/rl_step.json" 2>&1 | tee "$RESULTS/rl_step.txt" || true

# --- issue 2: model forward, Qwen3-0.6B-shaped, random bf16 weights -----------------------------
# fused attention, 8 x 2048, against transformers (PyTorch sdpa) on the same weights
timeout 70 $PY bench/forward.py --size qwen3-0.6b --batch 8 --seq 2048 --attention "$fused" \
  --scan --iters 5 2>&1 | tee "$RESULTS/forward_fused.txt" || true
# the XLA blockwise kernel at a teacher-length sequence (no peer)
timeout 45 $PY bench/forward.py --size qwen3-0.6b --batch 1 --seq 16384 --attention blockwise \
  --block 1024 --scan --iters 3 --no_peer 2>&1 | tee "$RESULTS/forward_blockwise_16k.txt" || true

# --- issue 4: SDPO train step vs the GRPO-only step (same batch), and compiled loss memory -------
# Qwen3-0.6B-shaped, fp32 params + AdamW + EMA teacher, bf16 compute, remat + layer scan;
# 8 x (512 prompt | 1536 completion), teacher prompt 1024.
timeout 95 $PY bench/step.py --size qwen3-0.6b --batch 8 --prompt 512 --completion 1536 \
  --teacher_prompt 1024 --attention "$fused" --iters 4 2>&1 | tee "$RESULTS/step.txt" || true

# --- issue 3: on-device rollout (jitted prefill + while_loop decode, bf16 KV cache), no peer ----
# Qwen3-0.6B-shaped random bf16 weights, batch 64, prompt 256, 256 sampled tokens; tokens/s and bandwidth
timeout 50 $PY bench/decode.py --size qwen3-0.6b --batches 64 --prompt_len 256 \
  --new_tokens 256 --repeats 2 2>&1 | tee "$RESULTS/decode.txt" || true
