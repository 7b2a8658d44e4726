"""Logit parity with Hugging Face transformers (PyTorch, fp32) for every supported family."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from tests.hf_tiny import FAMILIES, tiny_hf_model, tiny_model_dir
from sdpo_jax import models
from sdpo_jax.models import (config_from_hf, config_to_hf, forward, load_pretrained, rope_inv_freq,
                             save_pretrained)

_fwd = jax.jit(forward, static_argnums=0)


def _batch(vocab, b=3, t=24, pads=(0, 5, 11), seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, vocab, (b, t))
    mask = np.ones((b, t), np.int64)
    for row, p in enumerate(pads):
        mask[row, :p] = 0
        ids[row, :p] = 0
    return ids, mask


def _hf_logits(model, ids, mask, positions):
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                    position_ids=torch.tensor(positions))
    return out.logits.numpy()


def _max_diff(ours, ref, mask):
    return float(np.abs(np.asarray(ours) - ref)[mask.astype(bool)].max())


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("family", FAMILIES)
def test_logits_match_transformers(tmp_path, family, tied):
    """Loaded from the HF safetensors, our fp32 logits equal transformers' on a left-padded batch
    (valid positions, max |diff| <= 1e-4) for plain attention without the layer scan and for
    blockwise attention with the scan (OLMo 3: sliding layers, sequence longer than the window)."""
    path = tiny_model_dir(tmp_path, family, tied=tied)
    model = tiny_hf_model(family, tied=tied)
    ids, mask = _batch(model.config.vocab_size)
    positions = np.maximum(np.cumsum(mask, -1) - 1, 0)
    ref = _hf_logits(model, ids, mask, positions)
    cfg, params = load_pretrained(path)
    assert cfg.tie_word_embeddings == tied and ("lm_head" in params) == (not tied)
    for variant in (dict(attention_impl="plain", scan_layers=False),
                    dict(attention_impl="blockwise", attention_block_size=8, scan_layers=True)):
        ours = _fwd(cfg.replace(**variant), params, jnp.asarray(ids), jnp.asarray(mask))
        assert ours.dtype == jnp.float32 and ours.shape == ref.shape
        assert _max_diff(ours, ref, mask) <= 1e-4, (variant, _max_diff(ours, ref, mask))


@pytest.mark.parametrize("family", ["llama3", "olmo3_yarn", "qwen2_sliding"])
def test_logits_match_beyond_position_2000(tmp_path, family):
    """Parity holds at positions 2000+ (llama3 rope scaling; OLMo 3 with YaRN on its full layers
    and plain RoPE on sliding ones; Qwen2 with a sliding layer), where wrong frequencies show."""
    overrides = {}
    if family == "olmo3_yarn":
        overrides = dict(rope_scaling={"rope_type": "yarn", "factor": 4.0,
                                       "original_max_position_embeddings": 512})
    if family == "qwen2_sliding":
        overrides = dict(use_sliding_window=True, sliding_window=6, max_window_layers=1,
                         layer_types=["full_attention", "sliding_attention"])
    base = family.split("_")[0]
    path = tiny_model_dir(tmp_path, base, seed=1, **overrides)
    model = tiny_hf_model(base, seed=1, **overrides)
    ids, mask = _batch(model.config.vocab_size, b=2, t=20, pads=(0, 3))
    positions = np.maximum(np.cumsum(mask, -1) - 1, 0) + 2037
    ref = _hf_logits(model, ids, mask, positions)
    cfg, params = load_pretrained(path)
    if family != "llama3":
        assert "sliding_attention" in cfg.layer_types and cfg.sliding_window < 20
    ours = _fwd(cfg, params, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(positions))
    assert _max_diff(ours, ref, mask) <= 1e-4


def _mistral_layer_types(hf: dict, num_layers: int) -> tuple[str, ...]:
    """Mistral slides every layer when config.json sets `sliding_window`, and none otherwise."""
    return (("sliding_attention" if hf.get("sliding_window") else "full_attention"),) * num_layers


def _mistral_sliding_keys(layer_types: tuple[str, ...], sliding_window: int | None) -> dict:
    """`sliding_window`, Mistral config.json's only sliding-window field (None: no sliding)."""
    return {"sliding_window": sliding_window if "sliding_attention" in layer_types else None}


