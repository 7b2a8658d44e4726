"""The RolloutBatch contract: what the train step consumes, built from a `rollout.Rollout`, validated once,
split into placed mini-batches of whole groups.

    batch, metrics, teacher_prompts = build(rollout, tokenizer, shapes)
    minibatches = split_minibatches(batch, minibatch_groups=..., micro_batches=..., mesh=mesh)

Rows are N = prompts x n, in group order. Prompts and teacher prompts are left-padded to a bucket,
completions right-padded to a bucket (`BatchSettings`); `build` returns a batch of fixed dtypes whose shapes
are checked (`check`), and nothing downstream re-validates it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np

from sdpo_jax import reprompt, sampling, sharding
from sdpo_jax.losses import compute_grpo_advantages


class RolloutBatch(NamedTuple):
    """What the train step consumes (N = prompts x n rows; docs/ARCHITECTURE.md "RolloutBatch").

    prompt_ids / prompt_mask [N, P] left-padded; completion_ids / completion_mask [N, C] right-padded;
    teacher_prompt_ids / teacher_prompt_mask [N, P_T] left-padded; sd_mask [N] (1 = has teacher context);
    old_logprobs [N, C]: log pi_old(y_t) (zeros until `train_step.update_on_generation_batch` fills them with the
    current policy's, or the step takes its own when the batch is on-policy); sampler_logprobs [N, C] (the
    sampler's, for rollout TIS); rewards [N]; group_ids [N]; advantages [N] (GRPO); row_weight [N] (0 marks
    padding rows that must not count anywhere)."""
    prompt_ids: Any
    prompt_mask: Any
    completion_ids: Any
    completion_mask: Any
    teacher_prompt_ids: Any
    teacher_prompt_mask: Any
    sd_mask: Any
    old_logprobs: Any
    sampler_logprobs: Any
    rewards: Any
    group_ids: Any
    advantages: Any
    row_weight: Any = None


FIELD_DTYPES = dict(prompt_ids=np.int32, prompt_mask=np.int32, completion_ids=np.int32, completion_mask=np.int32,
                    teacher_prompt_ids=np.int32, teacher_prompt_mask=np.int32, sd_mask=np.float32,
                    old_logprobs=np.float32, sampler_logprobs=np.float32, rewards=np.float32, group_ids=np.int32,
                    advantages=np.float32, row_weight=np.float32)
_PER_ROW_FIELDS = ("sd_mask", "rewards", "group_ids", "advantages", "row_weight")  # [N]; the others are [N, L]
FIELD_NDIM = {f: 1 if f in _PER_ROW_FIELDS else 2 for f in FIELD_DTYPES}


@dataclasses.dataclass(frozen=True)
class BatchSettings:
    """How a Rollout becomes a batch: the bucket widths of its three sequences, the reprompt settings and the
    GRPO advantage's normalisation (config rollout.*_buckets, reprompt.*, loss.norm_adv_by_std)."""
    prompt_buckets: tuple[int, ...]
    completion_buckets: tuple[int, ...]
    teacher_prompt_buckets: tuple[int, ...]
    reprompt: reprompt.RepromptSettings
    norm_adv_by_std: bool


def check(batch: RolloutBatch) -> RolloutBatch:
    """Fixed dtypes (one compile per shape), row_weight filled with ones, shapes checked (ValueError
    naming the field)."""
    if batch.row_weight is None:
        batch = batch._replace(row_weight=np.ones(np.shape(batch.rewards)[0], np.float32))
    fields = {}
    for name, dtype in FIELD_DTYPES.items():
        x = getattr(batch, name)
        if x is None:
            raise ValueError(f"RolloutBatch.{name} is None; every field is required (row_weight may be None)")
        fields[name] = x.astype(dtype) if getattr(x, "dtype", None) != dtype else x
    out = RolloutBatch(**fields)
    n = out.rewards.shape[0]
    c = out.completion_ids.shape
    expect = dict(prompt_mask=out.prompt_ids.shape, completion_mask=c, old_logprobs=c, sampler_logprobs=c,
                  teacher_prompt_mask=out.teacher_prompt_ids.shape, sd_mask=(n,), group_ids=(n,), advantages=(n,),
                  row_weight=(n,))
    for name, shape in expect.items():
        if tuple(getattr(out, name).shape) != tuple(shape):
            raise ValueError(f"RolloutBatch.{name} has shape {tuple(getattr(out, name).shape)}, expected {tuple(shape)}")
    for name in ("prompt_ids", "completion_ids", "teacher_prompt_ids"):
        x = getattr(out, name)
        if x.ndim != 2 or x.shape[0] != n or x.shape[1] < 1:
            raise ValueError(f"RolloutBatch.{name} has shape {tuple(x.shape)}, expected [N={n}, >= 1]")
    return out


