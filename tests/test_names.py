"""TRL's and the official code's names (sdpo_jax/names.py, README "Names from TRL and the official code"): every
name of the README's table either resolves to the same config as our field or is refused with its exact message;
a name and its alias both set; a tiny run with aliases trains as one with our names; the `self_distillation/`
metrics equal the keys they mirror."""
import json
import os
import re
import subprocess
import sys

import pytest

from sdpo_jax import config as config_lib
from sdpo_jax import names
from tests.subprocess_env import REPO, job_env
from tests.test_train_loop import TINY, _comparable, _metrics


def _demo():
    from configs import demo

    return demo.get_config()


def _set(cfg, dotted: str, value):
    group, _, leaf = dotted.rpartition(".")
    node = cfg
    for part in filter(None, group.split(".")):
        node = node[part]
    node[leaf] = value


def _resolved(settings: dict):
    cfg = config_lib.base_config()
    for dotted, value in settings.items():
        _set(cfg, dotted, value)
    config_lib.validate(cfg)
    return cfg


# (alias, its value, our field, its value, other fields both configs set)
SAME_OR_CONVERTS = [
    ("distillation_topk", 20, "loss.topk", 20, {}),
    ("distillation_alpha", 1.0, "loss.alpha", 1.0, {}),
    ("distillation_add_tail", False, "loss.add_tail", False, {}),
    ("teacher_update_rate", 0.01, "teacher.ema_rate", 0.01, {}),
    ("teacher_update_rate", 0.3, "teacher.trust_region_mix", 0.3, {"teacher.kind": "trust_region"}),
    ("success_reward_threshold", 1.0, "reprompt.success_threshold", 1.0, {}),
    ("include_environment_feedback", False, "reprompt.include_feedback", False, {}),
    ("environment_feedback_only_without_solution", False, "reprompt.feedback_only_without_solution", False, {}),
    ("remove_thinking_from_demonstration", False, "reprompt.remove_thinking", False, {}),
    ("dont_reprompt_on_self_success", False, "reprompt.dont_reprompt_on_self_success", False, {}),
    ("distillation_weight", 0.75, "loss.hybrid_lambda", 0.25,
     {"loss.objective": "hybrid", "loss.norm_adv_by_std": True}),
]


@pytest.mark.parametrize("alias,value,field,ours,common", SAME_OR_CONVERTS,
                         ids=[f"{a}->{f}" for a, _, f, _, _ in SAME_OR_CONVERTS])
def test_an_alias_resolves_to_the_same_config_as_our_name(alias, value, field, ours, common):
    """Invariant: a config with the alias validates to exactly the config with our field set (every field equal,
    the alias back to None), and that value differs from the schema default (the alias did something)."""
    with_alias = _resolved({**common, alias: value})
    with_ours = _resolved({**common, field: ours})
    assert with_alias.to_dict() == with_ours.to_dict()
    assert with_alias[alias] is None
    assert _resolved(common).to_dict() != with_ours.to_dict()


