"""The config schema (ml_collections), its defaults, and `validate(cfg)` with clear messages.

Every experiment config in `configs/` starts from `base_config()` and overrides fields; `validate`
checks the whole tree against this schema before anything heavy starts (unknown keys, wrong types,
values out of range, shapes that cannot divide the mesh, paths that do not exist).
"""

from __future__ import annotations

import difflib
import json
import math
import os
from typing import Any

import ml_collections
from ml_collections.config_dict import placeholder

from sdpo_jax import defaults, divergences, envs, hub, losses, models, names, teacher, train_step
from sdpo_jax.ttt import methods as ttt_methods

ConfigDict = ml_collections.ConfigDict

# Fields that may legitimately hold None or several types: name -> allowed Python types.
_FLEXIBLE_TYPES: dict[str, tuple[type, ...]] = {
    "loss.is_clip": (float, int, type(None)),
    "loss.rollout_is_clip": (float, int, type(None)),
    "loss.adv_clip": (float, int, type(None)),
    "loss.dual_clip": (float, int, type(None)),
    "loss.topk": (int, type(None)),
    "reprompt.max_len": (int, type(None)),
    "rollout.top_k": (int,),
    "model.init.sliding_window": (int, type(None)),
    "model.init.vocab_size": (int, type(None)),
    "checkpoint.resume_from": (str, type(None)),
    "checkpoint.warm_start_dir": (str, type(None)),
    "model.path": (str, type(None)),
    "model.revision": (str, type(None)),
    "tokenizer.path": (str, type(None)),
    "eval.min_gain_points": (float, int, type(None)),
    "data.eval": (str, type(None)),
    "logging.wandb_project": (str, type(None)),
    # the flat aliases of TRL's / the official names (names.ALIASES): None = unset
    **{a.name: ((float, int) if a.kind is float else (a.kind,)) + (type(None),) for a in names.ALIASES},
    "checkpoint.keep_best_metric": (str, type(None)),
}


class ConfigError(ValueError):
    """A config field is wrong; the message names the field and what would work."""