def build(rollout, tokenizer, settings: BatchSettings) -> tuple[RolloutBatch, dict, reprompt.TeacherPrompts]:
    """(checked host-side RolloutBatch, its reprompt metrics, the unpadded teacher prompts) from a
    `rollout.Rollout`: prompts / teacher prompts left-padded to buckets, completions trimmed to the
    smallest completion bucket that holds the longest. The same global batch on every process."""
    pad = tokenizer.pad_token_id
    teacher = reprompt.build_teacher_prompts(
        tokenizer, rollout.messages, rollout.texts, rollout.rewards, rollout.feedbacks, list(rollout.group_ids),
        **dataclasses.asdict(settings.reprompt))
    prompt_ids, prompt_mask = sampling.pad_to_bucket(rollout.prompt_ids, settings.prompt_buckets, pad, side="left")
    teacher_ids, teacher_mask = sampling.pad_to_bucket(teacher.ids, settings.teacher_prompt_buckets, pad, side="left")
    lengths = rollout.lengths
    width = sampling.pick_bucket(max(int(lengths.max()), 1), settings.completion_buckets)
    tokens = np.full((len(lengths), width), pad, np.int32)
    take = min(width, rollout.tokens.shape[1])
    tokens[:, :take] = rollout.tokens[:, :take]
    completion_mask = (np.arange(width)[None, :] < lengths[:, None]).astype(np.int32)
    sampler_logprobs = np.zeros((len(lengths), width), np.float32)
    sampler_logprobs[:, :take] = rollout.logprobs[:, :take]
    advantages = np.asarray(compute_grpo_advantages(rollout.rewards, rollout.group_ids,
                                                    norm_by_std=settings.norm_adv_by_std), np.float32)
    batch = RolloutBatch(
        prompt_ids=prompt_ids, prompt_mask=prompt_mask, completion_ids=tokens, completion_mask=completion_mask,
        teacher_prompt_ids=teacher_ids, teacher_prompt_mask=teacher_mask, sd_mask=teacher.sd_mask,
        old_logprobs=np.zeros_like(sampler_logprobs), sampler_logprobs=sampler_logprobs, rewards=rollout.rewards,
        group_ids=rollout.group_ids, advantages=advantages)
    return check(batch), {**teacher.metrics, "reprompt_trimmed": teacher.num_trimmed}, teacher


# ----------------------------------------------------------------------------- mini-batches


def data_parallel_size(mesh) -> int:
    return 1 if mesh is None else int(mesh.shape["data"] * mesh.shape["fsdp"])


@functools.lru_cache(maxsize=8)
def shardings(mesh) -> RolloutBatch:
    """Rows over ('data', 'fsdp'), the rest replicated, for every field (made once per mesh)."""
    return RolloutBatch(*[sharding.batch_sharding(mesh, FIELD_NDIM[f]) for f in RolloutBatch._fields])


def put(batch: RolloutBatch, mesh) -> RolloutBatch:
    """Host rows onto the mesh, rows over ('data', 'fsdp'); on several processes every process holds the
    whole batch and feeds its own devices' rows. mesh=None: device arrays on the default device."""
    if mesh is None:
        return RolloutBatch(*[jnp.asarray(x) for x in batch])
    return sharding.tree_from_host(RolloutBatch(*[np.asarray(x) for x in batch]), shardings(mesh))


def minibatch_row_indices(group_ids, groups_per_minibatch: int, multiple: int) -> np.ndarray:
    """[n_minibatches, R] row indices: whole groups in order of first appearance, `groups_per_minibatch`
    (0 = all) per mini-batch, each padded with -1 to the same R, a multiple of `multiple`."""
    group_ids = np.asarray(group_ids)
    _, first = np.unique(group_ids, return_index=True)
    order = group_ids[np.sort(first)]
    per = groups_per_minibatch or len(order)
    chunks = [np.concatenate([np.flatnonzero(group_ids == g) for g in order[i:i + per]])
              for i in range(0, len(order), per)]
    width = math.ceil(max(len(c) for c in chunks) / multiple) * multiple
    out = np.full((len(chunks), width), -1, np.int64)
    for i, c in enumerate(chunks):
        out[i, :len(c)] = c
    return out


def _take_rows(batch: RolloutBatch, idx: np.ndarray) -> RolloutBatch:
    rows = np.maximum(idx, 0)
    taken = RolloutBatch(*[np.asarray(x)[rows] for x in batch])
    return taken._replace(row_weight=taken.row_weight * (idx >= 0).astype(np.float32))


def split_minibatches(batch: RolloutBatch, *, minibatch_groups: int, micro_batches: int, mesh=None) -> list[RolloutBatch]:
    """The checked generation batch as placed mini-batches of whole groups (`minibatch_groups` each, 0 =
    all, in order of first appearance), padded with zero-weight rows to a multiple of data-parallel size x
    micro_batches. On several processes every process passes the same global batch, so a mini-batch's
    groups may sit on any devices: the split is the one-process split, whatever the process count."""
    multiple = max(1, data_parallel_size(mesh) * micro_batches)
    index = minibatch_row_indices(batch.group_ids, minibatch_groups, multiple)
    return [put(_take_rows(batch, idx), mesh) for idx in index]
