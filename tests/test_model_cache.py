"""The KV-cache path (`init_kv_cache` / `forward_cached`) against the full forward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sdpo_jax.models import (ModelConfig, forward_cached, hidden_states, init_kv_cache,
                             init_params)

QWEN2 = ModelConfig(model_type="qwen2", vocab_size=128, hidden_size=32, num_layers=2, num_heads=4,
                    num_kv_heads=2, head_dim=8, intermediate_size=64, qkv_bias=True)
OLMO3 = ModelConfig(model_type="olmo3", vocab_size=128, hidden_size=32, num_layers=3, num_heads=4,
                    num_kv_heads=1, head_dim=16, intermediate_size=64, qk_norm="full",
                    norm_placement="post", sliding_window=5, rope_theta=500000.0,
                    rope_scaling={"rope_type": "yarn", "factor": 4.0,
                                  "original_max_position_embeddings": 16},
                    layer_types=("sliding_attention", "full_attention", "sliding_attention"),
                    tie_word_embeddings=False)


def random_params(cfg, seed=0):
    """init_params with every leaf perturbed (norms != 1, biases != 0) so all paths matter."""
    params = init_params(cfg, jax.random.key(seed))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: x + 0.05 * rng.standard_normal(x.shape, np.float32), params)


def _batch(cfg, b=2, t=20, pads=(0, 4), seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, cfg.vocab_size, (b, t)).astype(np.int32)
    mask = np.ones((b, t), bool)
    for row, p in enumerate(pads):
        mask[row, :p] = False
    return ids, mask


def _run_cached(cfg, params, ids, mask, prompt_len, max_len):
    """Prefill the first `prompt_len` tokens, then decode the rest one by one."""
    b, t = ids.shape
    mask = np.asarray(mask)
    pos = np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int32)  # default_positions
    cache = init_kv_cache(cfg, b, max_len, jnp.float32)
    slot = np.zeros((b, max_len), bool)
    slot[:, :prompt_len] = mask[:, :prompt_len]
    step = jax.jit(forward_cached, static_argnums=0)
    h, cache = step(cfg, params, ids[:, :prompt_len], pos[:, :prompt_len], cache, slot,
                    np.int32(0))
    outs = [np.asarray(h)]
    for i in range(prompt_len, t):
        slot[:, i] = True
        h, cache = step(cfg, params, ids[:, i:i + 1], pos[:, i:i + 1], cache, slot, np.int32(i))
        outs.append(np.asarray(h))
    return np.concatenate(outs, axis=1), cache


@pytest.mark.parametrize("cfg", [QWEN2, OLMO3], ids=["qwen2", "olmo3_sliding_yarn"])
@pytest.mark.parametrize("scan,layout", [(False, "rows_major"), (True, "rows_major"), (True, "slots_major")])
def test_prefill_then_decode_equals_full_forward(cfg, scan, layout):
    """Prefill + token-by-token decode through the KV cache gives the hidden states of
    `hidden_states` on the whole sequence (valid rows, fp32, 1e-5), with and without the layer
    scan, in both cache layouts ([L,B,S,K,H] and the TPU's [L,S,K,B,H]), including sliding-window
    layers on a sequence longer than the window."""
    cfg = cfg.replace(scan_layers=scan, kv_cache_layout=layout)
    params = random_params(cfg)
    ids, mask = _batch(cfg)
    ref = jax.jit(hidden_states, static_argnums=0)(cfg, params, ids, mask)
    got, cache = _run_cached(cfg, params, ids, mask, prompt_len=12, max_len=24)
    valid = np.asarray(mask)
    np.testing.assert_allclose(np.asarray(got)[valid], np.asarray(ref)[valid], atol=1e-5, rtol=0)
    want = (cfg.num_layers, 2, 24, cfg.num_kv_heads, cfg.head_dim)  # [L,B,S,K,H]
    if layout == "slots_major":
        want = (cfg.num_layers, 24, cfg.num_kv_heads, 2, cfg.head_dim)  # [L,S,K,B,H]
    assert cache["k"].shape == want


def test_blockwise_prefill_equals_full_forward():
    """A prefill through the blockwise kernel (T > 1, blocks smaller than the prompt, sliding
    window shorter than it) writes the cache and returns the full forward's hidden states."""
    cfg = OLMO3.replace(attention_impl="blockwise", attention_block_size=4)
    params = random_params(cfg)
    ids, mask = _batch(cfg, t=16, pads=(3, 0))
    ref = jax.jit(hidden_states, static_argnums=0)(cfg.replace(attention_impl="plain"), params,
                                                   ids, mask)
    got, _ = _run_cached(cfg, params, ids, mask, prompt_len=13, max_len=19)
    valid = np.asarray(mask)
    np.testing.assert_allclose(np.asarray(got)[valid], np.asarray(ref)[valid], atol=1e-5, rtol=0)


def test_decode_step_has_no_square_buffers():
    """A T=1 decode step over S cache slots allocates nothing of size S*S (no [S,S] mask or
    scores): its compiled temporary memory stays far below one fp32 [S,S] array."""
    cfg = QWEN2.replace(num_layers=1)
    params = init_params(cfg, jax.random.key(0))
    s = 4096
    cache = init_kv_cache(cfg, 1, s, jnp.float32)
    args = (params, jnp.zeros((1, 1), jnp.int32), jnp.zeros((1, 1), jnp.int32), cache,
            jnp.ones((1, s), bool), jnp.int32(7))
    compiled = jax.jit(lambda *a: forward_cached(cfg, *a)).lower(*args).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes
    assert temp < s * s * 4 / 16, temp
