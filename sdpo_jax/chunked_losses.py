"""The memory-efficient SDPO loss: from hidden states and the unembedding, in vocabulary chunks.

Never materialises `[B, T, V]`: logits exist one `[N, vocab_chunk]` block at a time (N = tokens of a
sequence chunk), inside `lax.scan`s whose bodies are rematerialised (`jax.checkpoint`) so that the
backward pass recomputes each block instead of storing it. Per token it keeps only `[N]` running
statistics (online logsumexp, sampled-token logit, entropy) and the running top-K `[N, K]`.

Passes, all over the same vocabulary chunks:
1. student (differentiable): online logsumexp, sampled-token logit, running top-K merge (values
   carry the gradient, indices none), entropy (metric, no gradient);
2. teacher (no gradient): logsumexp, sampled-token logit, logits at the student's top-K indices;
3. `full` mode only: the divergence summed over the whole vocabulary chunk by chunk, given both
   logsumexps (the student's differentiable).
The teacher's logits may be a sum of several `h @ w` terms (the trust-region mix of the frozen and the
live model; scale each `h` by its mix weight beforehand).

The last chunk is read at offset V - chunk (so no padded copy of W is made) and its columns already
seen in the previous chunk are masked out.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from sdpo_jax import losses

_NEG_INF = -jnp.inf


def _as_tuple(x) -> tuple:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def vocab_chunking(vocab: int, vocab_chunk: int | None) -> tuple[int, int]:
    """(chunk width, number of chunks) for a vocabulary of `vocab` columns."""
    chunk = vocab if not vocab_chunk else min(int(vocab_chunk), vocab)
    return chunk, -(-vocab // chunk)


def _chunk_logits(h_list: Sequence[jax.Array], w_list: Sequence[jax.Array], start, chunk: int) -> jax.Array:
    """sum_j h_j @ w_j[:, start:start+chunk] in fp32 ([N, chunk])."""
    z = None
    for h_nd, w_dv in zip(h_list, w_list):
        w_dc = jax.lax.dynamic_slice_in_dim(w_dv, start, chunk, axis=1).astype(h_nd.dtype)
        part = jnp.dot(h_nd, w_dc, preferred_element_type=jnp.float32)
        z = part if z is None else z + part
    return z


def _chunk_window(i, chunk: int, vocab: int):
    """(start of the slice read, first column that is new in chunk i, validity mask [chunk])."""
    lo = i * chunk
    start = jnp.minimum(lo, vocab - chunk)
    valid_c = (start + jnp.arange(chunk)) >= lo
    return start, lo, valid_c


def _gather_in_chunk(z_nc, idx, start, lo, chunk: int):
    """z at global column `idx` (any shape [N, ...]) where it falls in this chunk's new columns."""
    local = jnp.clip(idx - start, 0, chunk - 1)
    flat = local.reshape(local.shape[0], -1)
    vals = jnp.take_along_axis(z_nc, flat, axis=1).reshape(idx.shape)
    inside = (idx >= lo) & (idx < start + chunk)
    return vals, inside