MISTRAL = models.Family("MistralForCausalLM", layer_types=_mistral_layer_types,
                        sliding_keys=_mistral_sliding_keys)


def test_a_new_family_is_one_registry_entry(tmp_path, monkeypatch):
    """A family whose block the switches express (Mistral: Llama's block, every layer sliding)
    works from one `models.FAMILIES` entry: its checkpoint loads, our fp32 logits equal
    transformers' on a left-padded batch longer than the window (max |diff| <= 1e-4),
    config_to_hf -> config_from_hf gives the config back, and transformers reads our export as a
    Mistral model with the same logits (1e-5)."""
    import transformers

    monkeypatch.setitem(models.FAMILIES, "mistral", MISTRAL)
    model = tiny_hf_model("mistral")
    ids, mask = _batch(model.config.vocab_size)
    positions = np.maximum(np.cumsum(mask, -1) - 1, 0)
    ref = _hf_logits(model, ids, mask, positions)
    cfg, params = load_pretrained(tiny_model_dir(tmp_path, "mistral"))
    assert cfg.layer_types == ("sliding_attention",) * cfg.num_layers and cfg.sliding_window == 6
    assert (cfg.qkv_bias, cfg.qk_norm, cfg.norm_placement) == (False, "none", "pre")
    ours = _fwd(cfg, params, jnp.asarray(ids), jnp.asarray(mask))
    assert _max_diff(ours, ref, mask) <= 1e-4
    assert config_from_hf(config_to_hf(cfg)) == cfg
    out = save_pretrained(cfg, params, str(tmp_path / "export"))
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(
        out, attn_implementation="eager").float().eval()
    assert isinstance(reloaded, transformers.MistralForCausalLM)
    np.testing.assert_allclose(_hf_logits(reloaded, ids, mask, positions), ref, atol=1e-5, rtol=0)


ROPE_CASES = {
    "default": None,
    "linear": {"rope_type": "linear", "factor": 2.0},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 256},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 512},
    "yarn_attention_factor": {"rope_type": "yarn", "factor": 8.0, "beta_fast": 16,
                              "beta_slow": 2, "attention_factor": 1.3,
                              "original_max_position_embeddings": 1024},
}


@pytest.mark.parametrize("case", sorted(ROPE_CASES))
def test_rope_inverse_frequencies_equal_transformers(case):
    """`rope_inv_freq` returns transformers' inverse frequencies (rtol 1e-6) and cos/sin scale
    for every rope type we support (default, linear, llama3, yarn)."""
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    scaling = ROPE_CASES[case]
    hf_cfg = LlamaConfig(hidden_size=64, num_attention_heads=2, head_dim=32, rope_theta=500000.0,
                         max_position_embeddings=4096, rope_scaling=scaling)
    rope_type = hf_cfg.rope_parameters["rope_type"]
    if rope_type == "default":
        from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
        ref_inv, ref_scale = LlamaRotaryEmbedding.compute_default_rope_parameters(hf_cfg)
    else:
        ref_inv, ref_scale = ROPE_INIT_FUNCTIONS[rope_type](hf_cfg, "cpu")
    inv, scale = rope_inv_freq(32, 500000.0, scaling, 4096)
    np.testing.assert_allclose(inv, ref_inv.numpy(), rtol=1e-6)
    assert scale == pytest.approx(ref_scale, rel=1e-7)


def test_bf16_compute_close_to_fp32(tmp_path):
    """compute_dtype='bfloat16' (fp32 params) still returns fp32 logits close to the fp32 ones."""
    cfg, params = load_pretrained(tiny_model_dir(tmp_path, "qwen3"))
    ids, mask = _batch(cfg.vocab_size, b=2, pads=(0, 4))
    ref = _fwd(cfg, params, jnp.asarray(ids), jnp.asarray(mask))
    bf = _fwd(cfg.replace(compute_dtype="bfloat16"), params, jnp.asarray(ids), jnp.asarray(mask))
    assert bf.dtype == jnp.float32
    scale = float(np.abs(np.asarray(ref)).max())
    assert 0 < _max_diff(bf, np.asarray(ref), mask) < 0.05 * scale
