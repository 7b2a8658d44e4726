"""The decoder (Qwen2/2.5, Qwen3, Llama 3.x, OLMo 2/3) as pure functions over a params dict.

    cfg, params = load_pretrained("/path/to/hf_dir", mesh=mesh, dtype="bfloat16")
    logits = forward(cfg, params, input_ids, attention_mask)          # [B,T,V] float32
    h = hidden_states(cfg, params, input_ids, attention_mask)         # [B,T,D] final-normed
    logits = logits_from_hidden(cfg, params, h)                       # or project chunks of
    w_dv = unembedding(cfg, params)                                   # the vocabulary yourself
    cache = init_kv_cache(cfg, batch, max_len, jnp.bfloat16)
    h, cache = forward_cached(cfg, params, ids, positions, cache, slot_mask, write_index)
    save_pretrained(cfg, params, out_dir)                             # transformers can load it
"""

from sdpo_jax.models.config import ModelConfig, ModelConfigError, config_from_hf, config_to_hf
from sdpo_jax.models.families import FAMILIES, Family
from sdpo_jax.models.transformer import (default_positions, forward, forward_cached,
                                         hidden_states, init_kv_cache, init_params,
                                         logits_from_hidden,
                                         param_logical_axes, param_shapes, param_shardings, param_specs, rope_inv_freq,
                                         unembedding)
from sdpo_jax.models.hf import CheckpointError, load_pretrained, save_pretrained

__all__ = [
    "ModelConfig", "ModelConfigError", "CheckpointError", "FAMILIES", "Family",
    "config_from_hf", "config_to_hf", "default_positions", "forward", "forward_cached",
    "hidden_states", "init_kv_cache", "init_params",
    "logits_from_hidden", "param_logical_axes", "param_shapes", "param_shardings", "param_specs", "rope_inv_freq", "unembedding",
    "load_pretrained", "save_pretrained",
]
