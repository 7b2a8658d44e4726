"""The paper's experiment configs (configs/{lcb,science,tooluse}_qwen3_8b[_grpo].py): they validate on
the meshes they are meant for, carry docs/ALGORITHM.md §8's hyperparameters, document a command line that
parses, and the GRPO baselines differ from their SDPO configs only where the spec says. No model is
built; every check is on config trees."""
import importlib
import math
import re
import shlex

import pytest

from sdpo_jax import config as config_lib

SDPO_CONFIGS = ("lcb_qwen3_8b", "science_qwen3_8b", "tooluse_qwen3_8b")
GRPO_CONFIGS = tuple(f"{name}_grpo" for name in SDPO_CONFIGS)
ALL_CONFIGS = SDPO_CONFIGS + GRPO_CONFIGS


def _load(name):
    return importlib.import_module(f"configs.{name}").get_config()


def _get(cfg, dotted):
    """A field by dotted name; `max(a.b)` is the largest entry of a bucket list."""
    match = re.fullmatch(r"max\((.+)\)", dotted)
    node = cfg
    for part in (match.group(1) if match else dotted).split("."):
        node = node[part]
    return max(node) if match else node


def _flat(cfg, prefix=""):
    out = {}
    for key, value in cfg.items():
        if isinstance(value, config_lib.ConfigDict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = tuple(value) if isinstance(value, (list, tuple)) else value
    return out


# docs/ALGORITHM.md §8 (Table 12 + the official scripts), written out as literals: rows shared by §3 and §4.
SHARED = {
    "tokenizer.enable_thinking": False,            # Thinking: off
    "rollout.max_new_tokens": 8192,                # Max prompt / response 2048 / 8192
    "max(rollout.prompt_buckets)": 2048,
    "max(rollout.completion_buckets)": 8192,
    "data.prompts_per_step": 32,                   # Questions per step 32
    "rollout.n": 8,                                # rollouts n 8
    "rollout.temperature": 1.0,                    # Rollout T / top-p 1.0 / 1.0
    "rollout.top_p": 1.0,
    "rollout.top_k": 0,
    "eval.temperature": 0.6,                       # Validation T 0.6, top-p 0.95
    "eval.top_p": 0.95,
    "eval.every": 5,                               # user.yaml test_freq 5
    "loss.objective": "sdpo",
    "loss.mode": "topk",                           # Top-K (+ tail)
    "loss.add_tail": True,
    "loss.is_clip": 2.0,                           # IS clip (distill) / rollout TIS 2 / 2
    "loss.rollout_is_clip": 2.0,
    "loss.aggregation": "seq_mean_token_mean",     # §2.6: micro-batch 1 per GPU
    "teacher.kind": "ema",                         # Teacher: EMA
    "reprompt.max_len": 10240,                     # max_reprompt_len 10240
    "max(reprompt.teacher_prompt_buckets)": 10240,
    "reprompt.success_threshold": 0.5,             # §8 yaml column
    "reprompt.dont_reprompt_on_self_success": True,
    "reprompt.remove_thinking": True,
    "reprompt.feedback_only_without_solution": True,
    "optim.b1": 0.9,                               # AdamW(0.9, 0.999), wd 0.01, grad clip 1.0
    "optim.b2": 0.999,
    "optim.weight_decay": 0.01,
    "optim.grad_clip": 1.0,
    "model.compute_dtype": "bfloat16",             # fp32 params with bf16 compute
    "model.param_dtype": "float32",
}
# §3 "no rich feedback" column (science Q&A and tool use).
SECTION3 = {
    "optim.minibatch_prompts": 32,                 # Mini-batch 32 (1 step per batch)
    "eval.n": 16,                                  # Validation 16 samples
    "loss.topk": 100,                              # Top-K 100
    "loss.alpha": 0.5,                             # JSD
    "teacher.ema_rate": 0.05,                      # EMA 0.05
    "reprompt.include_feedback": False,            # sibling solutions only
    "optim.lr": 1e-5,                              # 1e-5 constant / 10 steps
    "optim.warmup_steps": 10,
}
# §4 "LCBv6 rich feedback" column.
SECTION4 = {
    "optim.minibatch_prompts": 1,                  # Mini-batch 1 (32 steps per batch)
    "eval.n": 4,                                   # Validation 4 samples
    "loss.topk": 20,                               # Top-K 20
    "loss.alpha": 1.0,                             # reverse KL
    "teacher.ema_rate": 0.01,                      # EMA 0.01
    "reprompt.include_feedback": True,             # env output when no sibling solution
    "optim.lr": 1e-6,                              # 1e-6 / 0
    "optim.warmup_steps": 0,
}
EXPECTED = {
    "lcb_qwen3_8b": {**SHARED, **SECTION4, "env.name": "code"},
    "science_qwen3_8b": {**SHARED, **SECTION3, "env.name": "mcq"},
    "tooluse_qwen3_8b": {**SHARED, **SECTION3, "env.name": "tooluse"},
}
# §5 baseline: Dr.GRPO, clip 0.2 / 0.28, dual clip 3, rollout TIS 2, n 8, 32 questions; the reported
# off-policy setting lr 1e-6 with mini-batch 8 (lcb: run_baseline_grpo.sh, no warmup; §3: warmup 10
# generation batches = 40 of our per-update warmup steps at 4 updates a batch).
GRPO = {
    "loss.objective": "grpo",
    "loss.norm_adv_by_std": False,
    "loss.clip_low": 0.2,
    "loss.clip_high": 0.28,
    "loss.dual_clip": 3.0,
    "loss.rollout_is_clip": 2.0,
    "teacher.kind": "live",
    "rollout.n": 8,
    "data.prompts_per_step": 32,
    "optim.lr": 1e-6,
    "optim.minibatch_prompts": 8,
}
EXPECTED_GRPO = {
    "lcb_qwen3_8b_grpo": {**GRPO, "optim.warmup_steps": 0, "eval.n": 4, "env.name": "code"},
    "science_qwen3_8b_grpo": {**GRPO, "optim.warmup_steps": 40, "eval.n": 16, "env.name": "mcq"},
    "tooluse_qwen3_8b_grpo": {**GRPO, "optim.warmup_steps": 40, "eval.n": 16, "env.name": "tooluse"},
}
# The only fields a GRPO baseline may change relative to its SDPO config.
GRPO_DIFF = {
    "lcb_qwen3_8b": {"run_dir", "loss.objective", "teacher.kind", "optim.minibatch_prompts", "eval.at_start"},
    "science_qwen3_8b": {"run_dir", "loss.objective", "teacher.kind", "optim.lr", "optim.minibatch_prompts",
                         "optim.micro_batches", "optim.warmup_steps", "eval.at_start"},
}
GRPO_DIFF["tooluse_qwen3_8b"] = GRPO_DIFF["science_qwen3_8b"]


@pytest.mark.parametrize("name", ALL_CONFIGS)
def test_paper_configs_validate_on_their_meshes(name):
    """Every paper config passes validate() as written, without its checkpoint or data present, on 64
    devices (a 64-chip TPU slice, whatever its host count: a mini-batch may take its questions from any
    host, so the LCB 1-question mini-batch needs no change), on 8 (one GPU host) and on 1."""
    cfg = _load(name)
    for devices in (64, 8, 1):
        config_lib.validate(cfg, num_devices=devices)


@pytest.mark.parametrize("name", SDPO_CONFIGS)
def test_sdpo_configs_match_spec_table(name):
    """Each SDPO config's hyperparameters equal docs/ALGORITHM.md §8's column for its section (literals), and it
    has no warm start (the demo's optional group is absent)."""
    cfg = _load(name)
    wrong = {field: (_get(cfg, field), want) for field, want in EXPECTED[name].items()
             if _get(cfg, field) != want or type(_get(cfg, field)) is not type(want)}
    assert not wrong, f"{name}: (got, spec) per field: {wrong}"
    assert "warm_start" not in cfg


@pytest.mark.parametrize("name", GRPO_CONFIGS)
def test_grpo_configs_match_spec_baseline(name):
    """Each GRPO baseline carries docs/ALGORITHM.md §5's settings (Dr.GRPO, clips, TIS, lr / mini-batch)."""
    cfg = _load(name)
    wrong = {field: (_get(cfg, field), want) for field, want in EXPECTED_GRPO[name].items()
             if _get(cfg, field) != want}
    assert not wrong, f"{name}: (got, spec) per field: {wrong}"


@pytest.mark.parametrize("name", SDPO_CONFIGS)
def test_grpo_baseline_differs_only_where_it_should(name):
    """The GRPO baseline equals its SDPO config except exactly the expected fields (objective, teacher,
    lr / mini-batch / warmup, run_dir, eval at start): same data, model, sampling and validation."""
    sdpo, grpo = _flat(_load(name)), _flat(_load(f"{name}_grpo"))
    assert sdpo.keys() == grpo.keys()
    changed = {k for k in sdpo if sdpo[k] != grpo[k]}
    assert changed == GRPO_DIFF[name], f"{name}: changed {sorted(changed)}"


@pytest.mark.parametrize("name", ALL_CONFIGS)
def test_one_sequence_per_device_per_micro_batch_on_64(name):
    """With 64 data-parallel devices each micro-batch puts one sequence on each device (the official
    ppo_micro_batch_size_per_gpu 1): ceil(mini-batch rows / micro_batches / 64) == 1, no empty micro-batch."""
    cfg = _load(name)
    rows = cfg.optim.minibatch_prompts * cfg.rollout.n
    assert rows % cfg.optim.micro_batches == 0
    assert math.ceil(rows / cfg.optim.micro_batches / 64) == 1
    assert rows > 64 * (cfg.optim.micro_batches - 1)


@pytest.mark.parametrize("name", ALL_CONFIGS)
def test_unset_paths_fail_loudly_naming_the_override(name):
    """Without overrides the model path is unset and the tokenizer / data placeholders fail at start-up
    with an error naming the --config override to pass (never a silent default dataset or download)."""
    from sdpo_jax import data as data_lib
    from sdpo_jax.tokenizer import TokenizerError, load_tokenizer

    cfg = _load(name)
    assert cfg.model.path is None
    with pytest.raises(TokenizerError, match=re.escape("--config.tokenizer.path=")):
        load_tokenizer(cfg.tokenizer.path)
    for field in ("train", "eval"):
        with pytest.raises(data_lib.DataError, match=re.escape(f"--config.data.{field}=")):
            data_lib.load_dataset(cfg.data[field], env=cfg.env.name)


def _documented_command(name):
    doc = importlib.import_module(f"configs.{name}").__doc__
    assert doc and "python -m sdpo_jax.main" in doc, f"configs/{name}.py: docstring lacks the command"
    lines = doc.split("python -m sdpo_jax.main", 1)[1].splitlines()
    command = []
    for line in lines:
        command.append(line.rstrip().rstrip("\\"))
        if not line.rstrip().endswith("\\"):
            break
    return shlex.split(" ".join(command))


@pytest.mark.parametrize("name", ALL_CONFIGS)
def test_documented_command_line_parses_and_validates(name, tmp_path):
    """The command in each config's docstring loads that file and its model / tokenizer / data overrides
    parse (onto the unset model.path too); with those paths present the result validates on 64 devices."""
    from absl import flags
    from ml_collections import config_flags

    args = _documented_command(name)
    assert args[0] == f"--config=configs/{name}.py"
    overrides = dict(a.split("=", 1) for a in args[1:])
    assert {"--config.model.path", "--config.tokenizer.path", "--config.data.train",
            "--config.data.eval"} <= overrides.keys()
    # Point the documented paths at real files so validate's existence checks can pass.
    local = {}
    for flag, value in overrides.items():
        if flag in ("--config.model.path", "--config.tokenizer.path"):
            (tmp_path / "ckpt").mkdir(exist_ok=True)
            local[flag] = str(tmp_path / "ckpt")
        elif flag.startswith("--config.data."):
            path = tmp_path / value.lstrip("/").replace("/", "_")
            path.write_text("{}\n")
            local[flag] = str(path)
        else:
            local[flag] = value
    argv = ["main", args[0]] + [f"{k}={v}" for k, v in local.items()]
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", flag_values=flag_values, sys_argv=argv)
    flag_values(argv)
    cfg = flag_values.config
    assert cfg.model.path == local["--config.model.path"]
    assert cfg.data.train == local["--config.data.train"] and cfg.data.eval == local["--config.data.eval"]
    config_lib.validate(cfg, num_devices=64)
