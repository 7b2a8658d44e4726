"""The vocabulary passes of the memory-efficient SDPO loss: from hidden states and the unembedding, in chunks.

Never materialises `[B, T, V]`: logits exist one `[S, vocab_chunk]` block at a time (S = tokens of a
sequence block, `seq_chunk`; all B*T tokens by default), and per token only `[N]` running statistics
(online logsumexp, sampled-token logit, entropy) and the running top-K `[N, K]` are kept.

Passes, all over the same vocabulary chunks:
1. student (differentiable, custom VJP): online logsumexp, sampled-token logit, running top-K merge
   (values differentiable, indices not), entropy (metric, no gradient);
2. teacher (no gradient): logsumexp, sampled-token logit, logits at the student's top-K indices;
3. `full` mode only (differentiable, custom VJP): the divergence summed over the vocabulary chunk by
   chunk, given both logsumexps (the student's differentiable).
The custom VJPs recompute each logits block once in the backward pass (outer loop over vocabulary
chunks, inner over token blocks) and emit the unembedding's gradient one `[D, chunk]` block at a
time, so neither a `[D, V]` accumulator nor per-block residuals are stored; the residuals are the
inputs plus `[N]` / `[N, K]` statistics.
The teacher's logits may be a sum of several `h @ w` terms (the trust-region mix of the frozen and the
live model; scale each `h` by its mix weight beforehand).

The last chunk is read at offset V - chunk (so no padded copy of W is made) and its columns already
seen in the previous chunk are masked out. The divergence modes' chunked forms read these passes' results
(`divergences.token_quantities_from_hidden`).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from sdpo_jax import losses

_NEG_INF = -jnp.inf


def as_tuple(x) -> tuple:
    """x as a tuple of arrays (an array, or a tuple / list of them: the teacher's logits terms)."""
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


def _blocks(x, n_blocks: int, size: int):
    """[N, ...] -> [n_blocks, size, ...] (zero-padded)."""
    pad = n_blocks * size - x.shape[0]
    if pad:
        x = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))
    return x.reshape((n_blocks, size) + x.shape[1:])


def _unblocks(x, n: int):
    return x.reshape((x.shape[0] * x.shape[1],) + x.shape[2:])[:n]


