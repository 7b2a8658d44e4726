"""The embedded default: SDPO on the synthetic digit task with a tiny model, on CPU, no download.

    python -m sdpo_jax.main --config=configs/demo.py

A short supervised warm start (saved to runs/demo_warm_start, reused by demo_grpo.py and the
test-time demo) gives the random model some skill and the ability to read feedback in context; then
SDPO learns from the environment's feedback ("Wrong answer 3; expected 2 ..."). The task: one op
(reverse / sort / inc) on 3-4 digits, then a reducer (max / min / first / last), so each answer is
one digit. Budget: about 10 minutes on 2 CPU cores.
"""

from sdpo_jax.config import base_config


def get_config():
    c = base_config()
    c.run_dir = "runs/demo"
    c.seed = 0

    c.model.init.model_type = "qwen3"
    c.model.init.hidden_size = 128
    c.model.init.num_layers = 4
    c.model.init.num_heads = 4
    c.model.init.num_kv_heads = 2
    c.model.init.head_dim = 32
    c.model.init.intermediate_size = 384

    c.env.name = "synthetic"
    c.env.num_workers = 1
    c.data.train = "synthetic"
    c.data.synthetic_difficulty = 1
    c.data.synthetic_final_ops = ("max", "min", "first", "last")  # one-digit answers (see README)
    c.data.synthetic_train_size = 4096
    c.data.prompts_per_step = 64  # many distinct questions per step, 2 samples each (see README)
    c.data.eval_prompts = 128

    c.rollout.n = 2
    c.rollout.max_new_tokens = 12
    c.rollout.prompt_buckets = (32, 48, 64)
    c.rollout.completion_buckets = (8, 16)
    c.reprompt.teacher_prompt_buckets = (64, 96, 128, 160, 192, 256)
    c.reprompt.max_len = 256

    c.loss.objective = "sdpo"
    c.loss.mode = "topk"
    c.loss.topk = 20
    c.loss.alpha = 1.0  # reverse KL, as in the paper's rich-feedback runs
    # The paper's frozen-initial-teacher option (SDPO_SPEC §4): on this tiny model an EMA teacher loses
    # its in-context skill as the student trains (measured, teacher with the feedback in context:
    # p(right answer) 0.97 -> 0.14 after 60 steps at lr 2e-3, EMA 0.05), and the student follows it down.
    c.teacher.kind = "frozen"
    c.optim.lr = 2e-3
    c.optim.schedule = "cosine"
    c.optim.final_lr_ratio = 0.1
    c.optim.warmup_steps = 0

    c.warm_start.steps = 450  # at 300 the in-context skill did not emerge for seed 1 (loss stuck near 0.8)
    c.warm_start.lr = 3e-3
    c.warm_start.batch_size = 32
    c.warm_start.feedback_fraction = 0.8
    c.checkpoint.warm_start_dir = "runs/demo_warm_start"

    c.train.steps = 200
    c.eval.every = 40
    c.eval.n = 4
    c.checkpoint.every = 50
    return c