def student_vocab_pass(h_nd, w_dv, y_n, *, k: int, vocab_chunk: int | None):
    """Student statistics over the vocabulary: dict(lse [N], z_y [N], topk_z [N, K], topk_idx [N, K],
    entropy [N]). Differentiable in h and w through lse, z_y and topk_z; logits are h @ w (temper h)."""
    vocab = w_dv.shape[1]
    n = h_nd.shape[0]
    chunk, n_chunks = vocab_chunking(vocab, vocab_chunk)
    k = min(k, vocab)
    k_chunk = min(k, chunk)

    def body(carry, i):
        m, l, ent, zy, top_z, top_i = carry
        start, lo, valid_c = _chunk_window(i, chunk, vocab)
        z = _chunk_logits((h_nd,), (w_dv,), start, chunk)
        z_masked = jnp.where(valid_c[None, :], z, _NEG_INF)
        m_new = jnp.maximum(m, jax.lax.stop_gradient(jnp.max(z_masked, axis=1)))
        scale = jnp.exp(m - m_new)
        e = jnp.exp(z_masked - m_new[:, None])
        l = l * scale + jnp.sum(e, axis=1)
        z_sg = jax.lax.stop_gradient(jnp.where(valid_c[None, :], z, 0.0))
        ent = ent * scale + jnp.sum(jax.lax.stop_gradient(e) * z_sg, axis=1)
        val, inside = _gather_in_chunk(z, y_n, start, lo, chunk)
        zy = jnp.where(inside, val, zy)
        if k:
            # Select without gradient, then gather: the saved positions are all the backward pass needs.
            cand_i = checkpoint_name(jax.lax.top_k(jax.lax.stop_gradient(z_masked), k_chunk)[1], "topk_chunk_idx")
            cand_z = jnp.take_along_axis(z_masked, cand_i, axis=1)
            all_z = jnp.concatenate([top_z, cand_z], axis=1)
            all_i = jnp.concatenate([top_i, cand_i + start], axis=1)
            pos = checkpoint_name(jax.lax.top_k(jax.lax.stop_gradient(all_z), k)[1], "topk_merge_pos")
            top_z = jnp.take_along_axis(all_z, pos, axis=1)
            top_i = jnp.take_along_axis(all_i, pos, axis=1)
        return (m_new, l, ent, zy, top_z, top_i), None

    init = (jnp.full((n,), _NEG_INF, jnp.float32), jnp.zeros((n,), jnp.float32), jnp.zeros((n,), jnp.float32),
            jnp.zeros((n,), jnp.float32), jnp.full((n, k), _NEG_INF, jnp.float32), jnp.zeros((n, k), jnp.int32))
    # Remat the chunk's logits, but keep the top-K positions (small) so the backward pass does not
    # redo the top-K selections.
    policy = jax.checkpoint_policies.save_only_these_names("topk_chunk_idx", "topk_merge_pos")
    body = jax.checkpoint(body, prevent_cse=False, policy=policy)
    (m, l, ent, zy, top_z, top_i), _ = jax.lax.scan(body, init, jnp.arange(n_chunks))
    lse = m + jnp.log(l)
    entropy = jax.lax.stop_gradient(lse - ent / l)
    return {"lse": lse, "z_y": zy, "topk_z": top_z, "topk_idx": jax.lax.stop_gradient(top_i), "entropy": entropy}


def teacher_vocab_pass(h_list, w_list, y_n, idx_nk=None, *, vocab_chunk: int | None):
    """Teacher statistics, no gradient: dict(lse [N], z_y [N], z_idx [N, K] at the given indices)."""
    h_list = tuple(jax.lax.stop_gradient(h) for h in _as_tuple(h_list))
    w_list = tuple(jax.lax.stop_gradient(w) for w in _as_tuple(w_list))
    vocab = w_list[0].shape[1]
    n = h_list[0].shape[0]
    chunk, n_chunks = vocab_chunking(vocab, vocab_chunk)
    k = 0 if idx_nk is None else idx_nk.shape[1]

    def body(carry, i):
        m, l, zy, z_idx = carry
        start, lo, valid_c = _chunk_window(i, chunk, vocab)
        z = _chunk_logits(h_list, w_list, start, chunk)
        z_masked = jnp.where(valid_c[None, :], z, _NEG_INF)
        m_new = jnp.maximum(m, jnp.max(z_masked, axis=1))
        l = l * jnp.exp(m - m_new) + jnp.sum(jnp.exp(z_masked - m_new[:, None]), axis=1)
        val, inside = _gather_in_chunk(z, y_n, start, lo, chunk)
        zy = jnp.where(inside, val, zy)
        if k:
            val, inside = _gather_in_chunk(z, idx_nk, start, lo, chunk)
            z_idx = jnp.where(inside, val, z_idx)
        return (m_new, l, zy, z_idx), None

    init = (jnp.full((n,), _NEG_INF, jnp.float32), jnp.zeros((n,), jnp.float32), jnp.zeros((n,), jnp.float32),
            jnp.zeros((n, k), jnp.float32))
    (m, l, zy, z_idx), _ = jax.lax.scan(body, init, jnp.arange(n_chunks))
    return jax.lax.stop_gradient({"lse": m + jnp.log(l), "z_y": zy, "z_idx": z_idx})


