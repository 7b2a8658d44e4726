"""The embedded default: SDPO on the synthetic digit task with a tiny model, on CPU, no download.

    python -m sdpo_jax.main --config=configs/demo.py

The task: one op (reverse / sort / inc) on 3-4 digits, then a reducer (max / min / first / last), so
each answer is one digit, uniformly distributed for every op chain. The RL questions name the ops by
other words ("up top 5271" for "inc max 5271"); the environment's feedback on a wrong answer is a test
case of the same ops on another input, what was wrong, and what each op word means ("Test case: up top
0576 -> 8. Your answer 4 is wrong; up means inc, top means max.") -- never this question's answer.

A supervised warm start (saved to runs/demo_warm_start, reused by demo_grpo.py and the test-time demo)
teaches the random model the ops under their own names, to copy a sibling's solution, and to read an op
word's meaning off the feedback (in its examples the words get a new meaning every time), until a
held-out check passes. Then SDPO: the self-teacher reads the feedback (or a sibling's solution) and
knows what the words mean; distilling it teaches the student. The run judges itself: below
eval.min_gain_points it exits with code 4.
"""

from sdpo_jax.config import base_config, warm_start_defaults


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
    c.model.init.std = 0.1  # at 0.02 the warm start could sit for 500+ steps at chance (measured, batch 16)

    c.env.name = "synthetic"
    c.env.num_workers = 1
    c.data.train = "synthetic"
    c.data.synthetic_difficulty = 1
    c.data.synthetic_final_ops = ("max", "min", "first", "last")  # one-digit answers
    c.data.synthetic_uniform_answers = True
    c.data.synthetic_aliases = True
    c.data.synthetic_train_size = 4096
    c.data.prompts_per_step = 64  # many distinct questions per step, 2 samples each
    c.data.eval_prompts = 256

    c.rollout.n = 2
    c.rollout.max_new_tokens = 8
    c.rollout.prompt_buckets = (24, 32)
    c.rollout.completion_buckets = (4, 8)
    c.reprompt.teacher_prompt_buckets = (32, 48, 64, 80, 96, 128)
    c.reprompt.max_len = 128

    c.loss.objective = "sdpo"
    c.loss.mode = "topk"
    c.loss.topk = 20
    c.loss.alpha = 1.0  # reverse KL, as in the paper's rich-feedback runs
    # The paper's frozen-initial-teacher option: the warm-started model, whose in-context skill stays.
    c.teacher.kind = "frozen"
    c.optim.lr = 2e-3
    c.optim.schedule = "cosine"
    c.optim.final_lr_ratio = 0.1
    c.optim.warmup_steps = 0

    c.warm_start = warm_start_defaults()
    c.warm_start.steps = 1500  # a cap: it stops at the first held-out check that passes
    c.warm_start.lr = 3e-3
    c.warm_start.batch_size = 16
    c.warm_start.feedback_fraction = 0.6
    c.warm_start.solution_fraction = 0.2
    c.warm_start.check_every = 100
    c.warm_start.min_solution_accuracy = 0.9
    c.warm_start.min_feedback_gain = 0.25
    c.checkpoint.warm_start_dir = "runs/demo_warm_start"

    c.train.steps = 120
    c.eval.every = 40
    c.eval.n = 4
    c.eval.min_gain_points = 10.0
    c.checkpoint.every = 50
    return c
