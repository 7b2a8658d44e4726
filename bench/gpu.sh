#!/usr/bin/env bash
# The one prepared script for an accelerator machine (GPU here; runs unchanged on a TPU VM, where
# the cuDNN line is skipped). Each issue appends its benchmark below; the whole script must finish
# within 8 minutes. Usage: bash bench/gpu.sh   (PYTHON=... to pick the interpreter; results are
# also written to $OUT or /tmp/bench_out).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# leave GPU memory for the PyTorch peers that run in the same process
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.6}
RESULTS=${OUT:-/tmp/bench_out}
mkdir -p "$RESULTS"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
$PY -c "import jax, sys; print('python', sys.version.split()[0], 'jax', jax.__version__, jax.devices())"
platform=$($PY -c "import jax; print(jax.devices()[0].platform)")

# --- issue 2: model forward, Qwen3-0.6B-shaped, random bf16 weights -----------------------------
if [ "$platform" = "gpu" ]; then fused=cudnn; else fused=splash; fi
# fused attention, 8 x 2048, against transformers (PyTorch sdpa) on the same weights
timeout 240 $PY bench/forward.py --size qwen3-0.6b --batch 8 --seq 2048 --attention "$fused" \
  --scan --iters 10 2>&1 | tee "$RESULTS/forward_fused.txt"
# the XLA blockwise kernel at a teacher-length sequence (no peer)
timeout 150 $PY bench/forward.py --size qwen3-0.6b --batch 1 --seq 16384 --attention blockwise \
  --block 1024 --scan --iters 5 --no_peer 2>&1 | tee "$RESULTS/forward_blockwise_16k.txt"

# --- issue 4: SDPO train step vs the GRPO-only step (same batch), and compiled loss memory -------
# Qwen3-0.6B-shaped, fp32 params + AdamW + EMA teacher, bf16 compute, remat + layer scan;
# 8 x (512 prompt | 1536 completion), teacher prompt 1024. A failure here does not stop the script.
timeout 300 $PY bench/step.py --size qwen3-0.6b --batch 8 --prompt 512 --completion 1536 \
  --teacher_prompt 1024 --attention "$fused" --iters 10 2>&1 | tee "$RESULTS/step.txt" || true

# --- issue 3: on-device rollout (jitted prefill + while_loop decode, bf16 KV cache), no peer ----
# Qwen3-0.6B-shaped random bf16 weights, prompt 256, 256 sampled tokens; tokens/s and bandwidth
timeout 150 $PY bench/decode.py --size qwen3-0.6b --batches 16,64 --prompt_len 256 \
  --new_tokens 256 --repeats 2 2>&1 | tee "$RESULTS/decode.txt" || true
