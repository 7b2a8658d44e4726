"""SDPO on LiveCodeBench v6 with rich feedback, Qwen3-8B: the paper's §4 run (SDPO_SPEC §8, LCBv6 column).

    python -m sdpo_jax.main --config=configs/lcb_qwen3_8b.py \
        --config.model.path=/ckpt/Qwen3-8B --config.tokenizer.path=/ckpt/Qwen3-8B \
        --config.data.train=/data/lcb_v6/train.jsonl --config.data.eval=/data/lcb_v6/eval.jsonl

Data: the 131 `livecodebench/code_generation_lite` (refs/pr/6) questions with contest date in
[2025-02-01, 2025-05-01), one `sdpo_jax.data.from_livecodebench(row)` problem per line. The train file
keeps a seeded half of each question's tests (`sdpo_jax.data.code_train_split(rows)`), the eval file
all of them; the questions are the same (SDPO_SPEC §6). Paths have no usable default: the placeholders
below fail at start-up with a message naming the override.

Setting (official `experiments/rich_feedback/run_sdpo.sh` + sdpo.yaml + user.yaml): 32 questions x 8
rollouts per step at T 1.0 / top-p 1.0, responses <= 8192 tokens, thinking off; mini-batch of 1
question, so 32 optimizer steps per generation batch (the distillation IS weight, clip 2, is live);
reverse KL (alpha 1) on the student's top-20 logits + tail; EMA teacher, rate 0.01, updated once per
step; the teacher sees a sibling's successful solution, or the environment's feedback when no sibling
succeeded; token-level rollout TIS clip 2; AdamW(0.9, 0.999), wd 0.01, grad clip 1.0, lr 1e-6 constant,
no warmup; validation every 5 steps with 4 samples at T 0.6 / top-p 0.95. 30 epochs of 131 questions
is ~120 steps; the paper reports accuracy to step 80-90 (48.8 at step 80, against GRPO's 41.2).

Hardware (an expectation from arithmetic, not a measured run): fp32 params + Adam + fp32 EMA teacher
+ grads of an 8B model are ~165 GB, and the bf16 KV cache for 256 rows x 10240 tokens ~370 GiB, so
about 8.5 GiB a device on 64 devices (TPU v6e-64: 64 chips x 32 GiB; TPU v5p-128: 64 chips x 95 GiB)
or ~67 GB a GPU on one 8xH200 host (the paper used one node of 4xGH200 with vLLM + FSDP2). Set
`--config.model.attention_impl=splash` on TPU or `cudnn` on GPU (blockwise runs everywhere).
A mini-batch is 8 rows; with the default mesh (fsdp over all devices) it is padded with zero-weight
rows to the data-parallel size, so on 64 devices prefer `--config.mesh.fsdp=8 --config.mesh.tensor=8`
(8 rows = one per data-parallel shard; untested at this scale).
Caveat: mini-batches are formed from each process's own groups, so on N hosts one optimizer step
holds N questions; the paper's 1-question mini-batch holds exactly on a single process (one host).
"""

from sdpo_jax.config import base_config

MODEL_PLACEHOLDER = "<unset; pass --config.tokenizer.path=/path/to/Qwen3-8B and --config.model.path>"
TRAIN_PLACEHOLDER = "<unset; pass --config.data.train=/path/to/lcb_v6/train.jsonl>"
EVAL_PLACEHOLDER = "<unset; pass --config.data.eval=/path/to/lcb_v6/eval.jsonl>"


def get_config():
    c = base_config()
    c.run_dir = "runs/lcb_qwen3_8b"
    c.seed = 0

    # model.path stays unset (validate accepts None; a missing directory would be rejected); the
    # tokenizer placeholder fails first at start-up, before any model is built.
    c.model.path = None
    c.tokenizer.path = MODEL_PLACEHOLDER
    c.tokenizer.enable_thinking = False
    c.model.compute_dtype = "bfloat16"  # fp32 master weights, bf16 compute (as the official runs)
    c.model.param_dtype = "float32"
    c.model.attention_impl = "blockwise"
    c.model.remat = True
    c.model.scan_layers = True
    c.mesh.data = 1
    c.mesh.fsdp = -1
    c.mesh.tensor = 1

    c.env.name = "code"
    c.env.num_workers = 0  # one scorer per host core
    c.env.timeout_s = 60.0
    c.data.train = TRAIN_PLACEHOLDER
    c.data.eval = EVAL_PLACEHOLDER
    c.data.prompts_per_step = 32
    c.data.eval_prompts = 1024  # all of data.eval (LCBv6 has 131)

    c.rollout.n = 8
    c.rollout.temperature = 1.0
    c.rollout.top_p = 1.0
    c.rollout.top_k = 0
    c.rollout.max_new_tokens = 8192
    c.rollout.cache_dtype = "bfloat16"
    c.rollout.prompt_buckets = (256, 512, 1024, 2048)  # max prompt 2048
    c.rollout.completion_buckets = (256, 512, 1024, 2048, 4096, 8192)

    c.reprompt.success_threshold = 0.5
    c.reprompt.dont_reprompt_on_self_success = True
    c.reprompt.remove_thinking = True
    c.reprompt.include_feedback = True  # environment output ...
    c.reprompt.feedback_only_without_solution = True  # ... only when no sibling solution exists
    c.reprompt.max_len = 10240
    c.reprompt.teacher_prompt_buckets = (512, 1024, 2048, 4096, 8192, 10240)

    c.loss.objective = "sdpo"
    c.loss.mode = "topk"
    c.loss.topk = 20
    c.loss.add_tail = True
    c.loss.alpha = 1.0  # reverse KL
    c.loss.is_clip = 2.0
    c.loss.rollout_is_clip = 2.0
    c.loss.aggregation = "seq_mean_token_mean"
    c.loss.adv_clip = None
    c.teacher.kind = "ema"
    c.teacher.ema_rate = 0.01

    c.optim.lr = 1e-6
    c.optim.warmup_steps = 0
    c.optim.weight_decay = 0.01
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.grad_clip = 1.0
    c.optim.minibatch_prompts = 1  # 32 optimizer steps per generation batch
    c.optim.micro_batches = 1  # 8 rows a mini-batch: at most one row per device on 8+ devices

    c.train.steps = 120  # 30 epochs x 4 batches of 32 (the official total_epochs: 30)
    c.eval.every = 5
    c.eval.n = 4
    c.eval.temperature = 0.6
    c.eval.top_p = 0.95
    c.eval.at_start = False  # sdpo.yaml: val_before_train False
    c.checkpoint.every = 10
    c.checkpoint.export_hf_at_end = True
    c.warm_start.steps = 0
    return c
