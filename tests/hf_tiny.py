"""Tiny random Hugging Face causal LMs (Qwen2, Qwen3, Llama 3, OLMo 2, OLMo 3) for parity tests.

    model = tiny_hf_model("qwen3", tied=True)                 # torch model, fp32, eval mode
    path = tiny_model_dir(tmp_path, "llama3", tied=False)       # saved with save_pretrained

Every weight (norms and biases included) is random, so every code path shows up in the logits.
`llama3` is a Llama config with `rope_type="llama3"` scaling; `olmo3` mixes sliding and full layers.
`mistral` (every layer sliding) is no supported family: tests/test_model_parity.py registers it for
one test, to show that a family is one `models.FAMILIES` entry.
"""

from __future__ import annotations

import os

FAMILIES = ("qwen2", "qwen3", "llama3", "olmo2", "olmo3")

_BASE = dict(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
             rms_norm_eps=1e-6, pad_token_id=0, bos_token_id=1, eos_token_id=2)


def tiny_hf_config(family: str, *, tied: bool = False, **overrides):
    """A transformers config for `family` with tiny sizes; `overrides` replace any field."""
    import transformers as tf

    kw = dict(_BASE, tie_word_embeddings=tied)
    if family == "qwen2":
        cls = tf.Qwen2Config
        kw.update(rope_theta=10000.0)
    elif family == "qwen3":
        cls = tf.Qwen3Config
        kw.update(head_dim=16, rope_theta=1000000.0)  # head_dim independent of hidden/heads
    elif family == "llama3":
        cls = tf.LlamaConfig
        kw.update(head_dim=8, rope_theta=500000.0, rope_scaling={
            "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 256})
    elif family == "olmo2":
        cls = tf.Olmo2Config
        kw.update(rope_theta=500000.0)
    elif family == "olmo3":
        cls = tf.Olmo3Config
        layers = overrides.get("num_hidden_layers", kw["num_hidden_layers"])
        kw.update(sliding_window=8, rope_theta=500000.0,
                  layer_types=["full_attention" if i % 2 else "sliding_attention"
                               for i in range(layers)])
    elif family == "mistral":
        cls = tf.MistralConfig
        kw.update(head_dim=8, sliding_window=6, rope_theta=10000.0)
    else:
        raise ValueError(f"unknown family {family!r}; use one of {FAMILIES} or 'mistral'")
    kw.update(overrides)
    return cls(**kw)


def tiny_hf_model(family: str, *, tied: bool = False, seed: int = 0, **overrides):
    """A random fp32 torch `*ForCausalLM` (eval mode, eager attention) for `family`."""
    import torch
    import transformers as tf

    config = tiny_hf_config(family, tied=tied, **overrides)
    torch.manual_seed(seed)
    model = tf.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    model = model.float().eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    if tied:
        assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    return model


def tiny_model_dir(tmp_path, family: str, *, tied: bool = False, seed: int = 0,
                   max_shard_size=None, **overrides) -> str:
    """Save a tiny random model to `tmp_path/<family>` (safetensors); returns the directory."""
    model = tiny_hf_model(family, tied=tied, seed=seed, **overrides)
    out = os.path.join(str(tmp_path), f"{family}{'_tied' if tied else ''}")
    kwargs = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    model.save_pretrained(out, **kwargs)
    return out
