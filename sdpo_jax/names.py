"""The names TRL's `SDPOConfig` and the official SDPO code (lasgroup/SDPO, `actor.self_distillation.*`) give our
settings and metrics (README "Names from TRL and the official code"; docs/ALGORITHM.md §8, §10, §11).

Config aliases are flat top-level keys, as in TRL's `SDPOConfig` (`--config.distillation_topk=20`); unset (None)
by default. `config.validate` resolves them on plain values (this module never sees the config object): an alias
converts into our field(s) when its meaning is the same or converts exactly, else it is refused with one line
saying what differs and which field to use. A name and its alias both set: an error naming both, unless they
agree; our field at its schema default counts as unset (so a config file that sets it conflicts with the alias).
After resolution the aliases are None again and only our fields carry the values.

Metrics: the reprompt fractions are also logged under the official `self_distillation/...` names, and the SDPO
term's loss under TRL's `self_distillation/distillation_loss`, next to our names (same values).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable


class AliasError(ValueError):
    """An alias is refused or conflicts with our field; the message names both and what to set."""


@dataclass(frozen=True)
class Alias:
    """One foreign name: where it comes from, its type, and how it becomes our fields."""
    name: str
    source: str  # "TRL", "official" or "TRL, official"
    kind: type  # its value's type (int aliases take int only; float aliases take int or float)
    convert: Callable[[Any, dict[str, Any]], dict[str, Any]]  # (value, our fields) -> {our field: value}


def _same(field: str) -> Callable[[Any, dict[str, Any]], dict[str, Any]]:
    return lambda value, fields: {field: value}


def _refuse(message: str) -> Callable[[Any, dict[str, Any]], dict[str, Any]]:
    def convert(value, fields):
        raise AliasError(message)
    return convert


def _distillation_topk(value, fields):
    if fields["loss.mode"] != "topk":
        raise AliasError(f"distillation_topk={value} is the top-K of the student's logits, loss.topk here, which only "
                         f"loss.mode='topk' uses (got loss.mode={fields['loss.mode']!r}); set loss.mode='topk'")
    return {"loss.topk": value}


def _optimizer_steps_per_batch(fields) -> int:
    mini = fields["optim.minibatch_prompts"] or fields["data.prompts_per_step"]
    return max(fields["data.prompts_per_step"] // mini, 1)


def _teacher_update_rate(value, fields):
    kind = fields["teacher.kind"]
    if kind == "trust_region":  # the official trust-region mixing coefficient (TRL has no trust region)
        return {"teacher.trust_region_mix": value}
    if kind != "ema":
        raise AliasError(f"teacher_update_rate={value}: teacher.kind={kind!r} has no update rate; it is "
                         "teacher.ema_rate for teacher.kind='ema', teacher.trust_region_mix for 'trust_region'")
    steps = _optimizer_steps_per_batch(fields)
    if steps > 1:
        raise AliasError(
            f"teacher_update_rate={value}: with {steps} optimizer steps per generation batch (optim.minibatch_prompts="
            f"{fields['optim.minibatch_prompts']} of data.prompts_per_step={fields['data.prompts_per_step']}) the "
            "official code moves the EMA once per generation batch, as teacher.ema_rate does, but TRL moves it every "
            "optimizer step; set teacher.ema_rate (once per generation batch)")
    return {"teacher.ema_rate": value}


def _distillation_weight(value, fields):
    if fields["loss.objective"] != "hybrid" or not fields["loss.norm_adv_by_std"]:
        raise AliasError(
            f"distillation_weight={value}: TRL's loss is (1 - w) x PPO loss on std-normalised advantages + w x "
            "distillation loss, here loss.objective='hybrid' with loss.norm_adv_by_std=True and loss.hybrid_lambda = "
            f"1 - w (got loss.objective={fields['loss.objective']!r}, loss.norm_adv_by_std="
            f"{fields['loss.norm_adv_by_std']}); set those, or loss.hybrid_lambda directly")
    if not 0.0 <= value <= 1.0:
        raise AliasError(f"distillation_weight={value} must be in [0, 1] (loss.hybrid_lambda = 1 - distillation_weight)")
    return {"loss.hybrid_lambda": 1.0 - value}


ALIASES: tuple[Alias, ...] = (
    Alias("distillation_topk", "TRL, official", int, _distillation_topk),
    Alias("distillation_alpha", "TRL", float, _same("loss.alpha")),
    Alias("distillation_add_tail", "TRL, official", bool, _same("loss.add_tail")),
    Alias("teacher_update_rate", "TRL, official", float, _teacher_update_rate),
    Alias("success_reward_threshold", "TRL, official", float, _same("reprompt.success_threshold")),
    Alias("include_environment_feedback", "TRL, official", bool, _same("reprompt.include_feedback")),
    Alias("environment_feedback_only_without_solution", "TRL, official", bool,
          _same("reprompt.feedback_only_without_solution")),
    Alias("remove_thinking_from_demonstration", "TRL, official", bool, _same("reprompt.remove_thinking")),
    Alias("dont_reprompt_on_self_success", "TRL, official", bool, _same("reprompt.dont_reprompt_on_self_success")),
    Alias("distillation_weight", "TRL", float, _distillation_weight),
    Alias("max_reprompt_len", "TRL, official", int, _refuse(
        "max_reprompt_len: reprompt.max_len bounds the teacher prompt here by shortening the demonstration / feedback "
        "text (never the question or the assistant header); the official code cuts the prompt's end, TRL keeps its "
        "last tokens; set reprompt.max_len")),
    Alias("ema_update_rate", "official", float, _refuse(
        "ema_update_rate is the official scripts' stale key (Hydra rejects it; lasgroup/SDPO PR #21 renamed it "
        "teacher_update_rate); set teacher.ema_rate (the EMA rate, moved once per generation batch)")),
)
ALIAS_NAMES = tuple(a.name for a in ALIASES)


def _agree(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b, rel_tol=1e-12)
    return a == b


def resolve(set_aliases: dict[str, Any], fields: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """Our fields' new values {dotted name: value} for the aliases set (`set_aliases`, name -> value, none None),
    given the config's current `fields` and the schema's `defaults` (both {dotted name: value}). Raises AliasError
    for a refused alias, or when an alias and our field are both set (ours differs from its default) and disagree."""
    by_name = {a.name: a for a in ALIASES}
    updates: dict[str, Any] = {}
    for name, value in set_aliases.items():
        for field, new in by_name[name].convert(value, fields).items():
            current = fields[field]
            if not _agree(current, defaults[field]) and not _agree(current, new):
                raise AliasError(f"{name}={value} and {field}={current!r} are both set and disagree ({name} means "
                                 f"{field}={new!r}); set only one")
            if field in updates and not _agree(updates[field], new):
                raise AliasError(f"{name}={value} gives {field}={new!r}, another alias {updates[field]!r}; set only one")
            updates[field] = new
    return updates


# Our reprompt metric -> the official name (ray_trainer.py `_build_self_distillation_batch`, the same fractions).
OFFICIAL_REPROMPT_METRICS = {k: f"self_distillation/{k}" for k in (
    "success_group_fraction", "success_sample_fraction", "feedback_available_fraction", "feedback_used_fraction",
    "reprompt_sample_fraction")}
DISTILLATION_LOSS = "self_distillation/distillation_loss"  # TRL's name for the SDPO term's loss


def official_metrics(metrics: dict[str, float], objective: str) -> dict[str, float]:
    """The `self_distillation/...` copies of `metrics`' values: the reprompt fractions present, and the SDPO
    term's loss (`loss_sdpo` under the hybrid objective, `loss` under sdpo; none under grpo)."""
    out = {official: metrics[ours] for ours, official in OFFICIAL_REPROMPT_METRICS.items() if ours in metrics}
    source = "loss_sdpo" if objective == "hybrid" else "loss" if objective == "sdpo" else None
    if source in metrics:
        out[DISTILLATION_LOSS] = metrics[source]
    return out
