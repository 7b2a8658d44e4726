"""Attention kernels over `q [B,T,N,H]`, `k/v [B,S,K,H]` (grouped-query: N = K*G).

All variants compute the same function. Query i sits at slot `q_offset + i`; key slot j is visible
when `kv_valid[b, j]` and `j <= q_offset + i` and, for sliding layers, `j > q_offset + i - window`
(the Hugging Face mask, by slot index). Masked scores are a large finite negative number, so a row
with no visible key (a padding query) gives a finite average, never NaN, in every variant.

- `plain_attention`: materialises the [B,N,T,S] scores; the reference, and the decode path (T=1).
- `blockwise_attention`: flash-style online softmax over key blocks inside a map over query blocks,
  plain XLA, with a custom VJP that recomputes blocks in the backward pass, so neither pass holds a
  [T,S] array; blocks entirely in the future (or outside the window) are skipped with `lax.cond`.
- `cudnn_attention`: `jax.nn.dot_product_attention(implementation="cudnn")` on GPU. cuDNN only knows
  right padding, so each row is rotated so that its (contiguous) valid span starts at slot 0.
- `splash_attention`: the Pallas splash kernel on TPU, with segment ids for padding.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from sdpo_jax.sharding import context_mesh_shape, logical_to_spec

MASK_VALUE = -1e30  # finite: fully masked rows stay finite (uniform), never NaN


def _visible(q_idx_t, kv_idx_s, window):
    """[T,S] bool: causal (and sliding-window) visibility by slot index."""
    vis = kv_idx_s[None, :] <= q_idx_t[:, None]
    if window is not None:
        vis &= kv_idx_s[None, :] > q_idx_t[:, None] - window
    return vis


def plain_attention(q_btnh, k_bskh, v_bskh, kv_valid_bs, *, q_offset=0, window=None):
    """Reference attention with the full [B,K,G,T,S] score array (fp32 softmax)."""
    b, t, n, h = q_btnh.shape
    s, k_heads = k_bskh.shape[1], k_bskh.shape[2]
    q_btkgh = q_btnh.reshape(b, t, k_heads, n // k_heads, h)
    scores = jnp.einsum("btkgh,bskh->bkgts", q_btkgh, k_bskh,
                        preferred_element_type=jnp.float32) / math.sqrt(h)
    q_idx = q_offset + jnp.arange(t, dtype=jnp.int32)
    visible_ts = _visible(q_idx, jnp.arange(s, dtype=jnp.int32), window)
    mask_bts = visible_ts[None] & kv_valid_bs[:, None, :]
    scores = jnp.where(mask_bts[:, None, None], scores, MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1)
    out = jnp.einsum("bkgts,bskh->btkgh", probs.astype(v_bskh.dtype), v_bskh,
                     preferred_element_type=jnp.float32)
    return out.reshape(b, t, n, h).astype(q_btnh.dtype)


# ----------------------------------------------------------------------------------------------
# Blockwise (flash-style) attention in plain XLA


def _pad_to(x, axis, multiple, value=0):
    size = x.shape[axis]
    extra = (-size) % multiple
    if not extra:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, extra)
    return jnp.pad(x, widths, constant_values=value)


def blockwise_attention(q_btnh, k_bskh, v_bskh, kv_valid_bs, *, q_offset=0, window=None,
                        block_q=512, block_k=512):
    """Online-softmax attention over [block_q x block_k] tiles; equal to `plain_attention`."""
    b, t, n, h = q_btnh.shape
    s, k_heads = k_bskh.shape[1], k_bskh.shape[2]
    bq, bk = min(block_q, t), min(block_k, s)
    q_bt_kgh = _pad_to(q_btnh.reshape(b, t, k_heads, n // k_heads, h), 1, bq)
    k_p, v_p = _pad_to(k_bskh, 1, bk), _pad_to(v_bskh, 1, bk)
    valid_p = _pad_to(kv_valid_bs.astype(bool), 1, bk, value=False)
    q_offset = jnp.asarray(q_offset, jnp.int32)
    out = _flash(q_bt_kgh, k_p, v_p, valid_p, q_offset, window, bq, bk, 1.0 / math.sqrt(h))
    return out[:, :t].reshape(b, t, n, h)


def _to_blocks(x, block):
    """[B, L, ...] -> [L/block, B, block, ...]."""
    x = x.reshape(x.shape[0], x.shape[1] // block, block, *x.shape[2:])
    return jnp.moveaxis(x, 1, 0)


def _from_blocks(x):
    """[nb, B, block, ...] -> [B, nb*block, ...]."""
    x = jnp.moveaxis(x, 0, 1)
    return x.reshape(x.shape[0], x.shape[1] * x.shape[2], *x.shape[3:])


def _tile_needed(i, j, q_offset, window, bq, bk):
    """Whether key block j holds any key visible from query block i (causal / window)."""
    q_lo = q_offset + i * bq
    q_hi = q_lo + bq - 1
    needed = j * bk <= q_hi
    if window is not None:
        needed &= (j + 1) * bk - 1 > q_lo - window
    return needed


def _tile_scores(q_bqkgh, k_bskh, valid_bs, q_idx_q, kv_idx_s, window, scale):
    """Masked fp32 scores of one tile [B,K,G,bq,bk] and its mask."""
    s = jnp.einsum("bqkgh,bskh->bkgqs", q_bqkgh, k_bskh, preferred_element_type=jnp.float32)
    mask = _visible(q_idx_q, kv_idx_s, window)[None] & valid_bs[:, None, :]
    mask = mask[:, None, None]
    return jnp.where(mask, s * scale, MASK_VALUE), mask


def _flash_forward(q, k, v, valid, q_offset, window, bq, bk, scale):
    """Returns out [B,T,K,G,H] (q dtype) and the row log-sum-exp [nq,B,K,G,bq] (fp32)."""
    b, _, k_heads, g, h = q.shape
    nk = k.shape[1] // bk
    q_blocks, k_blocks, v_blocks, valid_blocks = (_to_blocks(q, bq), _to_blocks(k, bk),
                                                  _to_blocks(v, bk), _to_blocks(valid, bk))
    if window is None:
        n_iter = nk
    else:
        n_iter = min(nk, (bq + window - 2) // bk + 2)

    def one_q_block(args):
        i, q_i = args
        q_idx = q_offset + i * bq + jnp.arange(bq, dtype=jnp.int32)
        j_lo = 0 if window is None else jnp.maximum(0, (q_offset + i * bq - window + 1) // bk)

        def kv_step(carry, r):
            j = j_lo + r

            def compute(carry):
                o, m, row_sum = carry
                k_j = jax.lax.dynamic_index_in_dim(k_blocks, j, keepdims=False)
                v_j = jax.lax.dynamic_index_in_dim(v_blocks, j, keepdims=False)
                valid_j = jax.lax.dynamic_index_in_dim(valid_blocks, j, keepdims=False)
                kv_idx = j * bk + jnp.arange(bk, dtype=jnp.int32)
                s, _ = _tile_scores(q_i, k_j, valid_j, q_idx, kv_idx, window, scale)
                m_new = jnp.maximum(m, s.max(-1))
                correction = jnp.exp(m - m_new)
                p = jnp.exp(s - m_new[..., None])
                row_sum = row_sum * correction + p.sum(-1)
                pv = jnp.einsum("bkgqs,bskh->bkgqh", p.astype(v_j.dtype), v_j,
                                preferred_element_type=jnp.float32)
                return o * correction[..., None] + pv, m_new, row_sum

            needed = (j < nk) & _tile_needed(i, j, q_offset, window, bq, bk)
            return jax.lax.cond(needed, compute, lambda c: c, carry), None

        init = (jnp.zeros((b, k_heads, g, bq, h), jnp.float32),
                jnp.full((b, k_heads, g, bq), MASK_VALUE, jnp.float32),
                jnp.zeros((b, k_heads, g, bq), jnp.float32))
        (o, m, row_sum), _ = jax.lax.scan(kv_step, init, jnp.arange(n_iter))
        row_sum = jnp.where(row_sum == 0, 1.0, row_sum)
        out = jnp.einsum("bkgqh->bqkgh", o / row_sum[..., None]).astype(q.dtype)
        return out, m + jnp.log(row_sum)

    nq = q_blocks.shape[0]
    out_blocks, lse = jax.lax.map(one_q_block, (jnp.arange(nq), q_blocks))
    return _from_blocks(out_blocks), lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7, 8))
def _flash(q, k, v, valid, q_offset, window, bq, bk, scale):
    return _flash_forward(q, k, v, valid, q_offset, window, bq, bk, scale)[0]


def _flash_fwd(q, k, v, valid, q_offset, window, bq, bk, scale):
    out, lse = _flash_forward(q, k, v, valid, q_offset, window, bq, bk, scale)
    return out, (q, k, v, valid, q_offset, out, lse)


def _flash_bwd(window, bq, bk, scale, residuals, d_out):
    """FlashAttention-2 style backward: one pass over key blocks, an inner pass over query blocks,
    recomputing each tile's probabilities from the saved log-sum-exp."""
    q, k, v, valid, q_offset, out, lse = residuals
    nq, nk = q.shape[1] // bq, k.shape[1] // bk
    q_blocks, do_blocks = _to_blocks(q, bq), _to_blocks(d_out, bq)
    k_blocks, v_blocks, valid_blocks = _to_blocks(k, bk), _to_blocks(v, bk), _to_blocks(valid, bk)
    # delta_i = rowsum(dO * O), laid out like lse: [nq, B, K, G, bq]
    delta = jnp.einsum("nbqkgh,nbqkgh->nbkgq", do_blocks.astype(jnp.float32),
                       _to_blocks(out, bq).astype(jnp.float32))

    def one_k_block(dq_acc, j):
        k_j, v_j, valid_j = k_blocks[j], v_blocks[j], valid_blocks[j]
        kv_idx = j * bk + jnp.arange(bk, dtype=jnp.int32)

        def q_step(carry, i):
            def compute(carry):
                dk_j, dv_j, dq_acc = carry
                q_i, do_i = q_blocks[i], do_blocks[i]
                q_idx = q_offset + i * bq + jnp.arange(bq, dtype=jnp.int32)
                s, mask = _tile_scores(q_i, k_j, valid_j, q_idx, kv_idx, window, scale)
                p = jnp.exp(s - lse[i][..., None])
                dv_j = dv_j + jnp.einsum("bkgqs,bqkgh->bskh", p.astype(do_i.dtype), do_i,
                                         preferred_element_type=jnp.float32)
                dp = jnp.einsum("bqkgh,bskh->bkgqs", do_i, v_j, preferred_element_type=jnp.float32)
                ds = jnp.where(mask, p * (dp - delta[i][..., None]), 0.0) * scale
                dq_i = jnp.einsum("bkgqs,bskh->bqkgh", ds.astype(k_j.dtype), k_j,
                                  preferred_element_type=jnp.float32)
                dk_j = dk_j + jnp.einsum("bkgqs,bqkgh->bskh", ds.astype(q_i.dtype), q_i,
                                         preferred_element_type=jnp.float32)
                return dk_j, dv_j, dq_acc.at[i].add(dq_i)

            needed = _tile_needed(i, j, q_offset, window, bq, bk)
            return jax.lax.cond(needed, compute, lambda c: c, carry), None

        zeros_k = jnp.zeros(k_j.shape, jnp.float32)
        (dk_j, dv_j, dq_acc), _ = jax.lax.scan(q_step, (zeros_k, zeros_k, dq_acc), jnp.arange(nq))
        return dq_acc, (dk_j, dv_j)

    dq0 = jnp.zeros(q_blocks.shape, jnp.float32)
    dq_blocks, (dk_blocks, dv_blocks) = jax.lax.scan(one_k_block, dq0, jnp.arange(nk))
    dq = _from_blocks(dq_blocks).astype(q.dtype)
    return (dq, _from_blocks(dk_blocks).astype(k.dtype), _from_blocks(dv_blocks).astype(v.dtype),
            None, None)