# (settings, the exact ConfigError message)
REFUSED = [
    ({"max_reprompt_len": 4096},
     "config: max_reprompt_len: reprompt.max_len bounds the teacher prompt here by shortening the demonstration / "
     "feedback text (never the question or the assistant header); the official code cuts the prompt's end, TRL "
     "keeps its last tokens; set reprompt.max_len"),
    ({"ema_update_rate": 0.01},
     "config: ema_update_rate is the official scripts' stale key (Hydra rejects it; lasgroup/SDPO PR #21 renamed it "
     "teacher_update_rate); set teacher.ema_rate (the EMA rate, moved once per generation batch)"),
    ({"distillation_weight": 0.75},
     "config: distillation_weight=0.75: TRL's loss is (1 - w) x PPO loss on std-normalised advantages + w x "
     "distillation loss, here loss.objective='hybrid' with loss.norm_adv_by_std=True and loss.hybrid_lambda = 1 - w "
     "(got loss.objective='sdpo', loss.norm_adv_by_std=False); set those, or loss.hybrid_lambda directly"),
    ({"loss.objective": "hybrid", "distillation_weight": 0.75},
     "config: distillation_weight=0.75: TRL's loss is (1 - w) x PPO loss on std-normalised advantages + w x "
     "distillation loss, here loss.objective='hybrid' with loss.norm_adv_by_std=True and loss.hybrid_lambda = 1 - w "
     "(got loss.objective='hybrid', loss.norm_adv_by_std=False); set those, or loss.hybrid_lambda directly"),
    ({"optim.minibatch_prompts": 2, "teacher_update_rate": 0.01},
     "config: teacher_update_rate=0.01: with 4 optimizer steps per generation batch (optim.minibatch_prompts=2 of "
     "data.prompts_per_step=8) the official code moves the EMA once per generation batch, as teacher.ema_rate does, "
     "but TRL moves it every optimizer step; set teacher.ema_rate (once per generation batch)"),
    ({"teacher.kind": "frozen", "teacher_update_rate": 0.01},
     "config: teacher_update_rate=0.01: teacher.kind='frozen' has no update rate; it is teacher.ema_rate for "
     "teacher.kind='ema', teacher.trust_region_mix for 'trust_region'"),
    ({"loss.mode": "full", "distillation_topk": 20},
     "config: distillation_topk=20 is the top-K of the student's logits, loss.topk here, which only loss.mode='topk' "
     "uses (got loss.mode='full'); set loss.mode='topk'"),
]


@pytest.mark.parametrize("settings,message", REFUSED, ids=[",".join(s) for s, _ in REFUSED])
def test_a_refused_name_says_what_differs_and_what_to_set(settings, message):
    """Invariant: a name whose meaning differs here (or a conversion whose conditions do not hold) is refused by
    validate with exactly this one-line ConfigError."""
    with pytest.raises(config_lib.ConfigError) as err:
        _resolved(settings)
    assert str(err.value) == message
    assert "\n" not in str(err.value)


def test_a_name_and_its_alias_both_set_must_agree():
    """Invariant: our field set away from its default and the alias set to another value is an error naming both;
    set to the same (converted) value it resolves; our field at its default yields to the alias."""
    cfg = config_lib.base_config()
    cfg.loss.topk, cfg.distillation_topk = 20, 50
    with pytest.raises(config_lib.ConfigError) as err:
        config_lib.validate(cfg)
    assert str(err.value) == ("config: distillation_topk=50 and loss.topk=20 are both set and disagree "
                              "(distillation_topk means loss.topk=50); set only one")
    agreeing = _resolved({"loss.objective": "hybrid", "loss.norm_adv_by_std": True, "loss.hybrid_lambda": 0.25,
                          "distillation_weight": 0.75})
    assert agreeing.loss.hybrid_lambda == 0.25 and agreeing.distillation_weight is None
    demo = _demo()  # sets loss.topk=20: a config file's value conflicts with the alias like any other
    demo.distillation_topk = 8
    with pytest.raises(config_lib.ConfigError, match=r"distillation_topk=8 and loss.topk=20 are both set"):
        config_lib.validate(demo)
    assert _resolved({"loss.topk": 100, "distillation_topk": 8}).loss.topk == 8  # 100 is the default


def test_the_test_time_entry_resolves_aliases_on_the_config_it_runs():
    """Invariant: validate_ttt (python -m sdpo_jax.ttt) resolves an alias on the config the run reads, not only on
    its copy without the ttt group."""
    from configs import ttt_demo

    cfg = ttt_demo.get_config()
    cfg.success_reward_threshold = 0.75
    config_lib.validate_ttt(cfg)
    assert cfg.reprompt.success_threshold == 0.75 and cfg.success_reward_threshold is None


