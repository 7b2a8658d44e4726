"""The §3 tool-use GRPO baseline for configs/tooluse_qwen3_8b.py (docs/ALGORITHM.md §5): same data, model,
sampling, validation and hardware; scalar rewards only, no teacher.

    python -m sdpo_jax.main --config=configs/tooluse_qwen3_8b_grpo.py \
        --config.model.path=/ckpt/Qwen3-8B --config.tokenizer.path=/ckpt/Qwen3-8B \
        --config.data.train=/data/tooluse/train.jsonl --config.data.eval=/data/tooluse/test.jsonl

Dr.GRPO advantage (reward minus the group mean, no std normalization), PPO clip 0.2 / 0.28 (clip-
higher), dual clip 3, token-level rollout TIS clip 2, no KL, no entropy bonus (official
baseline_grpo.yaml + user.yaml). The official script sweeps lr {1e-5, 1e-6} x mini-batch {8, 32}
questions; the paper's Table 3 "GRPO" column is the off-policy setting (4 mini-batch steps per
generation batch), which the spec pairs with lr 1e-6, so that is the default here. The on-policy
variant ("on-policy GRPO"): `--config.optim.lr=1e-5 --config.optim.minibatch_prompts=32
--config.optim.micro_batches=4 --config.optim.warmup_steps=10`.

Warmup: verl steps its scheduler once per generation batch, ours once per optimizer update, so the
official 10 warmup steps are 40 updates here (4 per batch). The GRPO teacher is `live`: no second
parameter copy. Validation also runs before training (verl's default for this yaml).
"""

from configs import tooluse_qwen3_8b
from configs.paper_common import grpo_baseline


def get_config():
    c = grpo_baseline(tooluse_qwen3_8b.get_config(), "runs/tooluse_qwen3_8b_grpo")
    c.optim.warmup_steps = 40  # 10 generation batches x 4 updates (verl counts batches)
    return c