_flash.defvjp(_flash_fwd, _flash_bwd)


# ----------------------------------------------------------------------------------------------
# Fused kernels: cuDNN (GPU) and Pallas splash (TPU)


def _platform() -> str:
    """The platform being compiled for: the devices of the mesh in context (`jax.set_mesh`; a TPU
    topology when compiling ahead of time on a CPU host), else the default backend's."""
    device = jax.sharding.get_abstract_mesh().abstract_device
    if device is not None and getattr(device, "platform", None):
        return device.platform
    return jax.devices()[0].platform


def _per_shard(fn, q_btnh, k_btkh, v_btkh, valid_bt):
    """Run a fused kernel per device under `jax.set_mesh`: batch over (data, fsdp), heads over
    `tensor` when the KV heads divide it (else replicated). Without a mesh context: a plain call.
    Custom kernels have no SPMD partitioning rule, so this keeps XLA from gathering their inputs."""
    sizes = context_mesh_shape()
    if not any(size > 1 for size in sizes.values()):
        return fn(q_btnh, k_btkh, v_btkh, valid_bt)
    b, k_heads = q_btnh.shape[0], k_btkh.shape[2]
    batch = logical_to_spec(("batch",), (b,), sizes)[0]
    heads = logical_to_spec(("kv_heads",), (k_heads,), sizes)[0]
    spec = P(batch, None, heads, None)
    return jax.shard_map(fn, mesh=jax.sharding.get_abstract_mesh(), axis_names=set(sizes),
                         in_specs=(spec, spec, spec, P(batch, None)), out_specs=spec,
                         check_vma=False)(q_btnh, k_btkh, v_btkh, valid_bt)


