"""Test-time SDPO on hard instances of the synthetic task, on CPU, from the demo's warm-started model.

    python -m sdpo_jax.ttt --config=configs/ttt_demo.py

The model is the demo's (configs/demo.py), warm-started once and saved under runs/demo_warm_start
(made here when missing). Hard questions, picked as the paper picks them (a low pass rate of the
initial model): instances of the demo's own task (data.synthetic_difficulty, its aliases) that it solved
in only 1 or 2 of 64 draws (draws independent of best-of-k's), the first 8 of 160 candidates. Every
method starts from the same weights with a budget of 256 attempts per question and seed (5 seeds):
SDPO in batches of 16, one step per batch (reverse KL, top-K 20, EMA 0.01, advantage clip 5.0; lr
1e-4 instead of the paper's 1e-6 because the model is tiny, chosen in a pilot on other questions),
best-of-k from 512 i.i.d. draws, and multi-turn prompting with all past feedback, the oldest dropped
first to fit 256 tokens (the teacher prompt's max_len). Budget: under 10 minutes on 2 CPU cores.
"""

from configs import demo
from sdpo_jax.config import ttt_defaults


def get_config():
    c = demo.get_config()  # same model, tokenizer, data and warm start as the demo
    c.run_dir = "runs/ttt_demo"
    c.data.prompts_per_step = 1  # one question at a time
    c.rollout.n = 16  # attempts per SDPO step
    c.optim.minibatch_prompts = 0  # one optimizer step per batch of 16
    c.optim.lr = 1e-4
    c.optim.schedule = "constant"  # as the paper's test-time runs
    c.optim.warmup_steps = 0
    c.loss.objective = "sdpo"
    c.loss.mode = "topk"
    c.loss.topk = 20
    c.loss.alpha = 1.0  # reverse KL
    c.loss.adv_clip = 5.0
    c.teacher.kind = "ema"
    c.teacher.ema_rate = 0.01
    c.eval.every = 0
    c.eval.min_gain_points = None  # the floor is the RL demo's (configs/demo.py)
    c.logging.progress_bar = False

    c.ttt = ttt_defaults()
    c.ttt.questions = "synthetic"
    c.ttt.synthetic_difficulty = c.data.synthetic_difficulty  # the warm start's own task ...
    c.ttt.candidate_questions = 160
    c.ttt.question_seed = 7
    c.ttt.select_samples = 64  # ... keeping the hard instances: 1 or 2 successes in 64 draws
    c.ttt.select_min_rate = 1 / 64
    c.ttt.select_max_rate = 2 / 64
    c.ttt.num_questions = 8
    c.ttt.seeds = 5
    c.ttt.budget = 256
    c.ttt.batch_size = 16
    c.ttt.best_of_k_samples = 512
    c.ttt.sample_rows = 512
    c.ttt.multi_turn_max_prompt_tokens = 256
    c.ttt.multi_turn_prompt_buckets = (64, 96, 128, 160, 192, 256)
    c.ttt.bootstrap_resamples = 1000
    c.ttt.report_ks = (1, 16, 64, 128, 256)
    c.ttt.targets = (0.25, 0.5)
    return c
