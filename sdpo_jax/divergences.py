"""The SDPO divergence modes: one small class per mode, and the registry the config's `loss.mode` choices come
from (docs/ALGORITHM.md §2).

A mode owns the per-token divergence D[b, t] in two forms that must agree (tests/test_losses_chunked.py):
- `reference`: from materialised, temperature-scaled logits `[B, T, V]` (`ReferenceInputs`);
- `chunked`: from the train step's vocabulary passes over hidden states (`ChunkedInputs`, `chunked_losses`),
  never materialising `[B, T, V]`;
and says what the chunked student pass must gather (`student_topk`: its top-K, at whose indices the teacher
pass reads the teacher's logits) and which options it refuses (`check`).
- `topk`: D over the student's top-K categories plus the tail bucket (or renormalised within the K);
- `full`: D over the whole vocabulary (chunked: `chunked_losses.full_divergence_pass`);
- `token`: the sampled-token surrogate sg(log s(y) - log q(y)) * log s(y) (alpha = 1 only).

The two entries dispatch on the registry: `token_quantities_from_logits` (the reference, and with
`losses.sdpo_loss_and_sums` the reference entry point `distillation_loss`) and `token_quantities_from_hidden`
(the train step's). A new mode is one subclass of `Divergence` plus one line in `DIVERGENCES`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from sdpo_jax import chunked_losses, defaults, losses


class ReferenceInputs(NamedTuple):
    """What a reference form reads: the student's tempered logits `[B, T, V]` (with gradient) and the
    teacher's (without), their logsumexps `[B, T]`, and both log-probs of the sampled token `[B, T]`."""
    student_z: jax.Array
    teacher_z: jax.Array
    student_lse: jax.Array
    teacher_lse: jax.Array
    ls_y: jax.Array
    lq_y: jax.Array


class ChunkedInputs(NamedTuple):
    """What a chunked form reads, per token `[N]` / `[N, K]`: the results of `chunked_losses.student_vocab_pass`
    (lse, z_y, topk_z, topk_idx, entropy) and `chunked_losses.teacher_vocab_pass` (lse, z_y, z_idx at the
    student's top-K), both log-probs of the sampled token, and for a pass of the form's own the tempered
    hidden states, unembeddings and chunking that those passes used."""
    student: dict[str, jax.Array]
    teacher: dict[str, jax.Array]
    ls_y: jax.Array
    lq_y: jax.Array
    student_h: jax.Array
    student_w: jax.Array
    teacher_h: tuple[jax.Array, ...]
    teacher_w: tuple[jax.Array, ...]
    vocab_chunk: int | None
    seq_chunk: int | None


@dataclasses.dataclass(frozen=True)
class Divergence:
    """A divergence mode with its options (hashable: part of the train step's static settings; names mirror
    loss.topk / loss.add_tail / loss.alpha / loss.adv_clip; a mode ignores those it does not use)."""
    topk: int | None = defaults.TOPK
    add_tail: bool = defaults.ADD_TAIL
    alpha: float = defaults.ALPHA
    adv_clip: float | None = None

    def check(self) -> None:
        """Raise ValueError naming the config field when this mode cannot take its options."""

    @property
    def student_topk(self) -> int:
        """How many of the student's largest logits the chunked student pass gathers per token (0: none)."""
        return 0

    def reference(self, inputs: ReferenceInputs) -> jax.Array:
        """D[b, t] on materialised logits."""
        raise NotImplementedError

    def chunked(self, inputs: ChunkedInputs) -> jax.Array:
        """D[n] from the vocabulary passes; equals `reference` on the same logits."""
        raise NotImplementedError


class TopKDivergence(Divergence):
    def check(self):
        if self.topk is None or self.topk < 1:
            raise ValueError(f"loss.mode='topk' needs loss.topk >= 1, got {self.topk!r} (or use loss.mode='full')")

    @property
    def student_topk(self):
        return self.topk

    def reference(self, inputs):
        k = min(self.topk, inputs.student_z.shape[-1])
        _, idx_btk = jax.lax.top_k(jax.lax.stop_gradient(inputs.student_z), k)
        ls_bc = losses.category_logprobs_topk(jnp.take_along_axis(inputs.student_z, idx_btk, -1), inputs.student_lse,
                                              self.add_tail)
        lq_bc = losses.category_logprobs_topk(jnp.take_along_axis(inputs.teacher_z, idx_btk, -1), inputs.teacher_lse,
                                              self.add_tail)
        return losses.divergence(ls_bc, lq_bc, self.alpha, self.adv_clip)

    def chunked(self, inputs):
        ls_c = losses.category_logprobs_topk(inputs.student["topk_z"], inputs.student["lse"], self.add_tail)
        lq_c = losses.category_logprobs_topk(inputs.teacher["z_idx"], inputs.teacher["lse"], self.add_tail)
        return losses.divergence(ls_c, lq_c, self.alpha, self.adv_clip)