def cudnn_attention(q_btnh, k_btkh, v_btkh, kv_valid_bt, *, window=None, implementation="cudnn"):
    """`jax.nn.dot_product_attention` (cuDNN flash attention) for self-attention (T == S).

    The valid tokens of each row must be one contiguous span (left and/or right padding, as in
    `[left-padded prompt | right-padded completion]`). Each row is rotated so the span starts at
    slot 0, attended with causal + key-length masking, and rotated back. `implementation="xla"`
    runs the same path on any platform (tests).
    """
    if implementation == "cudnn" and _platform() != "gpu":
        raise RuntimeError(
            f"attention_impl='cudnn' needs an NVIDIA GPU, but JAX runs on {_platform()!r}; "
            "use attention_impl='blockwise' (any platform) or 'splash' (TPU).")
    def kernel(q_btnh, k_btkh, v_btkh, kv_valid_bt):
        t = kv_valid_bt.shape[1]
        valid = kv_valid_bt.astype(bool)
        first = jnp.argmax(valid, axis=1).astype(jnp.int32)  # leading padding per row
        lengths = valid.sum(axis=1).astype(jnp.int32)
        idx = (jnp.arange(t, dtype=jnp.int32)[None, :] + first[:, None]) % t  # rotate left

        def rotate(x, index):
            return jnp.take_along_axis(x, index[:, :, None, None], axis=1)

        out = jax.nn.dot_product_attention(
            rotate(q_btnh, idx), rotate(k_btkh, idx), rotate(v_btkh, idx), is_causal=True,
            query_seq_lengths=lengths, key_value_seq_lengths=lengths,
            local_window_size=None if window is None else (window - 1, 0),
            implementation=implementation)
        back = (jnp.arange(t, dtype=jnp.int32)[None, :] - first[:, None]) % t
        return rotate(out, back)

    return _per_shard(kernel, q_btnh, k_btkh, v_btkh, kv_valid_bt)