def base_config() -> ConfigDict:
    """All fields with their defaults. Experiment configs override these; none may add new keys."""
    c = ConfigDict()
    c.seed = 0
    c.run_dir = "runs/default"

    # The model: a Hugging Face directory or hub id (`path`, e.g. "Qwen/Qwen3-0.6B", fetched into the HF cache
    # at `revision`, None = main; HF_TOKEN for gated models) or a random init from `init` (tests, the demo).
    c.model = ConfigDict()
    c.model.path = placeholder(str)
    c.model.revision = placeholder(str)
    c.model.compute_dtype = "float32"
    c.model.param_dtype = "float32"
    c.model.attention_impl = "plain"
    c.model.remat = False
    c.model.scan_layers = False
    c.model.init = ConfigDict()
    c.model.init.model_type = "qwen3"
    c.model.init.hidden_size = 64
    c.model.init.num_layers = 2
    c.model.init.num_heads = 4
    c.model.init.num_kv_heads = 2
    c.model.init.head_dim = 16
    c.model.init.intermediate_size = 128
    c.model.init.tie_word_embeddings = True
    c.model.init.rope_theta = 10000.0
    c.model.init.sliding_window = placeholder(int)
    # Vocabulary of a random init when no tokenizer is loaded (sdpo_jax.tools.aot); training uses the
    # tokenizer's size rounded up to a multiple of 64.
    c.model.init.vocab_size = placeholder(int)
    c.model.init.std = 0.02  # N(0, std) for every weight matrix and the embedding

    c.tokenizer = ConfigDict()
    # "demo" = the project's own offline BPE; else an HF directory or hub id. Unset: model.path when it is set
    # (the model's own tokenizer), else "demo" (`tokenizer_path`). Set-up checks it against the model's vocabulary.
    c.tokenizer.path = placeholder(str)
    # False skips the vocabulary checks (bench/rl_step.py: random weights at a real model's shape, demo tokens).
    c.tokenizer.check_vocabulary = True
    c.tokenizer.enable_thinking = False

    c.mesh = ConfigDict()
    c.mesh.data = 1
    c.mesh.fsdp = -1  # -1: the rest of the devices
    c.mesh.tensor = 1

    c.data = ConfigDict()
    c.data.train = "synthetic"  # a JSONL path, a built-in name, or "pkg.module:function"
    c.data.eval = placeholder(str)
    c.data.prompts_per_step = 8  # questions per generation batch (global)
    c.data.eval_prompts = 64
    c.data.skip_bad_rows = False
    c.data.synthetic_difficulty = 1
    c.data.synthetic_train_size = 4096
    c.data.synthetic_final_ops = ()  # e.g. ("max", "min"): every synthetic answer is one digit
    c.data.synthetic_uniform_answers = False  # every op chain has uniformly distributed answers
    c.data.synthetic_aliases = False  # questions name the ops by other words (envs/synthetic.py ALIASES)

    c.env = ConfigDict()
    c.env.name = "synthetic"
    c.env.num_workers = 0  # 0 = one per host core
    c.env.timeout_s = 30.0
    c.env.unsafe_allow_no_sandbox = False
    # keyword options for every env.score call, set in the config file (e.g. the math env's
    # {"feedback": True, "correctness_feedback": True}); a name score() does not take is an error
    c.env.options = ConfigDict()

    c.rollout = ConfigDict()
    c.rollout.n = 8
    c.rollout.temperature = 1.0
    c.rollout.top_p = 1.0
    c.rollout.top_k = 0
    c.rollout.max_new_tokens = 32
    c.rollout.prompt_buckets = (64, 128, 256, 512, 1024, 2048)
    c.rollout.completion_buckets = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
    c.rollout.cache_dtype = "float32"
    # The weights the decode loop reads: "sharded" (the train parameters' layout, or a compute-dtype copy in
    # it: every decode step all-gathers the fsdp-sharded weights) or "gathered" (a compute-dtype copy with
    # fsdp dropped, kept on tensor: no per-step gather, parameter bytes / tensor per device).
    c.rollout.decode_weights = "sharded"

    c.reprompt = ConfigDict()
    c.reprompt.success_threshold = defaults.SUCCESS_THRESHOLD
    c.reprompt.dont_reprompt_on_self_success = True
    c.reprompt.remove_thinking = True
    c.reprompt.include_feedback = True
    c.reprompt.include_solution = True  # False: the teacher never sees a sibling's solution (feedback only)
    c.reprompt.feedback_only_without_solution = True
    c.reprompt.max_len = defaults.REPROMPT_MAX_LEN
    c.reprompt.teacher_prompt_buckets = (64, 128, 256, 512, 1024, 2048, 4096, 8192, 10240)

    c.loss = ConfigDict()
    c.loss.objective = defaults.OBJECTIVE  # sdpo | grpo | hybrid
    c.loss.hybrid_lambda = defaults.HYBRID_LAMBDA
    c.loss.mode = defaults.LOSS_MODE  # topk | full | token (divergences.DIVERGENCES)
    c.loss.topk = defaults.TOPK
    c.loss.add_tail = defaults.ADD_TAIL
    c.loss.alpha = defaults.ALPHA
    c.loss.is_clip = defaults.IS_CLIP
    c.loss.rollout_is_clip = defaults.ROLLOUT_IS_CLIP
    c.loss.aggregation = defaults.AGGREGATION
    c.loss.clip_low = defaults.CLIP_LOW
    c.loss.clip_high = defaults.CLIP_HIGH
    c.loss.dual_clip = defaults.DUAL_CLIP
    c.loss.adv_clip = placeholder(float)
    c.loss.norm_adv_by_std = False
    c.loss.vocab_chunk = defaults.VOCAB_CHUNK  # vocabulary columns per chunk of the train step's loss
    c.loss.seq_chunk = defaults.SEQ_CHUNK  # tokens (of the flattened batch) per chunk of the train step's loss

    c.teacher = ConfigDict()
    c.teacher.kind = defaults.TEACHER_KIND  # ema | trust_region | frozen | live
    c.teacher.ema_rate = defaults.EMA_RATE
    c.teacher.trust_region_mix = defaults.TRUST_REGION_MIX

    c.optim = ConfigDict()
    c.optim.lr = 1e-5
    c.optim.warmup_steps = 10
    c.optim.schedule = "constant"  # constant (the paper) | cosine: decay to lr * final_lr_ratio by the last step
    c.optim.final_lr_ratio = 0.1
    c.optim.weight_decay = 0.01
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.grad_clip = 1.0
    c.optim.minibatch_prompts = 0  # questions per optimizer step; 0 = the whole generation batch
    c.optim.micro_batches = 1

    c.train = ConfigDict()
    c.train.steps = 100  # generation batches
    c.train.max_nonfinite_in_a_row = 5

    c.eval = ConfigDict()
    c.eval.every = 10  # 0 = never
    c.eval.n = 4
    c.eval.temperature = 0.6
    c.eval.top_p = 0.95
    c.eval.at_start = True
    # The run judges itself (the CPU demo): a run that completes train.steps with >= 2 evaluations and
    # gains fewer points of eval accuracy (first to last evaluation) exits with code 4. None: no floor.
    c.eval.min_gain_points = placeholder(float)

    c.checkpoint = ConfigDict()
    c.checkpoint.every = 10  # 0 = only at the end
    c.checkpoint.max_to_keep = 2
    c.checkpoint.async_save = True
    c.checkpoint.resume = True  # resume from run_dir when it holds a checkpoint
    c.checkpoint.resume_from = placeholder(str)  # or an explicit checkpoint directory
    c.checkpoint.warm_start_dir = placeholder(str)  # demo: where the warm-started model lives
    c.checkpoint.export_hf_at_end = True
    c.checkpoint.at_end = True  # save the final state (benchmarks switch it off)
    # Keep-best beside keep-last: also keep the checkpoint with the best value of this evaluation metric (an
    # eval/* key, e.g. "eval/accuracy"; None = off). A checkpoint is saved at every evaluation then; only those
    # steps compete; the latest max_to_keep stay too and resume takes the latest.
    c.checkpoint.keep_best_metric = placeholder(str)
    c.checkpoint.keep_best_mode = "max"  # "max" or "min": which end of keep_best_metric is best

    c.logging = ConfigDict()
    c.logging.every = 1
    # context/* metrics (student vs teacher p(right first answer token), context_probe.context_metrics) every
    # this many steps, for envs that know the answer; 0 = never. Five extra forward passes each time.
    c.logging.context_every = 10
    c.logging.tensorboard = True
    c.logging.wandb_project = placeholder(str)
    c.logging.plot = True
    c.logging.progress_bar = True

    # TRL's and the official code's names (names.ALIASES, README "Names from TRL and the official code"): flat
    # like TRL's SDPOConfig, None = unset; validate() moves them into the fields above and sets them back to None.
    for alias in names.ALIASES:
        c[alias.name] = placeholder(alias.kind)
    # samples.jsonl (+ TensorBoard text) every this many steps and at step 1: logging.samples_rows rows of the
    # step's batch (prompt, completion, reward, feedback, teacher prompt). 0 = never.
    c.logging.samples_every = 10
    c.logging.samples_rows = 4
    return c


