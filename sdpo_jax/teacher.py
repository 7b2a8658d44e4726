"""The self-teacher: one small class per kind, and the registry the config's `teacher.kind` choices come from
(docs/ALGORITHM.md §4).

Every teacher uses the student's model function and parameter layout (so the same shardings). A kind owns
its parameters (`init_params`), its forward context (`hidden_terms`: the teacher's logits as a sum of
hidden-state x unembedding terms, no gradient) and its update once per generation batch (`update`):
- `live`: the very same arrays under `stop_gradient` (no extra memory; diverges in the paper, Table 4);
- `ema` (the paper's default): an fp32 copy initialised from the checkpoint, updated
  theta' <- (1 - rate) theta' + rate theta once per generation batch, after its last optimizer step,
  only when some step of the batch had a finite gradient;
- `frozen`: the initial parameters, never updated (EMA with rate 0);
- `trust_region`: logits (1 - mix) z_ref + mix z_live on the teacher sequence, with the frozen initial
  model (z_ref) and the live student (z_live), both without gradient; softmax of that is the normalised
  geometric mixture q_ref^(1 - mix) q_live^mix (paper Eq. 10). Two teacher forwards.

The teacher's logits are returned as `(h_list, w_list)`: the loss computes sum_j h_j @ w_j chunk by
chunk, so the trust-region mix is folded into the hidden states and no `[B, T, V]` exists.

A new teacher is one subclass of `Teacher` plus one line in `TEACHERS`.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from sdpo_jax import defaults, models


def _hidden(model_cfg, params, ids, mask, positions):
    h = models.hidden_states(model_cfg, jax.lax.stop_gradient(params), ids, mask)
    return h if positions is None else h[:, positions]


def _unembedding(model_cfg, params):
    return jax.lax.stop_gradient(models.unembedding(model_cfg, params))


@dataclasses.dataclass(frozen=True)
class Teacher:
    """A teacher kind (hashable: part of the train step's static settings). `rate` / `mix` are the kinds'
    knobs (config teacher.ema_rate / teacher.trust_region_mix); a kind ignores those it does not use."""
    rate: float = defaults.EMA_RATE
    mix: float = defaults.TRUST_REGION_MIX
    owns_params: ClassVar[bool] = True  # False: no parameters of its own (reads the student's)
    updates: ClassVar[bool] = False  # True: `update` runs once per generation batch

    def init_params(self, params):
        """The teacher's own parameter tree from the initial student parameters (None: none of its own)."""
        return jax.tree.map(lambda x: jnp.array(x, copy=True), params)

    def hidden_terms(self, model_cfg, params, teacher_params, ids_bl, mask_bl, positions=None):
        """(h_list, w_list) with teacher logits = sum_j h_j @ w_j, no gradient, on the teacher rows
        [teacher prompt | completion]; `positions` (a slice) keeps only those hidden states."""
        return (_hidden(model_cfg, teacher_params, ids_bl, mask_bl, positions),), (_unembedding(model_cfg, teacher_params),)

    def update(self, teacher_params, params):
        """The teacher's parameters after a generation batch whose student ended at `params`."""
        return teacher_params


class LiveTeacher(Teacher):
    owns_params = False

    def init_params(self, params):
        return None

    def hidden_terms(self, model_cfg, params, teacher_params, ids_bl, mask_bl, positions=None):
        return (_hidden(model_cfg, params, ids_bl, mask_bl, positions),), (_unembedding(model_cfg, params),)


class EmaTeacher(Teacher):
    updates = True

    def init_params(self, params):
        return jax.tree.map(lambda x: jnp.array(x, dtype=jnp.float32, copy=True), params)

    def update(self, teacher_params, params):
        return ema_update(teacher_params, params, self.rate)


class FrozenTeacher(Teacher):
    pass


class TrustRegionTeacher(Teacher):
    def hidden_terms(self, model_cfg, params, teacher_params, ids_bl, mask_bl, positions=None):
        h_ref = _hidden(model_cfg, teacher_params, ids_bl, mask_bl, positions)
        h_live = _hidden(model_cfg, params, ids_bl, mask_bl, positions)
        return ((1.0 - self.mix) * h_ref, self.mix * h_live), (_unembedding(model_cfg, teacher_params),
                                                               _unembedding(model_cfg, params))


TEACHERS: dict[str, type[Teacher]] = {
    "ema": EmaTeacher,
    "trust_region": TrustRegionTeacher,
    "frozen": FrozenTeacher,
    "live": LiveTeacher,
}


def make(kind: str, *, rate: float = defaults.EMA_RATE, mix: float = defaults.TRUST_REGION_MIX) -> Teacher:
    """The registered teacher `kind` (ValueError naming teacher.kind and the registered kinds)."""
    if kind not in TEACHERS:
        raise ValueError(f"teacher.kind={kind!r} is not one of {tuple(TEACHERS)}")
    return TEACHERS[kind](rate=rate, mix=mix)


def ema_update(teacher_params, params, rate: float):
    """theta' <- (1 - rate) theta' + rate theta, leaf by leaf, in fp32 (the teacher's dtype)."""
    return jax.tree.map(lambda t, s: ((1.0 - rate) * t + rate * s.astype(jnp.float32)).astype(t.dtype),
                        teacher_params, params)


def teacher_logits(model_cfg, kind: str, params, teacher_params, ids_bl, mask_bl, *,
                   mix: float = defaults.TRUST_REGION_MIX):
    """Materialised teacher logits [B, L, V] (fp32, no gradient): the reference for tests and small runs."""
    h_list, w_list = make(kind, mix=mix).hidden_terms(model_cfg, params, teacher_params, ids_bl, mask_bl)
    return sum(jnp.einsum("bld,dv->blv", h, wt.astype(h.dtype), preferred_element_type=jnp.float32)
               for h, wt in zip(h_list, w_list))
