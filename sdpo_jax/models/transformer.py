"""One decoder for Qwen2/2.5, Qwen3, Llama 3.x, OLMo 2 and OLMo 3: pure functions over params.

Parameter layout (every layer tensor stacked on a leading axis L, whatever `scan_layers` says):

    embed [V,D]                      final_norm [D]               lm_head [D,V] (untied only)
    layers/
      attn_norm [L,D], mlp_norm [L,D]          (norm_placement="pre": before attention / MLP)
      post_attn_norm [L,D], post_mlp_norm [L,D] (norm_placement="post", OLMo: on their outputs)
      q [L,D,N,H]  k [L,D,K,H]  v [L,D,K,H]  o [L,N,H,D]
      q_bias [L,N,H]  k_bias [L,K,H]  v_bias [L,K,H]   (qkv_bias)
      q_norm [L,H]  k_norm [L,H]                        (qk_norm="per_head", Qwen3)
      q_norm [L,N,H]  k_norm [L,K,H]                    (qk_norm="full", OLMo: RMS over N*H)
      gate [L,D,F]  up [L,D,F]  down [L,F,D]

Letters: B batch, T query length, S key slots, D hidden, N query heads, K KV heads, G = N/K,
H head dim, F MLP width, V vocabulary, L layers.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from sdpo_jax.models.attention import cached_attention, self_attention
from sdpo_jax.models.config import ModelConfig, rope_dict
from sdpo_jax.sharding import constrain, logical_to_spec

# ----------------------------------------------------------------------------------------------
# Parameter specs: shapes, logical axes, init


def _param_table(cfg: ModelConfig) -> dict:
    """{path: (shape, logical axes, init kind)} with path "a/b" for nested keys."""
    d, f, n, k, h, v, L = (cfg.hidden_size, cfg.intermediate_size, cfg.num_heads,
                           cfg.num_kv_heads, cfg.head_dim, cfg.vocab_size, cfg.num_layers)
    t = {"embed": ((v, d), ("vocab", "embed"), "normal"),
         "final_norm": ((d,), ("norm",), "ones")}
    if not cfg.tie_word_embeddings:
        t["lm_head"] = ((d, v), ("embed", "vocab"), "normal")
    lay = {
        "q": ((L, d, n, h), ("layers", "embed", "q_heads", "head_dim"), "normal"),
        "k": ((L, d, k, h), ("layers", "embed", "kv_heads", "head_dim"), "normal"),
        "v": ((L, d, k, h), ("layers", "embed", "kv_heads", "head_dim"), "normal"),
        "o": ((L, n, h, d), ("layers", "q_heads", "head_dim", "embed"), "normal"),
        "gate": ((L, d, f), ("layers", "embed", "mlp"), "normal"),
        "up": ((L, d, f), ("layers", "embed", "mlp"), "normal"),
        "down": ((L, f, d), ("layers", "mlp", "embed"), "normal"),
    }
    if cfg.norm_placement == "pre":
        lay["attn_norm"] = ((L, d), ("layers", "norm"), "ones")
        lay["mlp_norm"] = ((L, d), ("layers", "norm"), "ones")
    else:
        lay["post_attn_norm"] = ((L, d), ("layers", "norm"), "ones")
        lay["post_mlp_norm"] = ((L, d), ("layers", "norm"), "ones")
    if cfg.qkv_bias:
        lay["q_bias"] = ((L, n, h), ("layers", "q_heads", "head_dim"), "zeros")
        lay["k_bias"] = ((L, k, h), ("layers", "kv_heads", "head_dim"), "zeros")
        lay["v_bias"] = ((L, k, h), ("layers", "kv_heads", "head_dim"), "zeros")
    if cfg.qk_norm == "per_head":
        lay["q_norm"] = ((L, h), ("layers", "head_dim"), "ones")
        lay["k_norm"] = ((L, h), ("layers", "head_dim"), "ones")
    elif cfg.qk_norm == "full":
        lay["q_norm"] = ((L, n, h), ("layers", "q_heads", "head_dim"), "ones")
        lay["k_norm"] = ((L, k, h), ("layers", "kv_heads", "head_dim"), "ones")
    t.update({f"layers/{name}": spec for name, spec in lay.items()})
    return t


def _nest(flat: dict) -> dict:
    out: dict = {}
    for path, value in flat.items():
        node = out
        *parents, leaf = path.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def param_shapes(cfg: ModelConfig) -> dict:
    """Tree of shape tuples, the structure of `init_params(cfg, ...)`."""
    return _nest({p: s for p, (s, _, _) in _param_table(cfg).items()})


def param_logical_axes(cfg: ModelConfig) -> dict:
    """Tree of logical axis-name tuples (see `sdpo_jax.sharding.LOGICAL_RULES`)."""
    return _nest({p: a for p, (_, a, _) in _param_table(cfg).items()})



def param_specs(cfg: ModelConfig, mesh) -> dict:
    """Tree of PartitionSpecs for the parameters of `cfg` on `mesh` (`sharding.LOGICAL_RULES`)."""
    mesh_shape = dict(mesh.shape)
    return jax.tree.map(lambda a, s: logical_to_spec(a, s, mesh_shape), param_logical_axes(cfg), param_shapes(cfg),
                        is_leaf=lambda x: isinstance(x, tuple))


def param_shardings(cfg: ModelConfig, mesh) -> dict:
    """Tree of `NamedSharding`s, the same structure as `init_params(cfg, ...)`."""
    return jax.tree.map(lambda spec: NamedSharding(mesh, spec), param_specs(cfg, mesh),
                        is_leaf=lambda x: isinstance(x, PartitionSpec))

def init_params(cfg: ModelConfig, rng: jax.Array, std: float = 0.02, shardings=None) -> dict:
    """Random parameters: N(0, std) matrices, unit norms, zero biases, in `cfg.param_dtype`.

    One jitted call; with `shardings` (e.g. `sharding.param_shardings(cfg, mesh)`) each parameter
    is created directly in its sharding."""
    return jax.jit(_init_params, static_argnums=(0, 2), out_shardings=shardings)(cfg, rng, std)


def _init_params(cfg: ModelConfig, rng: jax.Array, std: float) -> dict:
    table = sorted(_param_table(cfg).items())
    dtype = jnp.dtype(cfg.param_dtype)
    normal = [(path, shape) for path, (shape, _, kind) in table if kind == "normal"]
    sizes = [math.prod(shape) for _, shape in normal]
    flat = {}
    if sum(sizes) <= 2**27:  # small models: one random draw compiles far faster than one per leaf
        draws = jax.random.normal(rng, (sum(sizes),), jnp.float32)
        offsets = np.cumsum([0] + sizes)
        for (path, shape), lo, hi in zip(normal, offsets[:-1], offsets[1:]):
            flat[path] = (std * draws[lo:hi].reshape(shape)).astype(dtype)
    else:
        for key, (path, shape) in zip(jax.random.split(rng, len(normal)), normal):
            flat[path] = (std * jax.random.normal(key, shape, jnp.float32)).astype(dtype)
    for path, (shape, _, kind) in table:
        if kind != "normal":
            flat[path] = (jnp.ones if kind == "ones" else jnp.zeros)(shape, dtype)
    return _nest(flat)


# ----------------------------------------------------------------------------------------------
# RoPE


def rope_inv_freq(head_dim: int, theta: float, scaling: tuple | dict | None,
                  max_position_embeddings: int = 32768) -> tuple[np.ndarray, float]:
    """Inverse frequencies [H/2] (float32) and the cos/sin scale (YaRN's attention factor),
    following transformers' `ROPE_INIT_FUNCTIONS` for default / linear / llama3 / yarn."""
    sc = dict(scaling) if isinstance(scaling, dict) else rope_dict(scaling)
    rope_type = sc.get("rope_type", "default")
    exponents = np.arange(0, head_dim, 2, dtype=np.float64) / head_dim
    inv = 1.0 / (theta ** exponents)
    attention_factor = 1.0
    if rope_type == "linear":
        inv = inv / sc["factor"]
    elif rope_type == "llama3":
        factor, low, high = sc["factor"], sc["low_freq_factor"], sc["high_freq_factor"]
        old_len = sc.get("original_max_position_embeddings", max_position_embeddings)
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > old_len / low, inv / factor, inv)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
        inv = np.where(medium, smoothed, scaled)
    elif rope_type == "yarn":
        old_len = sc.get("original_max_position_embeddings", max_position_embeddings)
        factor = sc.get("factor") or max_position_embeddings / old_len
        attention_factor = sc.get("attention_factor")
        mscale, mscale_all = sc.get("mscale"), sc.get("mscale_all_dim")

        def get_mscale(scale, m=1.0):
            return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

        if attention_factor is None:
            attention_factor = (get_mscale(factor, mscale) / get_mscale(factor, mscale_all)
                                if mscale and mscale_all else get_mscale(factor))
        beta_fast, beta_slow = sc.get("beta_fast") or 32, sc.get("beta_slow") or 1

        def correction_dim(rotations):
            return head_dim * math.log(old_len / (rotations * 2 * math.pi)) / (2 * math.log(theta))

        lo, hi = correction_dim(beta_fast), correction_dim(beta_slow)
        if sc.get("truncate", True):
            lo, hi = math.floor(lo), math.ceil(hi)
        lo, hi = max(lo, 0), min(hi, head_dim - 1)
        if lo == hi:
            hi += 0.001
        ramp = np.clip((np.arange(head_dim // 2, dtype=np.float64) - lo) / (hi - lo), 0, 1)
        extrapolation = 1 - ramp
        inv = (inv / factor) * (1 - extrapolation) + inv * extrapolation
    elif rope_type != "default":
        raise ValueError(f"rope_type={rope_type!r} is not supported "
                         "(default, linear, llama3, yarn)")
    return inv.astype(np.float32), float(attention_factor)


def _rope_kinds(cfg: ModelConfig) -> dict:
    """{'full' | 'sliding': (theta, scaling)} for the layer kinds present; one entry when equal."""
    full = (cfg.rope_theta, cfg.rope_scaling)
    sliding = (cfg.sliding_rope_theta or cfg.rope_theta, cfg.sliding_rope_scaling)
    kinds = {}
    if not all(cfg.sliding_layers):
        kinds["full"] = full
    if any(cfg.sliding_layers) and sliding != full:
        kinds["sliding"] = sliding
    elif any(cfg.sliding_layers):
        kinds["full"] = full
    return kinds


def _rope_tables(cfg: ModelConfig, positions_bt: jax.Array) -> dict:
    """{kind: (cos, sin)} each [B,T,H/2] float32 at the given positions."""
    tables = {}
    for kind, (theta, scaling) in _rope_kinds(cfg).items():
        inv, att = rope_inv_freq(cfg.head_dim, theta, scaling, cfg.max_position_embeddings)
        angles = positions_bt.astype(jnp.float32)[..., None] * jnp.asarray(inv)
        tables[kind] = (jnp.cos(angles) * att, jnp.sin(angles) * att)
    return tables


def _apply_rope(x_btnh, cos_bth, sin_bth):
    half = x_btnh.shape[-1] // 2
    x = x_btnh.astype(jnp.float32)
    x1, x2 = x[..., :half], x[..., half:]
    cos, sin = cos_bth[:, :, None, :], sin_bth[:, :, None, :]
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x_btnh.dtype)


def _rope_for(tables: dict, sliding) -> tuple:
    """The (cos, sin) of a layer; `sliding` is a Python bool or a traced bool (scan)."""
    if "sliding" not in tables:
        return tables["full"]
    if "full" not in tables:
        return tables["sliding"]
    if isinstance(sliding, bool):
        return tables["sliding" if sliding else "full"]
    return tuple(jnp.where(sliding, s, f) for s, f in zip(tables["sliding"], tables["full"]))


# ----------------------------------------------------------------------------------------------
# The layer


def _rms_norm(x, weight, eps):
    xf = x.astype(jnp.float32)
    xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return (xf * weight.astype(jnp.float32)).astype(x.dtype)


def _qkv(cfg: ModelConfig, lp: dict, x_btd, tables, sliding):
    """Projected, normed and rotated q [B,T,N,H], k [B,T,K,H] and v [B,T,K,H]."""
    cdt = jnp.dtype(cfg.compute_dtype)
    h_btd = _rms_norm(x_btd, lp["attn_norm"], cfg.rms_norm_eps) if "attn_norm" in lp else x_btd
    q = jnp.einsum("btd,dnh->btnh", h_btd, lp["q"].astype(cdt))
    k = jnp.einsum("btd,dkh->btkh", h_btd, lp["k"].astype(cdt))
    v = jnp.einsum("btd,dkh->btkh", h_btd, lp["v"].astype(cdt))
    if cfg.qkv_bias:
        q = q + lp["q_bias"].astype(cdt)
        k = k + lp["k_bias"].astype(cdt)
        v = v + lp["v_bias"].astype(cdt)
    if cfg.qk_norm == "per_head":
        q = _rms_norm(q, lp["q_norm"], cfg.rms_norm_eps)
        k = _rms_norm(k, lp["k_norm"], cfg.rms_norm_eps)
    elif cfg.qk_norm == "full":  # RMS over the whole projected N*H vector (OLMo 2/3)
        b, t, n, h = q.shape
        q = _rms_norm(q.reshape(b, t, n * h), lp["q_norm"].reshape(-1),
                      cfg.rms_norm_eps).reshape(b, t, n, h)
        kk = k.shape[2]
        k = _rms_norm(k.reshape(b, t, kk * h), lp["k_norm"].reshape(-1),
                      cfg.rms_norm_eps).reshape(b, t, kk, h)
    cos, sin = _rope_for(tables, sliding)
    q, k = _apply_rope(q, cos, sin), _apply_rope(k, cos, sin)
    q = constrain(q, ("batch", "seq", "q_heads", "head_dim"))
    k = constrain(k, ("batch", "seq", "kv_heads", "head_dim"))
    v = constrain(v, ("batch", "seq", "kv_heads", "head_dim"))
    return q, k, v


def _finish(cfg: ModelConfig, lp: dict, x_btd, attn_btnh):
    """Output projection, residuals and the SwiGLU MLP."""
    cdt = jnp.dtype(cfg.compute_dtype)
    out = jnp.einsum("btnh,nhd->btd", attn_btnh, lp["o"].astype(cdt))
    if "post_attn_norm" in lp:
        out = _rms_norm(out, lp["post_attn_norm"], cfg.rms_norm_eps)
    x_btd = constrain(x_btd + out, ("batch", "seq", "act_embed"))
    h = _rms_norm(x_btd, lp["mlp_norm"], cfg.rms_norm_eps) if "mlp_norm" in lp else x_btd
    gate = jnp.einsum("btd,df->btf", h, lp["gate"].astype(cdt))
    up = jnp.einsum("btd,df->btf", h, lp["up"].astype(cdt))
    act = constrain(jax.nn.silu(gate) * up, ("batch", "seq", "mlp"))
    out = jnp.einsum("btf,fd->btd", act, lp["down"].astype(cdt))
    if "post_mlp_norm" in lp:
        out = _rms_norm(out, lp["post_mlp_norm"], cfg.rms_norm_eps)
    return constrain(x_btd + out, ("batch", "seq", "act_embed"))


def _by_window(cfg: ModelConfig, sliding, attend):
    """`attend(window)` with the layer's window; a `lax.cond` when `sliding` is traced (scan)."""
    if isinstance(sliding, bool):
        return attend(cfg.sliding_window if sliding else None)
    return jax.lax.cond(sliding, lambda: attend(cfg.sliding_window), lambda: attend(None))


def _layer_kinds(cfg: ModelConfig):
    """(xs, static) for a scan: per-layer sliding flags when mixed, else one static flag."""
    if len(set(cfg.layer_types)) == 1:
        return None, cfg.sliding_layers[0]
    return jnp.asarray(cfg.sliding_layers), None


def _embed(cfg: ModelConfig, params: dict, input_ids):
    x = jnp.take(params["embed"], input_ids, axis=0).astype(jnp.dtype(cfg.compute_dtype))
    return constrain(x, ("batch", "seq", "act_embed"))


# ----------------------------------------------------------------------------------------------
# Public forward passes


def default_positions(attention_mask_bt) -> jax.Array:
    """cumsum(mask) - 1 clipped at 0: left padding gets position 0, real tokens 0, 1, 2, ..."""
    return jnp.maximum(jnp.cumsum(attention_mask_bt.astype(jnp.int32), axis=-1) - 1, 0)


def hidden_states(cfg: ModelConfig, params: dict, input_ids, attention_mask=None,
                  positions=None) -> jax.Array:
    """Final-normed hidden states [B,T,D] (compute dtype)."""
    if attention_mask is None:
        attention_mask = jnp.ones(input_ids.shape, bool)
    mask_bt = attention_mask.astype(bool)
    if positions is None:
        positions = default_positions(mask_bt)
    tables = _rope_tables(cfg, positions)

    def layer(lp, x, sliding):
        q, k, v = _qkv(cfg, lp, x, tables, sliding)
        attn = _by_window(cfg, sliding, lambda w: self_attention(
            cfg.attention_impl, q, k, v, mask_bt, window=w, block_size=cfg.attention_block_size))
        return _finish(cfg, lp, x, attn)

    x = _embed(cfg, params, input_ids)
    layers = params["layers"]
    if cfg.scan_layers:
        flags, static = _layer_kinds(cfg)

        def body(x, xs):
            lp, sliding = xs if flags is not None else (xs, static)
            step = functools.partial(layer, sliding=sliding)
            if cfg.remat:
                step = jax.checkpoint(step, prevent_cse=False)
            return step(lp, x), None

        x, _ = jax.lax.scan(body, x, (layers, flags) if flags is not None else layers)
    else:
        for i, sliding in enumerate(cfg.sliding_layers):
            step = functools.partial(layer, sliding=sliding)
            if cfg.remat:
                step = jax.checkpoint(step)
            x = step(jax.tree.map(lambda a: a[i], layers), x)
    return _rms_norm(x, params["final_norm"], cfg.rms_norm_eps)


def unembedding(cfg: ModelConfig, params: dict) -> jax.Array:
    """The [D,V] output projection: the embedding transposed when tied, else `lm_head`."""
    return params["embed"].T if cfg.tie_word_embeddings else params["lm_head"]


def logits_from_hidden(cfg: ModelConfig, params: dict, h) -> jax.Array:
    """float32 logits [..., V] from final-normed hidden states [..., D]."""
    w_dv = unembedding(cfg, params).astype(h.dtype)
    logits = jnp.einsum("...d,dv->...v", h, w_dv, preferred_element_type=jnp.float32)
    return constrain(logits, ("batch",) + (None,) * (logits.ndim - 2) + ("vocab",)) \
        if logits.ndim >= 2 else logits


def forward(cfg: ModelConfig, params: dict, input_ids, attention_mask=None,
            positions=None) -> jax.Array:
    """float32 logits [B,T,V]; positions default to cumsum(mask)-1 (left padding works)."""
    return logits_from_hidden(cfg, params, hidden_states(cfg, params, input_ids, attention_mask,
                                                         positions))


# ----------------------------------------------------------------------------------------------
# KV-cache path (the sampler's prefill and decode)


def init_kv_cache(cfg: ModelConfig, batch: int, max_len: int, dtype=jnp.float32) -> dict:
    """{"k", "v"}: zeros in `dtype`, [L,B,S,K,H] (cfg.kv_cache_layout "rows_major") or [L,S,K,B,H]
    ("slots_major": the order XLA:TPU's decode loop keeps the cache in, so that a cache handed from the
    prefill to the decode program needs no relayout; with [L,B,S,K,H] the TPU decode program copied the
    whole cache, twice its memory, while on CPU "rows_major" decodes faster)."""
    shape = (cfg.num_layers, batch, max_len, cfg.num_kv_heads, cfg.head_dim)
    if cfg.kv_cache_layout == "slots_major":
        shape = (cfg.num_layers, max_len, cfg.num_kv_heads, batch, cfg.head_dim)
    return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}


def forward_cached(cfg: ModelConfig, params: dict, input_ids, positions, cache: dict,
                   slot_mask, write_index) -> tuple[jax.Array, dict]:
    """Run T new tokens against the cache: returns (final-normed h [B,T,D], new cache).

    New keys/values are written at slots [write_index, write_index+T); the query at slot
    write_index+i sees slots j with slot_mask[b, j] and j <= write_index+i (and inside the window
    on sliding layers). `slot_mask [B,S]` must already mark the new slots valid.
    """
    write_index = jnp.asarray(write_index, jnp.int32)
    slot_mask = slot_mask.astype(bool)
    tables = _rope_tables(cfg, positions)
    cache_dtype = cache["k"].dtype
    cdt = jnp.dtype(cfg.compute_dtype)

    slots_major = cfg.kv_cache_layout == "slots_major"  # [L,S,K,B,H], else [L,B,S,K,H]
    to_cache = (lambda x_btkh: jnp.transpose(x_btkh, (1, 2, 0, 3))) if slots_major else (lambda x: x)
    from_cache = (lambda x_skbh: jnp.transpose(x_skbh, (2, 0, 1, 3))) if slots_major else (lambda x: x)
    at_slot = (lambda index: (index, write_index, 0, 0, 0)) if slots_major else (lambda index: (index, 0, write_index, 0, 0))

    def layer(lp, x, ck, cv, index, sliding):
        q, k_btkh, v_btkh = _qkv(cfg, lp, x, tables, sliding)
        ck = jax.lax.dynamic_update_slice(ck, to_cache(k_btkh).astype(cache_dtype)[None], at_slot(index))
        cv = jax.lax.dynamic_update_slice(cv, to_cache(v_btkh).astype(cache_dtype)[None], at_slot(index))
        k_bskh = from_cache(jax.lax.dynamic_index_in_dim(ck, index, keepdims=False)).astype(cdt)
        v_bskh = from_cache(jax.lax.dynamic_index_in_dim(cv, index, keepdims=False)).astype(cdt)
        attn = _by_window(cfg, sliding, lambda w: cached_attention(
            cfg.attention_impl, q, k_bskh, v_bskh, slot_mask, q_offset=write_index, window=w,
            block_size=cfg.attention_block_size))
        return _finish(cfg, lp, x, attn), ck, cv

    x = _embed(cfg, params, input_ids)
    ck, cv = cache["k"], cache["v"]
    layers = params["layers"]
    if cfg.scan_layers:
        flags, static = _layer_kinds(cfg)

        def body(carry, xs):
            x, ck, cv = carry
            index, lp, sliding = xs if flags is not None else (*xs, static)
            return layer(lp, x, ck, cv, index, sliding), None

        idx = jnp.arange(cfg.num_layers, dtype=jnp.int32)
        xs = (idx, layers, flags) if flags is not None else (idx, layers)
        (x, ck, cv), _ = jax.lax.scan(body, (x, ck, cv), xs)
    else:
        for i, sliding in enumerate(cfg.sliding_layers):
            x, ck, cv = layer(jax.tree.map(lambda a: a[i], layers), x, ck, cv, i, sliding)
    return _rms_norm(x, params["final_norm"], cfg.rms_norm_eps), {"k": ck, "v": cv}
