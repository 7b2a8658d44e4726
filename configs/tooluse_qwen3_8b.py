"""SDPO on ToolAlpaca tool use without rich feedback, Qwen3-8B: the paper's §3 run (docs/ALGORITHM.md §8,
"no rich feedback" column).

    python -m sdpo_jax.main --config=configs/tooluse_qwen3_8b.py \
        --config.model.path=/ckpt/Qwen3-8B --config.tokenizer.path=/ckpt/Qwen3-8B \
        --config.data.train=/data/tooluse/train.jsonl --config.data.eval=/data/tooluse/test.jsonl

Data: ToolAlpaca as the official repo ships it (`datasets/tooluse/{train,test}.json`, Thought /
Action / Action Input prompts), one `sdpo_jax.data.from_toolalpaca(row)` problem per line. Paths
have no usable default: the placeholders below fail at start-up with a message naming the override.

Setting (official `experiments/generalization/run_sdpo_all.sh` + sdpo.yaml + user.yaml), the same as
configs/science_qwen3_8b.py except the environment: 32 questions x 8 rollouts per step at T 1.0 /
top-p 1.0, responses <= 8192 tokens, thinking off; one on-policy optimizer step per generation batch;
JSD (alpha 0.5) on the student's top-100 logits + tail; EMA teacher, rate 0.05; the teacher sees only
a sibling's successful solution: the environment's "Actions mismatch: ..., expected ..." text would
leak the answer, so it is off (`reprompt.include_feedback=False`, and the tooluse env returns no
feedback unless asked); token-level rollout TIS clip 2; AdamW(0.9, 0.999), wd 0.01, grad clip 1.0,
lr 1e-5 constant after 10 warmup steps; validation every 5 steps with 16 samples at T 0.6 / top-p
0.95. The paper's horizon is wall clock: the best validation accuracy within 1 h / 5 h on 4xGH200
(68.0 / 68.5 against GRPO's 64.9 / 67.7). A user report (lasgroup/SDPO#25) saw the run match the
paper (~0.68) to about step 400 and then collapse, so `train.steps` stops at 400.

Hardware: the science config's shapes (configs/science_qwen3_8b.py has the slices it fits, compiled
with `python -m sdpo_jax.tools.aot`); on v5p-64 this config peaks at 53.5 GiB of 95.7 per chip
(bench/RESULTS.md). The paper used one node of 4xGH200. Set `--config.model.attention_impl=splash` on
TPU or `cudnn` on GPU. `optim.micro_batches` = 4 keeps one sequence per device per micro-batch on 64
data-parallel devices; use 256 / (data-parallel devices) elsewhere.
"""

from configs.paper_common import qwen3_8b_paper_base

TRAIN_PLACEHOLDER = "<unset; pass --config.data.train=/path/to/tooluse/train.jsonl>"
EVAL_PLACEHOLDER = "<unset; pass --config.data.eval=/path/to/tooluse/test.jsonl>"


def get_config():
    c = qwen3_8b_paper_base("runs/tooluse_qwen3_8b")
    c.env.name = "tooluse"
    c.env.timeout_s = 30.0
    c.data.train = TRAIN_PLACEHOLDER
    c.data.eval = EVAL_PLACEHOLDER
    c.reprompt.include_feedback = False  # sibling solutions only (the env's feedback leaks the answer)

    c.loss.topk = 100
    c.loss.alpha = 0.5  # generalized JSD (loss.is_clip is inert: one on-policy step per batch)
    c.teacher.ema_rate = 0.05
    c.optim.lr = 1e-5
    c.optim.warmup_steps = 10  # = 10 generation batches here (one optimizer step each)
    c.optim.minibatch_prompts = 32  # one optimizer step per generation batch
    c.optim.micro_batches = 4  # 256 rows / (64 devices x 4) = one sequence per device per micro-batch

    c.train.steps = 400  # lasgroup/SDPO#25: collapse after ~400 steps; the paper reports 1 h / 5 h bests
    c.eval.n = 16
    return c