def splash_attention(q_btnh, k_btkh, v_btkh, kv_valid_bt, *, window=None, block=512,
                     interpret=False):
    """Pallas splash attention (TPU) for self-attention; padding via segment ids (0 = pad), so a
    valid query sees only valid keys. `interpret=True` runs the kernel in Pallas' interpreter on
    any platform (tests)."""
    if _platform() != "tpu" and not interpret:
        raise RuntimeError(
            f"attention_impl='splash' needs a TPU, but JAX runs on {_platform()!r}; "
            "use attention_impl='blockwise' (any platform) or 'cudnn' (GPU).")
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    b, t, n, h = q_btnh.shape
    k_heads = k_btkh.shape[2]
    if t % 128:
        raise ValueError(f"attention_impl='splash' needs a sequence length divisible by 128, "
                         f"got {t}; pad to a bucket of 128 or use 'blockwise'.")
    if window is None:
        head_mask = sm.CausalMask(shape=(t, t))
    else:
        head_mask = sm.LocalMask(shape=(t, t), window_size=(window - 1, 0), offset=0)
    blk = min(block, t)
    sizes = sk.BlockSizes(block_q=blk, block_kv=blk, block_kv_compute=blk, block_q_dkv=blk,
                          block_kv_dkv=blk, block_kv_dkv_compute=blk, block_q_dq=blk,
                          block_kv_dq=blk)
    group = n // k_heads
    kernel = sk.make_splash_mqa_single_device(
        mask=sm.MultiHeadMask([head_mask] * group), block_sizes=sizes, interpret=interpret)

    def per_shard(q_btnh, k_btkh, v_btkh, kv_valid_bt):
        b, t, n_local, h = q_btnh.shape
        k_local = k_btkh.shape[2]
        q_bkgth = jnp.einsum("btkgh->bkgth", q_btnh.reshape(b, t, k_local, group, h))
        q_bkgth = (q_bkgth / math.sqrt(h)).astype(k_btkh.dtype)
        k_bkth = jnp.einsum("btkh->bkth", k_btkh)
        v_bkth = jnp.einsum("btkh->bkth", v_btkh)

        def per_row(q_kgth, k_kth, v_kth, seg_t):
            ids = sk.SegmentIds(q=seg_t, kv=seg_t)
            return jax.vmap(lambda qh, kh, vh: kernel(qh, kh, vh, segment_ids=ids))(
                q_kgth, k_kth, v_kth)

        out = jax.vmap(per_row)(q_bkgth, k_bkth, v_bkth, kv_valid_bt.astype(jnp.int32))
        return jnp.einsum("bkgth->btkgh", out).reshape(b, t, n_local, h).astype(q_btnh.dtype)

    return _per_shard(per_shard, q_btnh, k_btkh, v_btkh, kv_valid_bt)


