"""Hugging Face I/O: config translation, sharded checkpoints, memory while loading, round trips
through transformers, and the clear errors for bad checkpoints."""

import json
import os
import struct
import tracemalloc

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from sdpo_jax.models import (CheckpointError, ModelConfig, ModelConfigError, config_from_hf,
                             config_to_hf, forward, load_pretrained, save_pretrained)
from sdpo_jax.models import param_shardings
from sdpo_jax.sharding import make_mesh
from tests.hf_tiny import FAMILIES, tiny_hf_config, tiny_hf_model, tiny_model_dir

_fwd = jax.jit(forward, static_argnums=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_config_translation_round_trips(family):
    """config_from_hf reads transformers' own config dict, and config_to_hf -> config_from_hf gives
    the same ModelConfig back (family traits: bias, q/k norm, norm placement, rope, windows)."""
    hf = tiny_hf_config(family, tied=True).to_dict()
    cfg = config_from_hf(hf)
    expect = {"qwen2": ("none", "pre", True), "qwen3": ("per_head", "pre", False),
              "llama3": ("none", "pre", False), "olmo2": ("full", "post", False),
              "olmo3": ("full", "post", False)}[family]
    assert (cfg.qk_norm, cfg.norm_placement, cfg.qkv_bias) == expect
    assert cfg.tie_word_embeddings and cfg.head_dim == hf.get("head_dim", 8)
    assert config_from_hf(config_to_hf(cfg)) == cfg
    if family == "llama3":
        assert dict(cfg.rope_scaling)["rope_type"] == "llama3"
    if family == "olmo3":
        assert cfg.layer_types == ("sliding_attention", "full_attention")
        assert cfg.sliding_window == 8


@pytest.mark.parametrize("model_type,field,value", [
    ("qwen2", "qkv_bias", False), ("qwen3", "qk_norm", "none"), ("olmo2", "qk_norm", "per_head"),
    ("llama", "norm_placement", "post"),
    ("llama", "layer_types", ("full_attention", "sliding_attention"))])
def test_export_refuses_a_block_its_family_cannot_say(model_type, field, value):
    """config_to_hf refuses a config whose family's config.json would read back another block
    (q/k/v bias, q/k norm, norm placement, layer types), naming the field and what it reads."""
    cfg = ModelConfig(model_type=model_type, sliding_window=4, **{field: value})
    with pytest.raises(ModelConfigError, match=rf"model_type='{model_type}' cannot export {field}=.*"
                                               r"its config.json gives"):
        config_to_hf(cfg)


def test_v4_style_config_json_is_read():
    """A transformers-v4 config.json (rope_theta + rope_scaling at top level, as real Llama 3.1 /
    OLMo 3 checkpoints ship) maps to the same rope settings; OLMo 3 scales only full layers."""
    hf = {"model_type": "olmo3", "architectures": ["Olmo3ForCausalLM"], "vocab_size": 64,
          "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 4,
          "num_attention_heads": 4, "num_key_value_heads": 4, "rope_theta": 500000,
          "rope_scaling": {"rope_type": "yarn", "factor": 8.0,
                           "original_max_position_embeddings": 8192},
          "sliding_window": 4096, "max_position_embeddings": 65536}
    cfg = config_from_hf(hf)
    assert cfg.layer_types == ("sliding_attention",) * 3 + ("full_attention",)
    assert dict(cfg.rope_scaling)["factor"] == 8.0 and cfg.sliding_rope_scaling is None
    assert cfg.rope_theta == cfg.sliding_rope_theta == 500000.0


@pytest.mark.parametrize("family,tied", [("qwen2", True), ("llama3", False), ("olmo3", False)])
def test_save_pretrained_round_trip_through_transformers(tmp_path, family, tied):
    """load -> save_pretrained -> transformers.AutoModelForCausalLM.from_pretrained gives the
    original model's logits (1e-5), and our own reload of the export is bit-identical."""
    import transformers

    src = tiny_model_dir(tmp_path / "src", family, tied=tied)
    cfg, params = load_pretrained(src)
    out = save_pretrained(cfg, params, str(tmp_path / "export"))
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(
        out, attn_implementation="eager").float().eval()
    original = tiny_hf_model(family, tied=tied)
    ids = torch.tensor(np.random.default_rng(0).integers(3, 256, (2, 12)))
    with torch.no_grad():
        a, b = original(input_ids=ids).logits.numpy(), reloaded(input_ids=ids).logits.numpy()
    np.testing.assert_allclose(b, a, atol=1e-5, rtol=0)
    cfg2, params2 = load_pretrained(out)
    assert cfg2 == cfg
    for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(params2)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_sharded_checkpoint_loads_into_shardings_with_bounded_host_memory(tmp_path):
    """A checkpoint split into several safetensors shards + index loads into the rule shardings of
    an fsdp=2 x tensor=4 mesh, equal to a single-device load, and the peak Python-tracked memory
    (tracemalloc) of the load stays below twice the largest tensor, while the checkpoint itself is
    larger than that (so a full host copy would fail)."""
    path = tiny_model_dir(tmp_path, "qwen3", vocab_size=8192, hidden_size=128, head_dim=32,
                          intermediate_size=1024, num_hidden_layers=4, max_shard_size="3MB")
    with open(os.path.join(path, "model.safetensors.index.json")) as f:
        files = set(json.load(f)["weight_map"].values())
    assert len(files) >= 3
    largest = 8192 * 128 * 4
    total = sum(os.path.getsize(os.path.join(path, f)) for f in files)
    assert total > 2 * largest
    mesh = make_mesh(data=1, fsdp=2, tensor=4)
    load_pretrained(path, mesh=mesh)  # warm the small jits; we measure the data path
    tracemalloc.start()
    try:
        cfg, params = load_pretrained(path, mesh=mesh)
        jax.block_until_ready(params)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * largest, (peak, largest)
    shardings = param_shardings(cfg, mesh)
    for x, s in zip(jax.tree.leaves(params), jax.tree.leaves(shardings)):
        assert x.sharding == s
    _, single = load_pretrained(path)
    for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(single)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_bf16_checkpoint_and_dtype_argument(tmp_path):
    """A bfloat16 safetensors checkpoint loads (fp32 by default, bf16 with dtype='bfloat16') and
    saving with bf16 params writes a bf16 checkpoint transformers reads."""
    import transformers

    model = tiny_hf_model("qwen3").to(torch.bfloat16)
    src = str(tmp_path / "bf16")
    model.save_pretrained(src)
    cfg32, p32 = load_pretrained(src)
    cfg16, p16 = load_pretrained(src, dtype="bfloat16", compute_dtype="bfloat16")
    assert p32["embed"].dtype == jnp.float32 and p16["embed"].dtype == jnp.bfloat16
    assert cfg16.compute_dtype == "bfloat16"
    np.testing.assert_array_equal(np.asarray(p16["layers"]["q"].astype(jnp.float32)),
                                  np.asarray(p32["layers"]["q"]))
    out = save_pretrained(cfg16, p16, str(tmp_path / "out16"))
    back = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert back.model.embed_tokens.weight.dtype == torch.bfloat16
    torch.testing.assert_close(back.model.embed_tokens.weight, model.model.embed_tokens.weight)


# ----------------------------------------------------------------------------------------------
# Bad input: one clear message naming the field / tensor and what would work


def _rewrite_config(path, **changes):
    with open(os.path.join(path, "config.json")) as f:
        hf = json.load(f)
    hf.update(changes)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(hf, f)


def test_unsupported_model_type_and_architecture(tmp_path):
    """An unsupported model_type or architectures entry names the field and the supported values."""
    path = tiny_model_dir(tmp_path, "qwen2")
    _rewrite_config(path, model_type="gemma2")
    with pytest.raises(ModelConfigError, match=r"model_type='gemma2'.*supported.*qwen3"):
        load_pretrained(path)
    _rewrite_config(path, model_type="qwen2", architectures=["Qwen2ForSequenceClassification"])
    with pytest.raises(ModelConfigError, match=r"architectures=.*Qwen2ForCausalLM"):
        load_pretrained(path)
    with pytest.raises(ModelConfigError, match=r"hidden_act='gelu'.*silu"):
        config_from_hf(dict(tiny_hf_config("llama3").to_dict(), hidden_act="gelu"))
    with pytest.raises(ModelConfigError, match=r"rope type 'longrope'"):
        config_from_hf(dict(tiny_hf_config("llama3").to_dict(), rope_parameters={
            "rope_type": "longrope", "rope_theta": 1e4, "short_factor": [1], "long_factor": [1]}))


def test_missing_and_misshaped_tensors(tmp_path):
    """A tensor absent from the checkpoint, or with a shape that does not match config.json, raises
    CheckpointError naming the tensor, the file and the expected shape."""
    path = tiny_model_dir(tmp_path, "llama3")
    _rewrite_config(path, intermediate_size=48)
    with pytest.raises(CheckpointError, match=r"'model\.layers\.0\.mlp\.gate_proj\.weight' has "
                                              r"shape \(64, 32\), expected \(48, 32\)"):
        load_pretrained(path)
    _rewrite_config(path, intermediate_size=64)
    st = os.path.join(path, "model.safetensors")
    with open(st, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    header.pop("model.layers.1.self_attn.k_proj.weight")
    blob = json.dumps(header).encode()
    with open(st, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob + data)
    with pytest.raises(CheckpointError, match=r"'model\.layers\.1\.self_attn\.k_proj\.weight' is "
                                              r"missing"):
        load_pretrained(path)


def test_tying_read_from_the_weights_when_config_is_silent(tmp_path):
    """A config.json without tie_word_embeddings (its default differs between transformers
    versions) is tied exactly when the checkpoint has no lm_head.weight."""
    for tied in (True, False):
        path = tiny_model_dir(tmp_path / str(tied), "qwen2", tied=tied)
        with open(os.path.join(path, "config.json")) as f:
            hf = json.load(f)
        hf.pop("tie_word_embeddings", None)
        with open(os.path.join(path, "config.json"), "w") as f:
            json.dump(hf, f)
        cfg, params = load_pretrained(path)
        assert cfg.tie_word_embeddings == tied and ("lm_head" in params) == (not tied)


def test_missing_files(tmp_path):
    """A directory without config.json, or without safetensors, says what is missing."""
    with pytest.raises(CheckpointError, match="no config.json"):
        load_pretrained(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps(config_to_hf(ModelConfig())))
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        load_pretrained(str(tmp_path))


def test_bad_model_config_fields():
    """ModelConfig rejects unknown choices and inconsistent shapes with the field name."""
    with pytest.raises(ModelConfigError, match=r"qk_norm='rms'"):
        ModelConfig(qk_norm="rms")
    with pytest.raises(ModelConfigError, match=r"num_kv_heads=3.*divisor of num_heads=4"):
        ModelConfig(num_kv_heads=3)
    with pytest.raises(ModelConfigError, match=r"sliding_window=None"):
        ModelConfig(num_layers=1, layer_types=("sliding_attention",))
    with pytest.raises(ModelConfigError, match=r"attention_impl='flash'"):
        ModelConfig(attention_impl="flash")


def test_check_hf_tool_passes_on_a_matching_checkpoint(tmp_path, capsys):
    """`python -m sdpo_jax.tools.check_hf` encodes chat prompts with the directory's tokenizer,
    compares our logits with transformers' and exits 0 with PASS when they agree (tiny OLMo 3 +
    the demo tokenizer); a wrong --atol makes it exit 1 with FAIL."""
    from sdpo_jax.tokenizer import build_demo_tokenizer
    from sdpo_jax.tools import check_hf

    path = tiny_model_dir(tmp_path, "olmo3", vocab_size=512)
    build_demo_tokenizer(path)
    assert check_hf.main(["--model_dir", path, "--device", "cpu", "--enable_thinking"]) == 0
    out = capsys.readouterr().out
    assert "PASS" in out and out.count("argmax agree 100.0%") == 3 and "random" not in out
    assert check_hf.main(["--model_dir", path, "--device", "cpu", "--atol", "0"]) == 1
    assert "FAIL" in capsys.readouterr().out