def _token_blocking(n: int, seq_chunk: int | None) -> tuple[int, int]:
    """(blocks, tokens per block): at most `seq_chunk` tokens per block, as even as possible."""
    n_blocks = 1 if not seq_chunk or seq_chunk >= n else -(-n // int(seq_chunk))
    return n_blocks, -(-n // n_blocks)


def _assemble_dw(dw_kdc, vocab: int):
    """[n_chunks, D, chunk] gradient blocks -> [D, V] (the last block was read at V - chunk)."""
    n_chunks, d, chunk = dw_kdc.shape
    dw = jnp.transpose(dw_kdc, (1, 0, 2)).reshape(d, n_chunks * chunk)
    if n_chunks * chunk != vocab:
        full = (n_chunks - 1) * chunk
        dw = jnp.concatenate([dw[:, :full], dw_kdc[-1][:, full - (vocab - chunk):]], axis=1)
    return dw


# ----------------------------------------------------------------------------- student pass


def _student_block(h_nd, w_dv, y_n, k: int, vocab_chunk: int | None):
    """(lse, z_y, topk_z, topk_idx, entropy) of one token block, one pass over the vocabulary chunks."""
    vocab = w_dv.shape[1]
    n = h_nd.shape[0]
    chunk, n_chunks = vocab_chunking(vocab, vocab_chunk)
    k_chunk = min(k, chunk)

    def body(carry, i):
        m, l, ent, zy, top_z, top_i = carry
        start, lo, valid_c = _chunk_window(i, chunk, vocab)
        z = _chunk_logits((h_nd,), (w_dv,), start, chunk)
        z_masked = jnp.where(valid_c[None, :], z, _NEG_INF)
        m_new = jnp.maximum(m, jnp.max(z_masked, axis=1))
        scale = jnp.exp(m - m_new)
        e = jnp.exp(z_masked - m_new[:, None])
        l = l * scale + jnp.sum(e, axis=1)
        ent = ent * scale + jnp.sum(e * jnp.where(valid_c[None, :], z, 0.0), axis=1)
        val, inside = _gather_in_chunk(z, y_n, start, lo, chunk)
        zy = jnp.where(inside, val, zy)
        if k:
            cand_z, cand_i = jax.lax.top_k(z_masked, k_chunk)
            all_z = jnp.concatenate([top_z, cand_z], axis=1)
            all_i = jnp.concatenate([top_i, cand_i + start], axis=1)
            top_z, pos = jax.lax.top_k(all_z, k)
            top_i = jnp.take_along_axis(all_i, pos, axis=1)
        return (m_new, l, ent, zy, top_z, top_i), None

    init = (jnp.full((n,), _NEG_INF, jnp.float32), jnp.zeros((n,), jnp.float32), jnp.zeros((n,), jnp.float32),
            jnp.zeros((n,), jnp.float32), jnp.full((n, k), _NEG_INF, jnp.float32), jnp.zeros((n, k), jnp.int32))
    (m, l, ent, zy, top_z, top_i), _ = jax.lax.scan(body, init, jnp.arange(n_chunks))
    lse = m + jnp.log(l)
    return lse, zy, top_z, top_i, lse - ent / l


def _student_stats_impl(h_snd, w_dv, y_sn, k, vocab_chunk):
    return jax.lax.map(lambda xs: _student_block(xs[0], w_dv, xs[1], k, vocab_chunk), (h_snd, y_sn))


_student_stats = jax.custom_vjp(_student_stats_impl, nondiff_argnums=(3, 4))


def _student_stats_fwd(h_snd, w_dv, y_sn, k, vocab_chunk):
    out = _student_stats_impl(h_snd, w_dv, y_sn, k, vocab_chunk)
    return out, (h_snd, w_dv, y_sn, out[0], out[3])


def _student_stats_bwd(k, vocab_chunk, residuals, cotangents):
    """dz = g_lse softmax(z) + g_zy onehot(y) + scatter(g_topk at the K indices), per (vocab chunk, token
    block); dh accumulates dz @ w_c^T, dW comes out per vocabulary chunk. The entropy output is a
    metric: its cotangent is ignored (the public wrapper stops its gradient)."""
    h_snd, w_dv, y_sn, lse_sn, top_i_snk = residuals
    g_lse, g_zy, g_top = cotangents[0], cotangents[1], cotangents[2]
    vocab = w_dv.shape[1]
    _, size, d = h_snd.shape
    chunk, n_chunks = vocab_chunking(vocab, vocab_chunk)
    rows = jnp.arange(size)[:, None]

    def vocab_body(dh_snd, i):
        start, lo, valid_c = _chunk_window(i, chunk, vocab)
        w_dc = jax.lax.dynamic_slice_in_dim(w_dv, start, chunk, axis=1).astype(h_snd.dtype)
        cols = start + jnp.arange(chunk)

        def token_body(dw_dc, xs):
            h_nd, y_n, lse_n, top_i, gl, gz, gt = xs
            z = jnp.dot(h_nd, w_dc, preferred_element_type=jnp.float32)
            dz = gl[:, None] * jnp.exp(z - lse_n[:, None]) + jnp.where(cols[None, :] == y_n[:, None], gz[:, None], 0.0)
            if k:
                inside = (top_i >= lo) & (top_i < start + chunk)
                dz = dz.at[rows, jnp.clip(top_i - start, 0, chunk - 1)].add(jnp.where(inside, gt, 0.0))
            dz = jnp.where(valid_c[None, :], dz, 0.0).astype(h_snd.dtype)
            dw_dc = dw_dc + jnp.dot(h_nd.T, dz, preferred_element_type=jnp.float32)
            return dw_dc, jnp.dot(dz, w_dc.T, preferred_element_type=jnp.float32)

        dw_dc, dh_part = jax.lax.scan(token_body, jnp.zeros((d, chunk), jnp.float32),
                                      (h_snd, y_sn, lse_sn, top_i_snk, g_lse, g_zy, g_top))
        return dh_snd + dh_part, dw_dc

    dh, dw_kdc = jax.lax.scan(vocab_body, jnp.zeros(h_snd.shape, jnp.float32), jnp.arange(n_chunks))
    return dh.astype(h_snd.dtype), _assemble_dw(dw_kdc, vocab).astype(w_dv.dtype), None


_student_stats.defvjp(_student_stats_fwd, _student_stats_bwd)


def student_vocab_pass(h_nd, w_dv, y_n, *, k: int, vocab_chunk: int | None, seq_chunk: int | None = None):
    """Student statistics over the vocabulary: dict(lse [N], z_y [N], topk_z [N, K], topk_idx [N, K],
    entropy [N]). Differentiable in h and w through lse, z_y and topk_z; logits are h @ w (temper h
    beforehand). `seq_chunk` tokens per block (None: all)."""
    n = h_nd.shape[0]
    k = min(k, w_dv.shape[1])
    n_blocks, size = _token_blocking(n, seq_chunk)
    out = _student_stats(_blocks(h_nd, n_blocks, size), w_dv, _blocks(y_n.astype(jnp.int32), n_blocks, size), k,
                         vocab_chunk)
    lse, zy, top_z, top_i, entropy = (_unblocks(x, n) for x in out)
    return {"lse": lse, "z_y": zy, "topk_z": top_z, "topk_idx": jax.lax.stop_gradient(top_i),
            "entropy": jax.lax.stop_gradient(entropy)}


# ----------------------------------------------------------------------------- teacher pass


def _teacher_block(h_list, w_list, y_n, idx_nk, vocab_chunk):
    vocab = w_list[0].shape[1]
    n = h_list[0].shape[0]
    chunk, n_chunks = vocab_chunking(vocab, vocab_chunk)
    k = idx_nk.shape[1]

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
    return m + jnp.log(l), zy, z_idx


def teacher_vocab_pass(h_list, w_list, y_n, idx_nk=None, *, vocab_chunk: int | None, seq_chunk: int | None = None):
    """Teacher statistics, no gradient: dict(lse [N], z_y [N], z_idx [N, K] at the given indices)."""
    h_list = tuple(jax.lax.stop_gradient(h) for h in as_tuple(h_list))
    w_list = tuple(jax.lax.stop_gradient(w) for w in as_tuple(w_list))
    n = h_list[0].shape[0]
    if idx_nk is None:
        idx_nk = jnp.zeros((n, 0), jnp.int32)
    n_blocks, size = _token_blocking(n, seq_chunk)
    blocked = (tuple(_blocks(h, n_blocks, size) for h in h_list), _blocks(y_n.astype(jnp.int32), n_blocks, size),
               _blocks(idx_nk, n_blocks, size))
    out = jax.lax.map(lambda xs: _teacher_block(xs[0], w_list, xs[1], xs[2], vocab_chunk), blocked)
    lse, zy, z_idx = (_unblocks(x, n) for x in out)
    return {"lse": lse, "z_y": zy, "z_idx": z_idx}


# ----------------------------------------------------------------------------- full-vocabulary divergence


def _full_block(h_nd, w_dv, t_h_list, t_w_list, lse_s, lse_t, alpha, adv_clip, vocab_chunk):
    vocab = w_dv.shape[1]
    chunk, n_chunks = vocab_chunking(vocab, vocab_chunk)

    def body(acc, i):
        start, _, valid_c = _chunk_window(i, chunk, vocab)
        ls = _chunk_logits((h_nd,), (w_dv,), start, chunk) - lse_s[:, None]
        lq = _chunk_logits(t_h_list, t_w_list, start, chunk) - lse_t[:, None]
        terms = losses.divergence_terms(ls, lq, alpha, adv_clip)
        return acc + jnp.sum(jnp.where(valid_c[None, :], terms, 0.0), axis=1), None

    acc, _ = jax.lax.scan(body, jnp.zeros(h_nd.shape[0], jnp.float32), jnp.arange(n_chunks))
    return acc


def _full_divergence_impl(h_snd, w_dv, t_h_list, t_w_list, lse_s, lse_t, alpha, adv_clip, vocab_chunk):
    return jax.lax.map(lambda xs: _full_block(xs[0], w_dv, xs[1], t_w_list, xs[2], xs[3], alpha, adv_clip,
                                              vocab_chunk), (h_snd, t_h_list, lse_s, lse_t))


_full_divergence = jax.custom_vjp(_full_divergence_impl, nondiff_argnums=(6, 7, 8))


def _full_divergence_fwd(h_snd, w_dv, t_h_list, t_w_list, lse_s, lse_t, alpha, adv_clip, vocab_chunk):
    out = _full_divergence_impl(h_snd, w_dv, t_h_list, t_w_list, lse_s, lse_t, alpha, adv_clip, vocab_chunk)
    return out, (h_snd, w_dv, t_h_list, t_w_list, lse_s, lse_t)


def _full_divergence_bwd(alpha, adv_clip, vocab_chunk, residuals, g_sn):
    """d/d log s of the per-category terms (their own VJP, so the adv_clip surrogate is respected), chunk by
    chunk: dz = that, d lse_s = -sum over the vocabulary; the teacher side gets no gradient."""
    h_snd, w_dv, t_h_list, t_w_list, lse_s, lse_t = residuals
    vocab = w_dv.shape[1]
    d = h_snd.shape[2]
    chunk, n_chunks = vocab_chunking(vocab, vocab_chunk)

    def vocab_body(carry, i):
        dh_snd, dlse_sn = carry
        start, _, valid_c = _chunk_window(i, chunk, vocab)
        w_dc = jax.lax.dynamic_slice_in_dim(w_dv, start, chunk, axis=1).astype(h_snd.dtype)

        def token_body(dw_dc, xs):
            h_nd, th, ls_n, lt_n, g_n = xs
            ls = jnp.dot(h_nd, w_dc, preferred_element_type=jnp.float32) - ls_n[:, None]
            lq = _chunk_logits(th, t_w_list, start, chunk) - lt_n[:, None]
            _, vjp = jax.vjp(lambda x: losses.divergence_terms(x, lq, alpha, adv_clip), ls)
            dls = vjp(jnp.where(valid_c[None, :], g_n[:, None], 0.0))[0]
            dz = dls.astype(h_snd.dtype)
            dw_dc = dw_dc + jnp.dot(h_nd.T, dz, preferred_element_type=jnp.float32)
            return dw_dc, (jnp.dot(dz, w_dc.T, preferred_element_type=jnp.float32), -jnp.sum(dls, axis=1))

        dw_dc, (dh_part, dlse_part) = jax.lax.scan(token_body, jnp.zeros((d, chunk), jnp.float32),
                                                   (h_snd, t_h_list, lse_s, lse_t, g_sn))
        return (dh_snd + dh_part, dlse_sn + dlse_part), dw_dc

    init = (jnp.zeros(h_snd.shape, jnp.float32), jnp.zeros(lse_s.shape, jnp.float32))
    (dh, dlse), dw_kdc = jax.lax.scan(vocab_body, init, jnp.arange(n_chunks))
    zeros = lambda tree: jax.tree.map(jnp.zeros_like, tree)  # noqa: E731 (teacher: no gradient)
    return (dh.astype(h_snd.dtype), _assemble_dw(dw_kdc, vocab).astype(w_dv.dtype), zeros(t_h_list),
            zeros(t_w_list), dlse, jnp.zeros_like(lse_t))


_full_divergence.defvjp(_full_divergence_fwd, _full_divergence_bwd)


def full_divergence_pass(h_nd, w_dv, t_h_list, t_w_list, lse_s, lse_t, *, alpha: float, adv_clip: float | None,
                         vocab_chunk: int | None, seq_chunk: int | None = None):
    """sum over the whole vocabulary of D(s || q) per token ([N]); differentiable in h, w and lse_s."""
    t_h_list = tuple(jax.lax.stop_gradient(h) for h in as_tuple(t_h_list))
    t_w_list = tuple(jax.lax.stop_gradient(w) for w in as_tuple(t_w_list))
    n = h_nd.shape[0]
    n_blocks, size = _token_blocking(n, seq_chunk)
    blk = lambda x: _blocks(x, n_blocks, size)  # noqa: E731
    out = _full_divergence(blk(h_nd), w_dv, tuple(blk(h) for h in t_h_list), t_w_list, blk(lse_s),
                           blk(jax.lax.stop_gradient(lse_t)), alpha, adv_clip, vocab_chunk)
    return _unblocks(out, n)