def warm_start_defaults() -> ConfigDict:
    """The optional `warm_start` group: the demo's supervised warm start to a held-out criterion
    (warm_start.py). Only the demo's configs add it (c.warm_start = warm_start_defaults())."""
    c = ConfigDict()
    c.steps = 0  # the step cap; 0 = no warm start
    c.lr = 3e-3
    c.batch_size = 64
    c.feedback_fraction = 0.4  # examples with feedback on a wrong attempt in context
    c.solution_fraction = 0.4  # examples with a sibling's correct solution; the rest: question only
    c.check_every = 100
    c.check_questions = 128
    c.min_solution_accuracy = 0.9  # stop once (a) >= this ...
    c.min_feedback_gain = 0.15  # ... and (b) >= (c) + this
    return c


def tokenizer_path(cfg: ConfigDict) -> str:
    """The tokenizer a run loads: tokenizer.path, or when unset model.path (the model's own), else "demo"."""
    return cfg.tokenizer.path or cfg.model.path or "demo"


def warm_start_steps(cfg: ConfigDict) -> int:
    """cfg.warm_start.steps, 0 for a config without the optional group."""
    return cfg.warm_start.steps if "warm_start" in cfg else 0


def _choices() -> dict[str, tuple[Any, ...]]:
    """Each choice field's values; the objectives, loss modes, aggregations, teacher kinds and model families
    come from the registries the code dispatches on (a teacher registered in `teacher.TEACHERS` is a valid
    teacher.kind, a divergence in `divergences.DIVERGENCES` a valid loss.mode, a family in `models.FAMILIES` a
    valid model.init.model_type)."""
    return {**_CHOICES, "loss.objective": train_step.OBJECTIVES, "loss.mode": tuple(divergences.DIVERGENCES),
            "loss.aggregation": losses.AGGREGATIONS, "teacher.kind": tuple(teacher.TEACHERS),
            "model.init.model_type": tuple(models.FAMILIES)}