class FullDivergence(Divergence):
    def reference(self, inputs):
        return losses.divergence(inputs.student_z - inputs.student_lse[..., None],
                                 inputs.teacher_z - inputs.teacher_lse[..., None], self.alpha, self.adv_clip)

    def chunked(self, inputs):
        return chunked_losses.full_divergence_pass(
            inputs.student_h, inputs.student_w, inputs.teacher_h, inputs.teacher_w, inputs.student["lse"],
            inputs.teacher["lse"], alpha=self.alpha, adv_clip=self.adv_clip, vocab_chunk=inputs.vocab_chunk,
            seq_chunk=inputs.seq_chunk)


class TokenDivergence(Divergence):
    def check(self):
        if self.alpha != 1.0:
            raise ValueError("loss.mode='token' needs loss.alpha=1.0 (the sampled-token surrogate is reverse KL only)")

    def reference(self, inputs):
        return losses.token_surrogate(inputs.ls_y, inputs.lq_y, self.adv_clip)

    chunked = reference  # both forms read only the sampled token's log-probs


DIVERGENCES: dict[str, type[Divergence]] = {
    "topk": TopKDivergence,
    "full": FullDivergence,
    "token": TokenDivergence,
}


def make(mode: str, *, topk: int | None = defaults.TOPK, add_tail: bool = defaults.ADD_TAIL,
         alpha: float = defaults.ALPHA, adv_clip: float | None = None) -> Divergence:
    """The registered divergence `mode` with its options (ValueError naming loss.mode and the registered modes)."""
    if mode not in DIVERGENCES:
        raise ValueError(f"loss.mode={mode!r} is not one of {tuple(DIVERGENCES)}")
    return DIVERGENCES[mode](topk=topk, add_tail=add_tail, alpha=alpha, adv_clip=adv_clip)


def check_loss_options(*, mode: str, topk: int | None, alpha: float, temperature: float,
                       aggregation: str, adv_clip: float | None) -> None:
    """Raise ValueError naming the bad option by its config name (loss.*, rollout.temperature) and what would
    work: the one check of these options, for the config (`config.validate`) and direct callers alike."""
    divergence = make(mode, topk=topk, alpha=alpha, adv_clip=adv_clip)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"loss.alpha={alpha} must be in [0, 1] (0 forward KL, 1 reverse KL, between: JSD)")
    divergence.check()
    if not temperature > 0:
        raise ValueError(f"rollout.temperature={temperature} must be > 0 for a distillation loss (the rollout "
                         "temperature)")
    if aggregation not in losses.AGGREGATIONS:
        raise ValueError(f"loss.aggregation={aggregation!r} is not one of {losses.AGGREGATIONS}")
    if adv_clip is not None:
        if alpha != 1.0:
            raise ValueError(f"loss.adv_clip={adv_clip} is defined for the reverse KL only (loss.alpha=1.0), "
                             f"got loss.alpha={alpha}")
        if not adv_clip > 0:
            raise ValueError(f"loss.adv_clip={adv_clip} must be > 0 (or None for no clipping)")


# ----------------------------------------------------------------------------- the two entries


def token_quantities_from_logits(student_logits, teacher_logits, completion_ids, *, divergence: Divergence,
                                 temperature: float = 1.0) -> dict[str, jax.Array]:
    """Per-token quantities `[B, T]` on materialised logits `[B, T, V]` (the reference): `d` (the divergence's
    reference form), `ls_y` / `lq_y` (student / teacher log-prob of the sampled token; the teacher without
    gradient), `entropy` (the student's, no gradient); all at `temperature`."""
    zs_btv = student_logits.astype(jnp.float32) / temperature
    zt_btv = jax.lax.stop_gradient(teacher_logits.astype(jnp.float32) / temperature)
    lse_s = jax.nn.logsumexp(zs_btv, axis=-1)
    lse_t = jax.nn.logsumexp(zt_btv, axis=-1)
    y = completion_ids[..., None].astype(jnp.int32)
    ls_y = jnp.take_along_axis(zs_btv, y, axis=-1)[..., 0] - lse_s
    lq_y = jnp.take_along_axis(zt_btv, y, axis=-1)[..., 0] - lse_t
    d_bt = divergence.reference(ReferenceInputs(zs_btv, zt_btv, lse_s, lse_t, ls_y, lq_y))
    ps = jax.nn.softmax(jax.lax.stop_gradient(zs_btv), axis=-1)
    entropy_bt = lse_s - jnp.sum(ps * jax.lax.stop_gradient(zs_btv), axis=-1)
    return {"d": d_bt, "ls_y": ls_y, "lq_y": lq_y, "entropy": entropy_bt}