def self_attention(impl, q_btnh, k_btkh, v_btkh, kv_valid_bt, *, window=None, block_size=512):
    """Causal self-attention (T == S, query i at slot i) with the configured implementation."""
    if impl == "plain":
        return plain_attention(q_btnh, k_btkh, v_btkh, kv_valid_bt, window=window)
    if impl == "blockwise":
        return blockwise_attention(q_btnh, k_btkh, v_btkh, kv_valid_bt, window=window,
                                   block_q=block_size, block_k=block_size)
    if impl == "cudnn":
        return cudnn_attention(q_btnh, k_btkh, v_btkh, kv_valid_bt, window=window)
    if impl == "splash":
        return splash_attention(q_btnh, k_btkh, v_btkh, kv_valid_bt, window=window,
                                block=block_size)
    raise ValueError(f"attention_impl={impl!r}; use plain | blockwise | cudnn | splash.")


def cached_attention(impl, q_btnh, k_bskh, v_bskh, slot_mask_bs, *, q_offset, window=None,
                     block_size=512):
    """Queries at slots [q_offset, q_offset+T) against a KV cache of S slots.

    Decode (T = 1) uses the plain path ([B,N,1,S] scores); a prefill (T > 1) uses the plain path
    when `impl == "plain"`, else the blockwise one (fused kernels need T == S)."""
    if q_btnh.shape[1] == 1 or impl == "plain":
        return plain_attention(q_btnh, k_bskh, v_bskh, slot_mask_bs, q_offset=q_offset,
                               window=window)
    return blockwise_attention(q_btnh, k_bskh, v_bskh, slot_mask_bs, q_offset=q_offset,
                               window=window, block_q=block_size, block_k=block_size)


__all__ = ["plain_attention", "blockwise_attention", "cudnn_attention", "splash_attention",
           "self_attention", "cached_attention", "MASK_VALUE"]
