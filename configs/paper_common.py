"""Settings shared by the paper's Qwen3-8B experiment configs (docs/ALGORITHM.md §8), written once.

`qwen3_8b_paper_model(run_dir)`: the model, tokenizer, mesh, sampling and SDPO settings that every
paper run shares, the test-time config (configs/ttt_lcb_qwen3_8b.py) included.
`qwen3_8b_paper_base(run_dir)`: that plus the RL-loop settings the §3 / §4 configs share (32
questions x 8 rollouts, buckets, reprompting, validation, checkpoints).
`grpo_baseline(cfg, run_dir)`: the GRPO-baseline changes shared by the configs/*_qwen3_8b_grpo.py files.

Each experiment config starts from one of these and sets only its section's values (environment,
data paths, loss top-K / alpha, teacher rate, learning rate and mini-batching, horizon).
`get_config()` returns the shared base alone, only so that this module loads like every other file in
configs/ (tests/test_config.py validates them all); it is no experiment: its tokenizer placeholder
fails at start-up.
"""

from sdpo_jax.config import base_config

MODEL_PLACEHOLDER = "<unset; pass --config.tokenizer.path=/path/to/Qwen3-8B and --config.model.path>"


def qwen3_8b_paper_model(run_dir):
    """Qwen3-8B with fp32 master weights and bf16 compute, fsdp over all devices, T 1.0 / top-p 1.0
    sampling of <= 8192 response tokens with thinking off, SDPO on the student's top-K logits + tail
    against an EMA teacher, IS / rollout-TIS clips 2, AdamW(0.9, 0.999) with wd 0.01 and grad clip 1."""
    c = base_config()
    c.run_dir = run_dir
    c.seed = 0

    # model.path stays unset (validate accepts None; a missing directory would be rejected); the
    # tokenizer placeholder fails first at start-up, before any model is built.
    c.model.path = None
    c.tokenizer.path = MODEL_PLACEHOLDER
    c.tokenizer.enable_thinking = False
    # Qwen3-8B's public shape (its config.json), for `python -m sdpo_jax.tools.aot` without a checkpoint;
    # a run loads the real shape from model.path.
    init = c.model.init
    init.model_type, init.vocab_size, init.hidden_size, init.num_layers = "qwen3", 151936, 4096, 36
    init.num_heads, init.num_kv_heads, init.head_dim, init.intermediate_size = 32, 8, 128, 12288
    init.rope_theta, init.tie_word_embeddings = 1e6, False
    c.model.compute_dtype = "bfloat16"  # fp32 master weights, bf16 compute (as the official runs)
    c.model.param_dtype = "float32"
    c.model.attention_impl = "blockwise"  # splash on TPU / cudnn on GPU via --config.model.attention_impl
    c.model.remat = True
    c.model.scan_layers = True
    c.mesh.data = 1
    c.mesh.fsdp = -1
    c.mesh.tensor = 1
    c.env.num_workers = 0  # one scorer per host core

    c.rollout.temperature = 1.0
    c.rollout.top_p = 1.0
    c.rollout.top_k = 0
    c.rollout.max_new_tokens = 8192
    c.rollout.cache_dtype = "bfloat16"
    # decode from a bf16 copy without fsdp: fsdp-sharded weights are all-gathered at every decode step (LCB
    # GRPO on v5p-64: 113 TiB of collectives per chip per generation batch with "sharded", roofline 234 s a
    # step against 111 s with this). Costs 16 GB / mesh.tensor per chip: every paper config fits v5p-64 and
    # v6e-64 with it (science on v6e-64 with 1.0 GiB to spare); bench/RESULTS.md. On another slice, check
    # with `python -m sdpo_jax.tools.aot`, which names what to change when it does not fit.
    c.rollout.decode_weights = "gathered"
    c.reprompt.max_len = 10240

    c.loss.objective = "sdpo"
    c.loss.mode = "topk"
    c.loss.add_tail = True
    c.loss.is_clip = 2.0  # live only with several optimizer steps per generation batch
    c.loss.rollout_is_clip = 2.0
    c.teacher.kind = "ema"

    c.optim.weight_decay = 0.01
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.grad_clip = 1.0
    return c


def qwen3_8b_paper_base(run_dir):
    """`qwen3_8b_paper_model` plus the RL loop of the §3 / §4 runs (official sdpo.yaml + user.yaml):
    32 questions x 8 rollouts per step, the teacher sees a sibling's successful solution (never its
    own), validation every 5 steps at T 0.6 / top-p 0.95 (not before training), checkpoints every 10."""
    c = qwen3_8b_paper_model(run_dir)
    c.data.prompts_per_step = 32
    c.data.eval_prompts = 1024  # all of data.eval (LCBv6 131, SciKnowEval Chemistry 210, ToolAlpaca 68)

    c.rollout.n = 8
    c.rollout.prompt_buckets = (256, 512, 1024, 2048)  # max prompt 2048
    c.rollout.completion_buckets = (256, 512, 1024, 2048, 4096, 8192)

    c.reprompt.success_threshold = 0.5
    c.reprompt.dont_reprompt_on_self_success = True
    c.reprompt.remove_thinking = True
    c.reprompt.feedback_only_without_solution = True
    c.reprompt.teacher_prompt_buckets = (512, 1024, 2048, 4096, 8192, 10240)

    c.loss.aggregation = "seq_mean_token_mean"
    c.loss.adv_clip = None

    c.eval.every = 5
    c.eval.temperature = 0.6
    c.eval.top_p = 0.95
    c.eval.at_start = False  # sdpo.yaml: val_before_train False
    c.checkpoint.every = 10
    c.checkpoint.export_hf_at_end = True
    return c


def grpo_baseline(cfg, run_dir):
    """Turns a paper SDPO config into its GRPO baseline in place (and returns it): Dr.GRPO advantage,
    PPO clip 0.2 / 0.28, dual clip 3, rollout TIS clip 2, no teacher copy, lr 1e-6, mini-batches of 8
    questions (4 off-policy optimizer steps per generation batch of 32), validation before training.
    The warmup stays the caller's: it depends on how many updates the SDPO config makes per batch."""
    cfg.run_dir = run_dir
    cfg.loss.objective = "grpo"
    cfg.loss.norm_adv_by_std = False  # Dr.GRPO
    cfg.loss.clip_low = 0.2
    cfg.loss.clip_high = 0.28
    cfg.loss.dual_clip = 3.0
    cfg.loss.rollout_is_clip = 2.0
    cfg.teacher.kind = "live"  # GRPO needs no teacher copy
    cfg.optim.lr = 1e-6
    cfg.optim.minibatch_prompts = 8  # 4 off-policy optimizer steps per generation batch
    cfg.optim.micro_batches = 1  # 64 rows a mini-batch: one per device on 64 devices
    cfg.eval.at_start = True  # verl's default for baseline_grpo.yaml
    return cfg
