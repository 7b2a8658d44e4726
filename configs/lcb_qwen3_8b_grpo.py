"""The §4 GRPO baseline for configs/lcb_qwen3_8b.py (docs/ALGORITHM.md §5): same data, model, sampling,
validation and hardware; scalar rewards only, no teacher.

    python -m sdpo_jax.main --config=configs/lcb_qwen3_8b_grpo.py \
        --config.model.path=/ckpt/Qwen3-8B --config.tokenizer.path=/ckpt/Qwen3-8B \
        --config.data.train=/data/lcb_v6/train.jsonl --config.data.eval=/data/lcb_v6/eval.jsonl

Dr.GRPO advantage (reward minus the group mean, no std normalization), PPO clip 0.2 / 0.28 (clip-
higher), dual clip 3, token-level rollout TIS clip 2, no KL, no entropy bonus (official
baseline_grpo.yaml + user.yaml). The reported setting is the official
`experiments/rich_feedback/run_baseline_grpo.sh`: lr 1e-6, mini-batch 8 questions (4 off-policy
optimizer steps per generation batch of 32), no warmup, 4 validation samples. Paper: 41.2 +- 0.8 on
LCBv6 at step 80 (SDPO 48.8). The GRPO teacher is `live`: no second parameter copy. Validation also
runs before training (verl's default for this yaml).
"""

from configs import lcb_qwen3_8b
from configs.paper_common import grpo_baseline


def get_config():
    c = grpo_baseline(lcb_qwen3_8b.get_config(), "runs/lcb_qwen3_8b_grpo")
    c.optim.warmup_steps = 0
    return c
