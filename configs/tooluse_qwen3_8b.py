"""SDPO on ToolAlpaca tool use without rich feedback, Qwen3-8B: the paper's §3 run (SDPO_SPEC §8,
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

Hardware (an expectation from arithmetic, not a measured run), as for the science config: ~165 GB of
fp32 training state plus a bf16 KV cache of ~370 GiB (256 training rows) or ~740 GiB (an eval chunk of
32 questions x 16 samples) at 10240 tokens: ~15 GiB a device on 64 devices (TPU v6e-64: 64 chips x
32 GiB; TPU v5p-128: 64 chips x 95 GiB) or ~120 GB a GPU on one 8xH200 host during evaluation
(tight). The paper used one node of 4xGH200. Set `--config.model.attention_impl=splash` on TPU or
`cudnn` on GPU. `optim.micro_batches` = 4 keeps one sequence per device per micro-batch on 64
data-parallel devices; use 256 / (data-parallel devices) elsewhere.
"""

from sdpo_jax.config import base_config

MODEL_PLACEHOLDER = "<unset; pass --config.tokenizer.path=/path/to/Qwen3-8B and --config.model.path>"
TRAIN_PLACEHOLDER = "<unset; pass --config.data.train=/path/to/tooluse/train.jsonl>"
EVAL_PLACEHOLDER = "<unset; pass --config.data.eval=/path/to/tooluse/test.jsonl>"


def get_config():
    c = base_config()
    c.run_dir = "runs/tooluse_qwen3_8b"
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

    c.env.name = "tooluse"
    c.env.num_workers = 0
    c.env.timeout_s = 30.0
    c.data.train = TRAIN_PLACEHOLDER
    c.data.eval = EVAL_PLACEHOLDER
    c.data.prompts_per_step = 32
    c.data.eval_prompts = 1024  # all of data.eval (the official test split has 68)

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
    c.reprompt.include_feedback = False  # sibling solutions only (the env's feedback leaks the answer)
    c.reprompt.feedback_only_without_solution = True
    c.reprompt.max_len = 10240
    c.reprompt.teacher_prompt_buckets = (512, 1024, 2048, 4096, 8192, 10240)

    c.loss.objective = "sdpo"
    c.loss.mode = "topk"
    c.loss.topk = 100
    c.loss.add_tail = True
    c.loss.alpha = 0.5  # generalized JSD
    c.loss.is_clip = 2.0  # inert: one on-policy step per batch
    c.loss.rollout_is_clip = 2.0
    c.loss.aggregation = "seq_mean_token_mean"
    c.loss.adv_clip = None
    c.teacher.kind = "ema"
    c.teacher.ema_rate = 0.05

    c.optim.lr = 1e-5
    c.optim.warmup_steps = 10  # = 10 generation batches here (one optimizer step each)
    c.optim.weight_decay = 0.01
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.grad_clip = 1.0
    c.optim.minibatch_prompts = 32  # one optimizer step per generation batch
    c.optim.micro_batches = 4  # 256 rows / (64 devices x 4) = one sequence per device per micro-batch

    c.train.steps = 400  # lasgroup/SDPO#25: collapse after ~400 steps; the paper reports 1 h / 5 h bests
    c.eval.every = 5
    c.eval.n = 16
    c.eval.temperature = 0.6
    c.eval.top_p = 0.95
    c.eval.at_start = False  # sdpo.yaml: val_before_train False
    c.checkpoint.every = 10
    c.checkpoint.export_hf_at_end = True
    c.warm_start.steps = 0
    return c