_CHOICES: dict[str, tuple[Any, ...]] = {
    "optim.schedule": ("constant", "cosine"),
    "checkpoint.keep_best_mode": ("max", "min"),
    "model.compute_dtype": ("float32", "bfloat16"),
    "model.param_dtype": ("float32", "bfloat16"),
    "model.attention_impl": ("plain", "blockwise", "cudnn", "splash"),
    "rollout.cache_dtype": ("float32", "bfloat16"),
    "rollout.decode_weights": ("sharded", "gathered"),
}


def _walk(cfg: ConfigDict, prefix: str = ""):
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, ConfigDict):
            yield from _walk(value, name + ".")
        else:
            yield name, value


def _get(cfg: ConfigDict, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


_FREE_FORM_GROUPS = ("env.options",)


def unknown_key_error(name: str, group: ConfigDict) -> ConfigError:
    """The error for the dotted `name` whose last part `group` (the schema's group it would live in) lacks:
    the name, the closest key (the same first three letters, else difflib's nearest) and the group's keys."""
    prefix, _, key = name.rpartition(".")
    known = sorted(group.keys())
    close = [k for k in known if k[:3] == key[:3]] or difflib.get_close_matches(key, known, n=1)
    hint = f" Did you mean {(prefix + '.' if prefix else '') + close[0]!r}?" if close else ""
    return ConfigError(f"config: unknown key {name!r}.{hint} Known keys {f'in {prefix}' if prefix else 'here'}: {known}")


def check_field_path(cfg: ConfigDict, dotted: str) -> None:
    """Raise ConfigError (with the "did you mean") unless `dotted` names a field or group of `cfg`; any name
    below a free-form group (env.options) is accepted. What the command line checks an override against."""
    node, parts = cfg, dotted.split(".")
    for depth, key in enumerate(parts):
        name = ".".join(parts[:depth + 1])
        if name.rpartition(".")[0] in _FREE_FORM_GROUPS:
            return
        if not isinstance(node, ConfigDict):
            raise ConfigError(f"config: {name.rpartition('.')[0]!r} is a field, not a group: it has no {key!r}")
        if key not in node:
            raise unknown_key_error(name, node)
        node = node[key]


def _check_schema(cfg: ConfigDict, schema: ConfigDict, prefix: str = "") -> None:
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if key not in schema:
            raise unknown_key_error(name, schema)
        expected = schema[key]
        if name in _FREE_FORM_GROUPS:  # names checked where they are used (env.score's keywords)
            if not isinstance(value, ConfigDict):
                raise ConfigError(f"config: {name!r} must be a group of fields, got {type(value).__name__}")
            try:
                json.dumps(value.to_dict())
            except TypeError as err:
                raise ConfigError(f"config: {name!r} values must be JSON-serializable: {err}") from None
            continue
        if isinstance(expected, ConfigDict):
            if not isinstance(value, ConfigDict):
                raise ConfigError(f"config: {name!r} must be a group of fields, got {type(value).__name__}")
            _check_schema(value, expected, name + ".")
            continue
        allowed = _FLEXIBLE_TYPES.get(name)
        if allowed is None:
            allowed = (float, int) if isinstance(expected, float) else (type(expected),)
            if isinstance(expected, (tuple, list)):
                allowed = (tuple, list)
        if isinstance(value, bool) and bool not in allowed:
            raise ConfigError(f"config: {name!r} must be {allowed[0].__name__}, got the bool {value!r}")
        if not isinstance(value, allowed):
            names = " or ".join(t.__name__ for t in allowed)
            raise ConfigError(f"config: {name!r} must be {names}, got {type(value).__name__} {value!r}")


def step_settings(cfg: ConfigDict) -> train_step.StepSettings:
    """The train step's settings from loss.*, teacher.*, optim.* (their one validation: StepSettings raises
    ValueError naming the config field; `validate` reports it as a ConfigError)."""
    loss, teacher, optim = cfg.loss, cfg.teacher, cfg.optim
    mini = optim.minibatch_prompts or cfg.data.prompts_per_step
    return train_step.StepSettings(
        objective=loss.objective, hybrid_lambda=loss.hybrid_lambda, loss_mode=loss.mode,
        topk=loss.topk, add_tail=loss.add_tail, alpha=loss.alpha, is_clip=loss.is_clip,
        rollout_is_clip=loss.rollout_is_clip, aggregation=loss.aggregation,
        temperature=cfg.rollout.temperature, clip_low=loss.clip_low, clip_high=loss.clip_high,
        dual_clip=loss.dual_clip, adv_clip=loss.adv_clip, norm_adv_by_std=loss.norm_adv_by_std,
        teacher_kind=teacher.kind, ema_rate=teacher.ema_rate, trust_region_mix=teacher.trust_region_mix,
        vocab_chunk=loss.vocab_chunk, seq_chunk=loss.seq_chunk, micro_batches=optim.micro_batches, minibatch_groups=mini,
        old_logprobs_from_step=mini == cfg.data.prompts_per_step,
    )


def resolve_mesh_sizes(cfg: ConfigDict, num_devices: int) -> dict[str, int]:
    """The mesh axis sizes of a run on `num_devices` devices: `cfg.mesh` with -1 resolved. The default
    mesh (data 1, fsdp -1, tensor 1: fsdp over every device) on a device count that does not divide a
    mini-batch's rows would pad each mini-batch with zero-weight rows (8 rows on 32 devices: 75 %
    padding); it then takes as many fsdp shards as divide the rows and puts the rest on `tensor`."""
    sizes = {"data": cfg.mesh.data, "fsdp": cfg.mesh.fsdp, "tensor": cfg.mesh.tensor}
    rows = (cfg.optim.minibatch_prompts or cfg.data.prompts_per_step) * cfg.rollout.n
    if sizes == {"data": 1, "fsdp": -1, "tensor": 1} and rows % num_devices:
        fsdp = math.gcd(rows, num_devices)
        return {"data": 1, "fsdp": fsdp, "tensor": num_devices // fsdp}
    fixed = math.prod(v for v in sizes.values() if v != -1)
    return {k: (num_devices // fixed if v == -1 else v) for k, v in sizes.items()}


def resolve_aliases(cfg: ConfigDict) -> None:
    """Move the aliases set in `cfg` (TRL's / the official names, `names.ALIASES`) into our fields, in place, and
    set them back to None; ConfigError for a refused alias or an alias and our field set to different values."""
    set_aliases = {name: cfg[name] for name in names.ALIAS_NAMES if cfg.get(name) is not None}
    if not set_aliases:
        return
    try:
        updates = names.resolve(set_aliases, dict(_walk(cfg)), dict(_walk(base_config())))
    except names.AliasError as err:
        raise ConfigError(f"config: {err}") from None
    for dotted, value in updates.items():
        group, _, leaf = dotted.rpartition(".")
        _get(cfg, group)[leaf] = value
    for name in set_aliases:
        cfg[name] = None


def validate(cfg: ConfigDict, *, num_devices: int | None = None) -> None:
    """Raise ConfigError naming the first bad field and the fix; return None when the config is sound. Resolves
    the aliases in place first (`resolve_aliases`): the config the run then reads holds only our names' values.
    The process count sets no constraint: every process holds the whole generation batch, so mini-batches
    and generation batches of any number of questions run on any number of hosts."""
    schema = base_config()
    if "warm_start" in cfg:
        schema.warm_start = warm_start_defaults()
    _check_schema(cfg, schema)
    resolve_aliases(cfg)
    for name, choices in _choices().items():
        value = _get(cfg, name)
        if value not in choices:
            raise ConfigError(f"config: {name}={value!r} is not one of {list(choices)}")

    def positive(name: str, allow_zero: bool = False):
        value = _get(cfg, name)
        if value < 0 or (value == 0 and not allow_zero):
            raise ConfigError(f"config: {name}={value!r} must be {'>= 0' if allow_zero else '> 0'}")

    for name in ("rollout.n", "rollout.max_new_tokens", "data.prompts_per_step", "train.steps",
                 "optim.micro_batches", "train.max_nonfinite_in_a_row"):
        positive(name)
    for name in ("optim.lr", "rollout.temperature"):
        positive(name, allow_zero=name == "rollout.temperature")
    for name in ("eval.every", "checkpoint.every", "optim.minibatch_prompts", "optim.warmup_steps",
                 "env.num_workers", "logging.context_every", "logging.samples_every", "logging.samples_rows",
                 *(("warm_start.steps",) if "warm_start" in cfg else ())):
        positive(name, allow_zero=True)
    if warm_start_steps(cfg):
        for name in ("warm_start.lr", "warm_start.batch_size", "warm_start.check_every", "warm_start.check_questions"):
            positive(name)
        fractions = cfg.warm_start.feedback_fraction + cfg.warm_start.solution_fraction
        if min(cfg.warm_start.feedback_fraction, cfg.warm_start.solution_fraction) < 0 or fractions > 1:
            raise ConfigError(f"config: warm_start.feedback_fraction + warm_start.solution_fraction = {fractions} "
                              "must be in [0, 1] (each >= 0; the rest are question-only examples)")
    if not 0.0 < cfg.rollout.top_p <= 1.0:
        raise ConfigError(f"config: rollout.top_p={cfg.rollout.top_p} must be in (0, 1]")
    try:  # the loss, teacher and optimizer-step options: StepSettings holds their one check
        step_settings(cfg)
    except ValueError as err:
        raise ConfigError(f"config: {err}") from None
    if not 0.0 <= cfg.optim.final_lr_ratio <= 1.0:
        raise ConfigError(f"config: optim.final_lr_ratio={cfg.optim.final_lr_ratio} must be in [0, 1]")
    if list(cfg.rollout.prompt_buckets) != sorted(cfg.rollout.prompt_buckets) or not cfg.rollout.prompt_buckets:
        raise ConfigError(f"config: rollout.prompt_buckets={tuple(cfg.rollout.prompt_buckets)} must be a non-empty increasing list")
    if cfg.rollout.max_new_tokens > max(cfg.rollout.completion_buckets):
        raise ConfigError(
            f"config: rollout.max_new_tokens={cfg.rollout.max_new_tokens} exceeds the largest of "
            f"rollout.completion_buckets={tuple(cfg.rollout.completion_buckets)}; add a larger bucket")

    mini = cfg.optim.minibatch_prompts or cfg.data.prompts_per_step
    if cfg.data.prompts_per_step % mini:
        raise ConfigError(
            f"config: data.prompts_per_step={cfg.data.prompts_per_step} is not a multiple of "
            f"optim.minibatch_prompts={mini}")

    axes = {"mesh.data": cfg.mesh.data, "mesh.fsdp": cfg.mesh.fsdp, "mesh.tensor": cfg.mesh.tensor}
    if sum(v == -1 for v in axes.values()) > 1:
        raise ConfigError(f"config: at most one mesh axis may be -1, got {axes}")
    for name, value in axes.items():
        if value == 0 or value < -1:
            raise ConfigError(f"config: {name}={value} must be a positive size or -1 (the rest of the devices)")
    if num_devices is not None:
        fixed = 1
        for value in axes.values():
            fixed *= value if value != -1 else 1
        has_rest = -1 in axes.values()
        if (num_devices % fixed) if has_rest else (num_devices != fixed):
            raise ConfigError(
                f"config: mesh {axes} needs {'a multiple of ' if has_rest else ''}{fixed} devices, but there "
                f"are {num_devices}; set one axis to -1 to take the rest")
        resolved = resolve_mesh_sizes(cfg, num_devices)
        data_parallel = resolved["data"] * resolved["fsdp"]
        rows = cfg.data.prompts_per_step * cfg.rollout.n
        if rows % data_parallel:
            raise ConfigError(
                f"config: the generation batch data.prompts_per_step x rollout.n = {rows} rows does not divide "
                f"over the data-parallel axes mesh.data x mesh.fsdp = {data_parallel}; change one of them")
    for name in ("model.path", "checkpoint.resume_from"):
        value = _get(cfg, name)
        hub_id = name == "model.path" and value and hub.is_hub_id(value)
        if value and not value.startswith("gs://") and not os.path.exists(value) and not hub_id:
            hint = " and is not a hub id (owner/name, e.g. Qwen/Qwen3-0.6B)" if name == "model.path" else ""
            raise ConfigError(f"config: {name}={value!r} does not exist{hint}")
    if cfg.data.train.endswith(".jsonl") and not os.path.exists(cfg.data.train):
        raise ConfigError(f"config: data.train={cfg.data.train!r} does not exist")
    try:  # the environment and the keywords its score() takes (env.options), before anything is built
        envs.base.accepted_options(envs.get_env(cfg.env.name), cfg.env.name, cfg.env.options.to_dict())
    except ValueError as err:
        raise ConfigError(f"config: env.name / env.options: {err}") from None
    best = cfg.checkpoint.keep_best_metric
    if best is not None and (not best.startswith("eval/") or not cfg.eval.every):
        raise ConfigError(
            f"config: checkpoint.keep_best_metric={best!r} needs an evaluation metric (an eval/* key such as "
            f"'eval/accuracy') and evaluations (eval.every={cfg.eval.every} must be > 0); or set it to None")


# ---------------------------------------------------------------------- test-time SDPO (python -m sdpo_jax.ttt)


def ttt_defaults() -> ConfigDict:
    """The `ttt` group every TTT config adds to `base_config()` (paper values where they exist)."""
    t = ConfigDict()
    t.methods = ttt_methods.METHODS
    t.questions = "synthetic"  # "synthetic" (hard instances, selected below) or a dataset spec / JSONL
    t.num_questions = 8  # first n questions of the (selected) set; 0 = all
    t.synthetic_difficulty = 3
    t.candidate_questions = 64  # synthetic: candidates drawn before selection
    t.question_seed = 1234
    t.select_samples = 0  # >0: keep questions whose success rate over this many draws is in
    t.select_min_rate = 0.0  # [select_min_rate, select_max_rate] (draws independent of best-of-k's)
    t.select_max_rate = 0.0
    t.seeds = 5
    t.budget = 2750  # attempts per question and seed (every attempt counted)
    t.batch_size = 16  # SDPO attempts per step
    t.best_of_k_samples = 2944  # N for the unbiased pass@k (>= budget)
    t.sample_rows = 256  # rows per generate call for best-of-k / selection
    t.multi_turn_max_prompt_tokens = 32000
    t.multi_turn_prompt_buckets = (2048, 4096, 8192, 16384, 32768)
    t.bootstrap_resamples = 1000
    t.confidence = 0.9
    t.report_ks = (1, 16, 64, 256, 1024, 2750)
    t.targets = (0.22, 0.5)  # discovery probabilities for "attempts to reach p"
    return t


def validate_ttt(cfg, *, num_devices: int | None = None) -> None:
    """Validate the base fields with `config.validate` (on `num_devices` when given) and the `ttt` group
    here (ConfigError)."""
    if "ttt" not in cfg:
        raise ConfigError("config: a TTT config needs a 'ttt' group (c.ttt = ttt.ttt_defaults())")
    t = cfg.ttt
    schema = ttt_defaults()
    for key in t.keys():
        if key not in schema:
            raise ConfigError(f"config: unknown key 'ttt.{key}'. Known: {sorted(schema.keys())}")
    base = cfg.copy_and_resolve_references()
    with base.unlocked():
        del base["ttt"]
    validate(base, num_devices=num_devices)
    resolve_aliases(cfg)  # as validate did on the copy, on the config the run reads
    bad = [m for m in t.methods if m not in ttt_methods.METHODS]
    if bad or not t.methods:
        raise ConfigError(f"config: ttt.methods={tuple(t.methods)} must be a non-empty subset of {ttt_methods.METHODS}")
    for name in ("seeds", "budget", "batch_size", "sample_rows", "multi_turn_max_prompt_tokens"):
        if int(t[name]) < 1:
            raise ConfigError(f"config: ttt.{name}={t[name]} must be >= 1")
    if "best_of_k" in t.methods and t.best_of_k_samples < t.budget:
        raise ConfigError(
            f"config: ttt.best_of_k_samples={t.best_of_k_samples} must be >= ttt.budget={t.budget} "
            "(pass@k needs N >= k)")
    if "multi_turn" in t.methods and t.multi_turn_max_prompt_tokens > max(t.multi_turn_prompt_buckets):
        raise ConfigError(
            f"config: ttt.multi_turn_max_prompt_tokens={t.multi_turn_max_prompt_tokens} exceeds the largest of "
            f"ttt.multi_turn_prompt_buckets={tuple(t.multi_turn_prompt_buckets)}; add a bucket")
    if not 0.0 <= t.select_min_rate <= t.select_max_rate <= 1.0:
        raise ConfigError(
            f"config: need 0 <= ttt.select_min_rate={t.select_min_rate} <= "
            f"ttt.select_max_rate={t.select_max_rate} <= 1")
    if t.questions != "synthetic" and ":" not in t.questions.replace("://", "") and not os.path.exists(t.questions):
        raise ConfigError(f"config: ttt.questions={t.questions!r} does not exist; pass a JSONL of problems "
                          "(or 'synthetic', or an import path 'pkg.module:function')")
    if not 0.0 < t.confidence < 1.0:
        raise ConfigError(f"config: ttt.confidence={t.confidence} must be in (0, 1), e.g. 0.9")
    if any(k > t.budget or k < 1 for k in t.report_ks):
        raise ConfigError(
            f"config: ttt.report_ks={tuple(t.report_ks)} must lie in [1, ttt.budget={t.budget}]")
    if cfg.data.prompts_per_step != 1 or cfg.rollout.n != t.batch_size:
        raise ConfigError(
            f"config: test-time SDPO trains on one question with ttt.batch_size attempts per step; set "
            f"data.prompts_per_step=1 (got {cfg.data.prompts_per_step}) and rollout.n=ttt.batch_size="
            f"{t.batch_size} (got {cfg.rollout.n})")