def _readme_table_names() -> list[str]:
    with open(os.path.join(REPO, "README.md")) as f:
        section = f.read().split("## Names from TRL and the official code", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `(\w+)` \(", section, flags=re.M)


def test_every_name_in_the_readme_table_is_an_alias_and_is_tested():
    """Invariant: the README's table lists exactly names.ALIASES, each once, and every one of them is covered above
    by a resolution or a refusal test."""
    table = _readme_table_names()
    assert sorted(table) == sorted(names.ALIAS_NAMES) and len(table) == len(set(table))
    tested = {a for a, *_ in SAME_OR_CONVERTS} | {k for s, _ in REFUSED for k in s if k in names.ALIAS_NAMES}
    assert tested == set(names.ALIAS_NAMES)


def test_a_refused_name_on_the_command_line_is_one_error_line():
    """Invariant: `python -m sdpo_jax.main --config.max_reprompt_len=...` exits 2 with one stderr line, the
    refusal, and nothing written in the run directory."""
    run_dir = os.path.join(REPO, ".pytest_names_refused")
    proc = subprocess.run([sys.executable, "-m", "sdpo_jax.main", "--config=configs/demo.py",
                           f"--config.run_dir={run_dir}", "--config.max_reprompt_len=4096"],
                          cwd=REPO, env=job_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == ["error: " + REFUSED[0][1]]
    assert not os.path.exists(run_dir)


def test_official_metrics_copy_the_sdpo_terms_loss_by_objective():
    """Invariant: the distillation loss copy is `loss` under sdpo, `loss_sdpo` under hybrid, absent under grpo;
    the reprompt fractions are copied under the official names whatever the objective."""
    metrics = {"loss": 1.5, "loss_sdpo": 2.5, "feedback_used_fraction": 0.25}
    assert names.official_metrics(metrics, "sdpo") == {"self_distillation/distillation_loss": 1.5,
                                                       "self_distillation/feedback_used_fraction": 0.25}
    assert names.official_metrics(metrics, "hybrid")["self_distillation/distillation_loss"] == 2.5
    assert names.official_metrics(metrics, "grpo") == {"self_distillation/feedback_used_fraction": 0.25}


_TWO_STEPS = [*TINY, "--config.train.steps=2", "--config.checkpoint.every=0", "--config.loss.objective=hybrid",
              "--config.loss.norm_adv_by_std=True"]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two tiny 2-step runs of the demo: our names, and TRL's names for the same settings (a converting alias,
    distillation_weight, and a same-meaning one, dont_reprompt_on_self_success)."""
    runs = {}
    for label, extra in (("ours", ["--config.loss.hybrid_lambda=0.25", "--config.reprompt.dont_reprompt_on_self_success=False"]),
                         ("alias", ["--config.distillation_weight=0.75", "--config.dont_reprompt_on_self_success=False"])):
        run_dir = str(tmp_path_factory.mktemp(label) / "run")
        proc = subprocess.run([sys.executable, "-m", "sdpo_jax.main", "--config=configs/demo.py",
                               f"--config.run_dir={run_dir}", *_TWO_STEPS, *extra],
                              cwd=REPO, env=job_env(), capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        runs[label] = run_dir
    return runs


def test_aliases_train_identically_to_our_names(two_runs):
    """Invariant: the run with TRL's names saves the same resolved config (hybrid_lambda 0.25, self-success
    reprompting on, aliases None) and writes the same metrics.jsonl (timings aside) as the run with ours."""
    configs = {}
    for label, run_dir in two_runs.items():
        with open(os.path.join(run_dir, "config.json")) as f:
            configs[label] = {k: v for k, v in json.load(f).items() if k != "run_dir"}
    assert configs["alias"] == configs["ours"]
    assert configs["alias"]["loss"]["hybrid_lambda"] == 0.25
    assert configs["alias"]["reprompt"]["dont_reprompt_on_self_success"] is False
    assert configs["alias"]["distillation_weight"] is None
    ours, alias = _metrics(two_runs["ours"]), _metrics(two_runs["alias"])
    assert sorted(ours) == [1, 2]
    assert {s: _comparable(r) for s, r in alias.items()} == {s: _comparable(r) for s, r in ours.items()}


def test_a_run_logs_the_official_metric_names_equal_to_ours(two_runs):
    """Invariant: every step's row holds self_distillation/<fraction> equal to <fraction> for the five reprompt
    fractions, and self_distillation/distillation_loss equal to loss_sdpo (the hybrid objective)."""
    for row in _metrics(two_runs["ours"]).values():
        for ours, official in names.OFFICIAL_REPROMPT_METRICS.items():
            assert row[official] == row[ours], official
        assert row["self_distillation/distillation_loss"] == row["loss_sdpo"]
