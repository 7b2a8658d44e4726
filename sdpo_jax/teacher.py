"""The self-teacher: live / EMA / frozen / trust-region parameters and the teacher's logits (SDPO_SPEC §4).

All teachers use the student's model function and parameter layout (so the same shardings):
- `live`: the very same arrays under `stop_gradient` (no extra memory; diverges in the paper, Table 4);
- `ema` (the paper's default): an fp32 copy initialised from the checkpoint, updated
  theta' <- (1 - rate) theta' + rate theta once per generation batch, after its last optimizer step,
  only when some step of the batch had a finite gradient (`ema_update`, called by the train driver);
- `frozen`: the initial parameters, never updated (EMA with rate 0);
- `trust_region`: logits (1 - mix) z_ref + mix z_live on the teacher sequence, with the frozen initial
  model (z_ref) and the live student (z_live), both without gradient; softmax of that is the normalised
  geometric mixture q_ref^(1 - mix) q_live^mix (paper Eq. 10). Two teacher forwards.

The teacher's logits are returned as `(h_list, w_list)`: the loss computes sum_j h_j @ w_j chunk by
chunk, so the trust-region mix is folded into the hidden states and no `[B, T, V]` exists.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sdpo_jax import models

TEACHER_KINDS = ("ema", "trust_region", "frozen", "live")


def check_kind(kind: str) -> None:
    if kind not in TEACHER_KINDS:
        raise ValueError(f"teacher.kind={kind!r} is not one of {TEACHER_KINDS}")


def init_teacher_params(kind: str, params):
    """The teacher's own parameter tree: an fp32 copy (`ema`), a copy of the initial parameters
    (`frozen`, `trust_region`: the reference model), or None (`live` shares the student's arrays)."""
    check_kind(kind)
    if kind == "live":
        return None
    if kind == "ema":
        return jax.tree.map(lambda x: jnp.array(x, dtype=jnp.float32, copy=True), params)
    return jax.tree.map(lambda x: jnp.array(x, copy=True), params)


def ema_update(teacher_params, params, rate: float):
    """theta' <- (1 - rate) theta' + rate theta, leaf by leaf, in fp32 (the teacher's dtype)."""
    return jax.tree.map(lambda t, s: ((1.0 - rate) * t + rate * s.astype(jnp.float32)).astype(t.dtype),
                        teacher_params, params)


def _hidden(model_cfg, params, ids, mask):
    return models.hidden_states(model_cfg, jax.lax.stop_gradient(params), ids, mask)


def teacher_hidden_terms(model_cfg, kind: str, params, teacher_params, ids_bl, mask_bl, *,
                         mix: float = 0.05, positions: slice | None = None):
    """(h_list, w_list) with teacher logits = sum_j h_j @ w_j, no gradient.

    `ids_bl` / `mask_bl` are the teacher rows [teacher prompt | completion]; `positions` (a slice)
    keeps only the hidden states at the completion positions."""
    check_kind(kind)
    take = (lambda h: h) if positions is None else (lambda h: h[:, positions])
    w = lambda p: jax.lax.stop_gradient(models.unembedding(model_cfg, p))
    if kind == "live":
        return (take(_hidden(model_cfg, params, ids_bl, mask_bl)),), (w(params),)
    if teacher_params is None:
        raise ValueError(f"teacher.kind={kind!r} needs teacher parameters (init_teacher_params), got None")
    h_t = take(_hidden(model_cfg, teacher_params, ids_bl, mask_bl))
    if kind in ("ema", "frozen"):
        return (h_t,), (w(teacher_params),)
    h_live = take(_hidden(model_cfg, params, ids_bl, mask_bl))
    return ((1.0 - mix) * h_t, mix * h_live), (w(teacher_params), w(params))


def teacher_logits(model_cfg, kind: str, params, teacher_params, ids_bl, mask_bl, *, mix: float = 0.05):
    """Materialised teacher logits [B, L, V] (fp32, no gradient): the reference for tests and small runs."""
    h_list, w_list = teacher_hidden_terms(model_cfg, kind, params, teacher_params, ids_bl, mask_bl, mix=mix)
    return sum(jnp.einsum("bld,dv->blv", h, wt.astype(h.dtype), preferred_element_type=jnp.float32)
               for h, wt in zip(h_list, w_list))