def full_divergence_pass(h_nd, w_dv, t_h_list, t_w_list, lse_s, lse_t, *, alpha: float,
                         adv_clip: float | None, vocab_chunk: int | None):
    """sum over the whole vocabulary of D(s || q) per token ([N]); differentiable in h, w and lse_s."""
    t_h_list = tuple(jax.lax.stop_gradient(h) for h in _as_tuple(t_h_list))
    t_w_list = tuple(jax.lax.stop_gradient(w) for w in _as_tuple(t_w_list))
    lse_t = jax.lax.stop_gradient(lse_t)
    vocab = w_dv.shape[1]
    chunk, n_chunks = vocab_chunking(vocab, vocab_chunk)

    def body(acc, i):
        start, _, valid_c = _chunk_window(i, chunk, vocab)
        ls = _chunk_logits((h_nd,), (w_dv,), start, chunk) - lse_s[:, None]
        lq = _chunk_logits(t_h_list, t_w_list, start, chunk) - lse_t[:, None]
        terms = losses.divergence_terms(ls, lq, alpha, adv_clip)
        return acc + jnp.sum(jnp.where(valid_c[None, :], terms, 0.0), axis=1), None

    body = jax.checkpoint(body, prevent_cse=False)
    acc, _ = jax.lax.scan(body, jnp.zeros(h_nd.shape[0], jnp.float32), jnp.arange(n_chunks))
    return acc


def _token_quantities_flat(h_nd, w_dv, t_h_list, t_w_list, y_n, *, mode, topk, add_tail, alpha, adv_clip,
                           vocab_chunk, need_teacher=True):
    k = topk if mode == "topk" else 0
    st = student_vocab_pass(h_nd, w_dv, y_n, k=k, vocab_chunk=vocab_chunk)
    out = {"ls_y": st["z_y"] - st["lse"], "entropy": st["entropy"]}
    if not need_teacher:
        return out
    te = teacher_vocab_pass(t_h_list, t_w_list, y_n, st["topk_idx"] if k else None, vocab_chunk=vocab_chunk)
    out["lq_y"] = te["z_y"] - te["lse"]
    if mode == "topk":
        ls_c = losses.category_logprobs_topk(st["topk_z"], st["lse"], add_tail)
        lq_c = losses.category_logprobs_topk(te["z_idx"], te["lse"], add_tail)
        out["d"] = losses.divergence(ls_c, lq_c, alpha, adv_clip)
    elif mode == "full":
        out["d"] = full_divergence_pass(h_nd, w_dv, t_h_list, t_w_list, st["lse"], te["lse"], alpha=alpha,
                                        adv_clip=adv_clip, vocab_chunk=vocab_chunk)
    else:
        out["d"] = losses.token_surrogate(out["ls_y"], out["lq_y"], adv_clip)
    return out