def token_quantities_from_hidden(h_btd, w_dv, teacher_h, teacher_w, completion_ids, *,
                                 divergence: Divergence | None, temperature: float = 1.0,
                                 vocab_chunk: int | None = defaults.VOCAB_CHUNK,
                                 seq_chunk: int | None = None) -> dict[str, jax.Array]:
    """`token_quantities_from_logits` from hidden states in vocabulary / sequence chunks (the train step's).

    `h_btd` are the student's final-normed hidden states (position t predicts `completion_ids[:, t]`),
    `w_dv` its unembedding; `teacher_h` / `teacher_w` an array or a tuple of arrays whose products are
    summed into the teacher's logits (no gradient). `d` is the divergence's chunked form. With
    `divergence=None` only `ls_y` and `entropy` (the GRPO-only step and old log-probs; no teacher pass).
    `seq_chunk` tokens (of the flattened B*T) per block."""
    b, t, d = h_btd.shape
    inv_t = 1.0 / temperature
    h_nd = h_btd.reshape(b * t, d) * jnp.asarray(inv_t, h_btd.dtype)
    y_n = completion_ids.reshape(b * t).astype(jnp.int32)
    k = 0 if divergence is None else divergence.student_topk
    chunks = dict(vocab_chunk=vocab_chunk, seq_chunk=seq_chunk)
    st = chunked_losses.student_vocab_pass(h_nd, w_dv, y_n, k=k, **chunks)
    out = {"ls_y": st["z_y"] - st["lse"], "entropy": st["entropy"]}
    if divergence is not None:
        t_w = chunked_losses.as_tuple(teacher_w)
        t_h = tuple(x.reshape(b * t, x.shape[-1]) * jnp.asarray(inv_t, x.dtype)
                    for x in chunked_losses.as_tuple(teacher_h))
        te = chunked_losses.teacher_vocab_pass(t_h, t_w, y_n, st["topk_idx"] if k else None, **chunks)
        out["lq_y"] = te["z_y"] - te["lse"]
        out["d"] = divergence.chunked(ChunkedInputs(st, te, out["ls_y"], out["lq_y"], h_nd, w_dv, t_h, t_w,
                                                    **chunks))
    return jax.tree.map(lambda x: x.reshape(b, t), out)


def distillation_loss(student_logits, teacher_logits, completion_ids, mask, *, mode=defaults.LOSS_MODE,
                      topk=defaults.TOPK, add_tail=defaults.ADD_TAIL, alpha=defaults.ALPHA, temperature=1.0,
                      old_logprobs=None, is_clip=None, aggregation=defaults.AGGREGATION, sampler_logprobs=None,
                      rollout_is_clip=None, adv_clip=None, row_weight=None,
                      entropy_mask=None) -> tuple[jax.Array, dict[str, Any]]:
    """SDPO distillation loss on materialised logits `[B, T, V]` at the completion positions (the reference
    entry point; the train step's chunked path must equal it).

    Position t predicts `completion_ids[:, t]`; `mask [B, T]` = completion mask x the per-sequence
    self-distillation mask. `old_logprobs [B, T]` are the behaviour log-probs at the same temperature
    (the IS weight is applied when `is_clip` is set); `sampler_logprobs` + `rollout_is_clip` add the
    rollout TIS weight. `row_weight [B]` (default ones) weights rows, 0 for padding rows.
    `entropy_mask` (default `mask`) selects the tokens of the entropy metric.
    Returns (loss, metrics) with metrics: loss, is_weight_mean, advantage_mean / _std / _pos_frac
    (log q(y) - log s(y) on the sampled token), entropy (of the student at the temperature).
    """
    check_loss_options(mode=mode, topk=topk, alpha=alpha, temperature=temperature,
                       aggregation=aggregation, adv_clip=adv_clip)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student_logits {student_logits.shape} and teacher_logits {teacher_logits.shape} differ")
    if student_logits.shape[:2] != completion_ids.shape or mask.shape != completion_ids.shape:
        raise ValueError(f"logits {student_logits.shape[:2]}, completion_ids {completion_ids.shape} and mask "
                         f"{mask.shape} must agree on [B, T]")
    divergence = make(mode, topk=topk, add_tail=add_tail, alpha=alpha, adv_clip=adv_clip)
    quantities = token_quantities_from_logits(student_logits, teacher_logits, completion_ids,
                                              divergence=divergence, temperature=temperature)
    loss, sums = losses.sdpo_loss_and_sums(quantities, mask, aggregation=aggregation, row_weight=row_weight,
                                           old_logprobs=old_logprobs, is_clip=is_clip,
                                           sampler_logprobs=sampler_logprobs, rollout_is_clip=rollout_is_clip,
                                           entropy_mask_bt=entropy_mask)
    return loss, {"loss": loss, **losses.finalize_metric_sums(sums)}
