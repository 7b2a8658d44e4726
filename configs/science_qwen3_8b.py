"""SDPO on SciKnowEval science MCQ without rich feedback, Qwen3-8B: the paper's §3 run (docs/ALGORITHM.md §8,
"no rich feedback" column). One run per domain (Chemistry, Physics, Biology, Material):

    python -m sdpo_jax.main --config=configs/science_qwen3_8b.py \
        --config.model.path=/ckpt/Qwen3-8B --config.tokenizer.path=/ckpt/Qwen3-8B \
        --config.data.train=/data/sciknoweval/chemistry/train.jsonl \
        --config.data.eval=/data/sciknoweval/chemistry/test.jsonl \
        --config.run_dir=runs/science_qwen3_8b/chemistry

Data: `hicai-zju/SciKnowEval` (test split), level L3, mcq-4-choices and mcq-2-choices, one domain
per run, split 90/10 with seed 42 (the official `datasets/sciknoweval/<domain>/{train,test}.json`),
one `sdpo_jax.data.from_sciknoweval(row)` problem per line. Paths have no usable default: the
placeholders below fail at start-up with a message naming the override.

Setting (official `experiments/generalization/run_sdpo_all.sh` + sdpo.yaml + user.yaml): 32
questions x 8 rollouts per step at T 1.0 / top-p 1.0, responses <= 8192 tokens, thinking off; one
on-policy optimizer step per generation batch (mini-batch = all 32 questions); JSD (alpha 0.5) on
the student's top-100 logits + tail; EMA teacher, rate 0.05; the teacher sees only a sibling's
successful solution (the MCQ environment gives no feedback); token-level rollout TIS clip 2;
AdamW(0.9, 0.999), wd 0.01, grad clip 1.0, lr 1e-5 constant after 10 warmup steps; validation every
5 steps with 16 samples at T 0.6 / top-p 0.95. The paper's horizon is wall clock: the best validation
accuracy within 1 h / 5 h on 4xGH200 (Chemistry 73.2 / 80.9 against GRPO's 65.9 / 74.5);
`train.steps` below is only a cap (30 official epochs of Chemistry's 1890 questions is ~1770 steps).

Hardware (compiled for each slice with `python -m sdpo_jax.tools.aot`, no TPU run; bench/RESULTS.md):
peak per chip 53.5 GiB of 95.7 on v5p-64, 30.3 of 31.3 on v6e-64 (tight; `--config.mesh.fsdp=16
--config.mesh.tensor=4 --config.optim.micro_batches=16` gives 18.1 and halves the roofline step, 122
-> 62 s), and on v5p-32, the smallest slice that fits, 72.4 with `--config.optim.micro_batches=16`.
`optim.micro_batches` = 4 keeps the official one sequence per device per micro-batch on 64
data-parallel devices; use 256 / (data-parallel devices) elsewhere (e.g. 16 on 16 chips, 32 on 8
GPUs). One 8xH100 host does not fit (the resident state alone needs 120.5 GiB a GPU). The paper used one
node of 4xGH200 with vLLM + FSDP2. Set `--config.model.attention_impl=splash` on TPU or `cudnn` on GPU
(blockwise runs everywhere).
"""

from configs.paper_common import qwen3_8b_paper_base

TRAIN_PLACEHOLDER = "<unset; pass --config.data.train=/path/to/sciknoweval/DOMAIN/train.jsonl>"
EVAL_PLACEHOLDER = "<unset; pass --config.data.eval=/path/to/sciknoweval/DOMAIN/test.jsonl>"


def get_config():
    c = qwen3_8b_paper_base("runs/science_qwen3_8b")
    c.env.name = "mcq"
    c.env.timeout_s = 30.0
    c.data.train = TRAIN_PLACEHOLDER
    c.data.eval = EVAL_PLACEHOLDER
    c.reprompt.include_feedback = False  # sibling solutions only

    c.loss.topk = 100
    c.loss.alpha = 0.5  # generalized JSD (loss.is_clip is inert: one on-policy step per batch)
    c.teacher.ema_rate = 0.05
    c.optim.lr = 1e-5
    c.optim.warmup_steps = 10  # = 10 generation batches here (one optimizer step each)
    c.optim.minibatch_prompts = 32  # one optimizer step per generation batch
    c.optim.micro_batches = 4  # 256 rows / (64 devices x 4) = one sequence per device per micro-batch

    c.train.steps = 1000  # a cap; the paper's horizon is 1 h / 5 h of wall clock
    c.eval.n = 16
    return c