def token_quantities(h_btd, w_dv, teacher_h, teacher_w, completion_ids, *, mode="topk", topk=100,
                     add_tail=True, alpha=0.5, temperature=1.0, adv_clip=None, vocab_chunk=8192,
                     seq_chunk=None, need_teacher=True) -> dict[str, jax.Array]:
    """Per-token quantities `[B, T]` from hidden states at the completion positions.

    `h_btd` are the student's final-normed hidden states (position t predicts `completion_ids[:, t]`),
    `w_dv` its unembedding; `teacher_h` / `teacher_w` an array or a tuple of arrays whose products are
    summed into the teacher's logits (no gradient). Returns dict: `d` (the divergence, or the token
    surrogate; differentiable), `ls_y` (student log-prob of the sampled token, differentiable), `lq_y`
    (teacher's), `entropy` (student's, no gradient). With `need_teacher=False` only `ls_y` and `entropy`
    (the GRPO-only step and old log-probs). `seq_chunk` tokens (of the flattened B*T) at a time."""
    b, t, d = h_btd.shape
    inv_t = 1.0 / temperature
    h_nd = h_btd.reshape(b * t, d) * jnp.asarray(inv_t, h_btd.dtype)
    y_n = completion_ids.reshape(b * t).astype(jnp.int32)
    t_w_list = _as_tuple(teacher_w) if need_teacher else ()
    t_h_list = tuple(x.reshape(b * t, x.shape[-1]) * jnp.asarray(inv_t, x.dtype)
                     for x in _as_tuple(teacher_h)) if need_teacher else ()
    kwargs = dict(mode=mode, topk=topk, add_tail=add_tail, alpha=alpha, adv_clip=adv_clip,
                  vocab_chunk=vocab_chunk, need_teacher=need_teacher)
    n = b * t
    if not seq_chunk or seq_chunk >= n:
        out = _token_quantities_flat(h_nd, w_dv, t_h_list, t_w_list, y_n, **kwargs)
    else:
        n_seq = -(-n // seq_chunk)
        pad = n_seq * seq_chunk - n

        def split(x):
            x = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))
            return x.reshape((n_seq, seq_chunk) + x.shape[1:])

        def one(args):
            h_c, th_c, y_c = args
            return _token_quantities_flat(h_c, w_dv, th_c, t_w_list, y_c, **kwargs)

        parts = jax.lax.map(one, (split(h_nd), tuple(split(x) for x in t_h_list), split(y_n)))
        out = jax.tree.map(lambda x: x.reshape((n_seq * seq_chunk,) + x.shape[2:])[:n], parts)
    return jax.tree.map(lambda x: x.reshape(b, t), out)


def distillation_loss_from_hidden(h_btd, w_dv, teacher_h, teacher_w, completion_ids, mask, *, mode="topk",
                                  topk=100, add_tail=True, alpha=0.5, temperature=1.0, old_logprobs=None,
                                  is_clip=None, aggregation="seq_mean_token_mean", sampler_logprobs=None,
                                  rollout_is_clip=None, adv_clip=None, row_weight=None, entropy_mask=None,
                                  vocab_chunk=8192, seq_chunk=None) -> tuple[jax.Array, dict[str, Any]]:
    """`losses.distillation_loss` computed from hidden states in chunks: same arguments and result,
    with `[B, T, D]` hidden states and `[D, V]` unembeddings in place of the logits."""
    losses.check_loss_options(mode=mode, topk=topk, alpha=alpha, temperature=temperature,
                              aggregation=aggregation, adv_clip=adv_clip)
    q = token_quantities(h_btd, w_dv, teacher_h, teacher_w, completion_ids, mode=mode, topk=topk,
                         add_tail=add_tail, alpha=alpha, temperature=temperature, adv_clip=adv_clip,
                         vocab_chunk=vocab_chunk, seq_chunk=seq_chunk)
    w_bt, rho_bt = losses.token_weights(q["ls_y"], old_logprobs, sampler_logprobs, is_clip, rollout_is_clip)
    coef_bt = losses.token_coefficients(mask, row_weight, aggregation)
    loss = jnp.sum(coef_bt * q["d"] * w_bt * rho_bt)
    metric_mask = mask if row_weight is None else mask * row_weight[:, None]
    sums = losses.token_metric_sums(metric_mask, is_weight=w_bt, advantage=q["lq_y"] - q["ls_y"],
                                    entropy=q["entropy"],
                                    entropy_mask_bt=entropy_mask if entropy_mask is not None else metric_mask)
    return loss, {"loss": loss, **losses.finalize_metric_sums(sums)}
