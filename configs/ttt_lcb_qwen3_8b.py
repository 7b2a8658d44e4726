"""Test-time SDPO as in the paper (§5, docs/ALGORITHM.md §7-8): Qwen3-8B on hard LiveCodeBench v6 questions.

    python -m sdpo_jax.ttt --config=configs/ttt_lcb_qwen3_8b.py \
        --config.model.path=/ckpt/Qwen3-8B --config.tokenizer.path=/ckpt/Qwen3-8B \
        --config.ttt.questions=/data/lcb_v6_hard.jsonl

For accelerators (a TPU slice or GPU hosts; not the CPU). Compiled with `python -m sdpo_jax.tools.aot`
(bench/RESULTS.md; no TPU run): fits v5p-64 (peak 63.0 of 95.7 GiB per chip, in the multi-turn
baseline's prefill of up to 128 chains of 32k-token prompts); on v5p-32 the best-of-k decode (98.5 GiB)
and on v6e-64 the multi-turn prefill (33.5 of 31.3 GiB) do not fit; the SDPO step itself peaks at 19.3
GiB on v5p-64. Every host of a multi-host slice runs the same command.
`ttt.questions` is a JSONL of code-environment problems (`sdpo_jax.data.from_livecodebench` rows):
the paper's 19 "hard" questions (Qwen3-8B pass@64 < 0.5; Q9 dropped) or its 9 "very hard" ones
(pass@64 < 0.03), with all tests.
Per question and seed: fresh weights, 16 attempts per step, one SDPO step per batch (reverse KL,
top-K 20 + tail, EMA teacher 0.01, lr 1e-6 constant, rollout IS clip 2, advantage clip 5.0), T = 1.0,
responses <= 8192 tokens, 2750 attempts, 5 seeds. Baselines: best-of-k from 2944 samples and multi-turn
prompting with all past feedback FIFO-trimmed to 32k tokens. 90 % bootstrap CIs over seeds.
"""

from configs.paper_common import qwen3_8b_paper_model
from sdpo_jax.config import ttt_defaults

QUESTIONS_PLACEHOLDER = "<unset; pass --config.ttt.questions=/path/to/lcb_v6_hard.jsonl>"


def get_config():
    c = qwen3_8b_paper_model("runs/ttt_lcb_qwen3_8b")
    c.env.name = "code"
    c.env.timeout_s = 60.0
    c.data.train = "synthetic"  # unused by TTT (no warm start); the questions come from ttt.questions
    c.data.prompts_per_step = 1

    c.rollout.n = 16
    c.rollout.prompt_buckets = (512, 1024, 2048)
    c.rollout.completion_buckets = (512, 1024, 2048, 4096, 8192)
    c.reprompt.teacher_prompt_buckets = (1024, 2048, 4096, 8192, 10240)

    c.loss.topk = 20
    c.loss.alpha = 1.0  # reverse KL
    c.loss.adv_clip = 5.0
    c.teacher.ema_rate = 0.01
    c.optim.lr = 1e-6
    c.optim.warmup_steps = 0
    c.optim.minibatch_prompts = 0  # one optimizer step per batch of 16
    c.eval.every = 0
    c.logging.progress_bar = False

    c.ttt = ttt_defaults()
    c.ttt.questions = QUESTIONS_PLACEHOLDER
    c.ttt.num_questions = 0  # all of them
    c.ttt.select_samples = 0  # the question set is already the hard one
    c.ttt.seeds = 5
    c.ttt.budget = 2750
    c.ttt.batch_size = 16
    c.ttt.best_of_k_samples = 2944
    c.ttt.sample_rows = 256
    c.ttt.multi_turn_max_prompt_tokens = 32000
    c.ttt.multi_turn_prompt_buckets = (2048, 4096, 8192, 16384, 32768)
    c.ttt.report_ks = (1, 16, 64, 256, 1024, 2750)
    c.ttt.targets = (0.22, 0.67)  # the paper's "3x fewer to 22 %" (very hard) and "2.4x fewer to 67 %" (hard)
    return c
