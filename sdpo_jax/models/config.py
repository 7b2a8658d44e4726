"""`ModelConfig`: the static description of one decoder, and its translation from/to HF
`config.json`.

One config covers the supported families; each family's defaults and config.json rules are its
entry in `models/families.py:FAMILIES`.

RoPE: `rope_theta` + `rope_scaling` apply to full-attention layers; sliding layers use
`sliding_rope_theta` / `sliding_rope_scaling` (OLMo 3 scales only its full layers; for the other
families `config_from_hf` copies the global rope onto both). `rope_scaling` is a sorted tuple of
(key, value) pairs so the config stays hashable (static under `jax.jit`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from sdpo_jax.models.families import FAMILIES, Family

ATTENTION_IMPLS = ("plain", "blockwise", "cudnn", "splash")
DTYPES = ("float32", "bfloat16", "float16")
ROPE_TYPES = ("default", "linear", "llama3", "yarn")


class ModelConfigError(ValueError):
    """A model config field is unsupported or inconsistent; the message names it and what works."""


def _unsupported(field: str, got: Any, want: str):
    raise ModelConfigError(f"ModelConfig.{field}={got!r} is not supported; use {want}.")


def _freeze(value: Any) -> Any:
    """Dicts -> sorted tuples of pairs, lists -> tuples (recursively), so the config is hashable."""
    if isinstance(value, dict):
        return tuple(sorted((str(k), _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def rope_dict(rope_scaling: tuple | None) -> dict:
    """The frozen `rope_scaling` pairs back as a dict ({} when None)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in (rope_scaling or ())}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Static shape and numerics of one decoder-only transformer (hashable: a `jit` static arg)."""

    model_type: str = "qwen3"
    vocab_size: int = 512
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 16
    intermediate_size: int = 128
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: tuple | None = None
    sliding_rope_theta: float | None = None  # None: same as rope_theta
    sliding_rope_scaling: tuple | None = None  # None: plain (unscaled) RoPE on sliding layers
    max_position_embeddings: int = 32768
    # None = the family's value (models/families.py)
    qkv_bias: bool | None = None
    qk_norm: str | None = None  # none | per_head (Qwen3) | full (OLMo 2/3)
    norm_placement: str | None = None  # pre | post (OLMo 2/3: norm after attention / MLP output)
    sliding_window: int | None = None
    layer_types: tuple = ()  # per layer "full_attention" | "sliding_attention"; () = all full
    tie_word_embeddings: bool = True
    param_dtype: str = "float32"
    compute_dtype: str = "float32"
    attention_impl: str = "plain"  # plain | blockwise | cudnn (GPU) | splash (TPU)
    attention_block_size: int = 512
    remat: bool = False
    scan_layers: bool = False
    # KV cache axis order: "rows_major" [L,B,S,K,H]; "slots_major" [L,S,K,B,H], the order XLA:TPU's decode
    # loop keeps the cache in (sampling.decode_model_config picks it per platform)
    kv_cache_layout: str = "rows_major"
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | tuple | None = None

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        if self.model_type not in FAMILIES:
            _unsupported("model_type", self.model_type, f"one of {tuple(FAMILIES)}")
        family = FAMILIES[self.model_type]
        if self.qkv_bias is None:
            set_("qkv_bias", family.always_qkv_bias)
        if self.qk_norm is None:
            set_("qk_norm", family.qk_norm)
        if self.norm_placement is None:
            set_("norm_placement", family.norm_placement)
        set_("rope_scaling", _freeze(self.rope_scaling) if self.rope_scaling else None)
        set_("sliding_rope_scaling",
             _freeze(self.sliding_rope_scaling) if self.sliding_rope_scaling else None)
        set_("layer_types", tuple(self.layer_types) or ("full_attention",) * self.num_layers)
        if isinstance(self.eos_token_id, list):
            set_("eos_token_id", tuple(self.eos_token_id))
        self._validate()

    def _validate(self):
        if self.qk_norm not in ("none", "per_head", "full"):
            _unsupported("qk_norm", self.qk_norm, "'none', 'per_head' or 'full'")
        if self.norm_placement not in ("pre", "post"):
            _unsupported("norm_placement", self.norm_placement, "'pre' or 'post'")
        if self.attention_impl not in ATTENTION_IMPLS:
            _unsupported("attention_impl", self.attention_impl, f"one of {ATTENTION_IMPLS}")
        if self.kv_cache_layout not in ("rows_major", "slots_major"):
            _unsupported("kv_cache_layout", self.kv_cache_layout, "'rows_major' or 'slots_major'")
        for field in ("param_dtype", "compute_dtype"):
            if getattr(self, field) not in DTYPES:
                _unsupported(field, getattr(self, field), f"one of {DTYPES}")
        for field in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads",
                      "head_dim", "intermediate_size", "attention_block_size"):
            if not isinstance(getattr(self, field), int) or getattr(self, field) < 1:
                _unsupported(field, getattr(self, field), "a positive integer")
        if self.num_heads % self.num_kv_heads:
            _unsupported("num_kv_heads", self.num_kv_heads,
                         f"a divisor of num_heads={self.num_heads} (grouped-query attention)")
        if self.head_dim % 2:
            _unsupported("head_dim", self.head_dim, "an even number (RoPE rotates pairs)")
        if len(self.layer_types) != self.num_layers:
            _unsupported("layer_types", self.layer_types,
                         f"a tuple of num_layers={self.num_layers} entries")
        for t in self.layer_types:
            if t not in ("full_attention", "sliding_attention"):
                _unsupported("layer_types", t, "'full_attention' or 'sliding_attention' per layer")
        if "sliding_attention" in self.layer_types and not self.sliding_window:
            _unsupported("sliding_window", self.sliding_window,
                         "a positive int when layer_types has 'sliding_attention'")
        for field in ("rope_scaling", "sliding_rope_scaling"):
            rope_type = rope_dict(getattr(self, field)).get("rope_type", "default")
            if rope_type not in ROPE_TYPES:
                _unsupported(f"{field}['rope_type']", rope_type, f"one of {ROPE_TYPES}")

    def replace(self, **changes) -> "ModelConfig":
        """A copy with `changes` applied (and validated). Changing `num_layers` alone keeps a
        uniform `layer_types` uniform."""
        if ("num_layers" in changes and "layer_types" not in changes
                and len(set(self.layer_types)) == 1):
            changes["layer_types"] = self.layer_types[:1] * changes["num_layers"]
        return dataclasses.replace(self, **changes)

    @property
    def sliding_layers(self) -> tuple[bool, ...]:
        return tuple(t == "sliding_attention" for t in self.layer_types)

    @property
    def num_params(self) -> int:
        d, f, n, k, h, v, layers = (self.hidden_size, self.intermediate_size, self.num_heads,
                                    self.num_kv_heads, self.head_dim, self.vocab_size,
                                    self.num_layers)
        per_layer = d * h * (2 * n + 2 * k) + 3 * d * f
        return layers * per_layer + v * d * (1 if self.tie_word_embeddings else 2)


# ----------------------------------------------------------------------------------------------
# Hugging Face config.json <-> ModelConfig


def _rope_from_hf(hf: dict, family: Family, layer_type: str) -> tuple[float, dict | None]:
    """(theta, scaling dict or None) for one layer type, from v4 (`rope_theta`/`rope_scaling`)
    or v5 (`rope_parameters`, possibly nested per layer type) config dicts."""
    params = hf.get("rope_parameters")
    if isinstance(params, dict) and layer_type in params:
        params = params[layer_type]
    elif isinstance(params, dict) and ("full_attention" in params or "sliding_attention" in params):
        params = params.get("full_attention")
    scaling = None
    if isinstance(params, dict) and params:
        theta = params.get("rope_theta", hf.get("rope_theta"))
        scaling = {k: v for k, v in params.items() if k not in ("rope_theta",)}
    else:
        theta = hf.get("rope_theta")
        scaling = dict(hf["rope_scaling"]) if hf.get("rope_scaling") else None
        if family.rope_per_layer_type and layer_type == "sliding_attention":
            scaling = None  # the family applies rope_scaling to full-attention layers only
    if theta is None:
        theta = family.rope_theta
    if scaling is not None:
        if "type" in scaling and "rope_type" not in scaling:
            scaling["rope_type"] = scaling.pop("type")
        scaling.setdefault("rope_type", "default")
        if scaling["rope_type"] == "default" and len(scaling) == 1:
            scaling = None
        elif scaling["rope_type"] in ("llama3", "yarn"):
            scaling.setdefault("original_max_position_embeddings",
                               hf.get("original_max_position_embeddings",
                                      hf.get("max_position_embeddings")))
        if scaling is not None and scaling.get("rope_type") not in ROPE_TYPES:
            raise ModelConfigError(
                f"config.json rope type {scaling.get('rope_type')!r} (rope_scaling / "
                f"rope_parameters) is not supported; supported: {ROPE_TYPES}.")
        if scaling is not None and scaling.get("partial_rotary_factor", 1.0) != 1.0:
            raise ModelConfigError("config.json partial_rotary_factor != 1 is not supported.")
    return float(theta), scaling


def config_from_hf(hf: dict, **overrides) -> ModelConfig:
    """A `ModelConfig` from a Hugging Face `config.json` dict (v4 or v5 layout).

    `overrides` set runtime fields (param_dtype, compute_dtype, attention_impl, scan_layers, ...).
    """
    model_type = hf.get("model_type")
    if model_type not in FAMILIES:
        archs = hf.get("architectures")
        raise ModelConfigError(
            f"config.json model_type={model_type!r} (architectures={archs}) is not supported; "
            f"supported model_type values: {tuple(FAMILIES)} "
            f"(architectures {sorted(f.architecture for f in FAMILIES.values())}).")
    family = FAMILIES[model_type]
    archs = hf.get("architectures") or [family.architecture]
    if archs[0] != family.architecture:
        raise ModelConfigError(
            f"config.json architectures={archs} is not supported for model_type={model_type!r}; "
            f"expected [{family.architecture!r}] (a causal LM head).")
    act = hf.get("hidden_act", "silu")
    if act != "silu":
        raise ModelConfigError(f"config.json hidden_act={act!r} is not supported; use 'silu'.")
    if hf.get("mlp_bias"):
        raise ModelConfigError("config.json mlp_bias=true is not supported; use false.")

    def need(key):
        if key not in hf:
            raise ModelConfigError(f"config.json is missing required field {key!r}.")
        return hf[key]

    num_layers = int(need("num_hidden_layers"))
    num_heads = int(need("num_attention_heads"))
    hidden = int(need("hidden_size"))
    head_dim = hf.get("head_dim") or hidden // num_heads
    num_kv = hf.get("num_key_value_heads") or num_heads

    layer_types = family.layer_types(hf, num_layers)
    sliding_window = hf.get("sliding_window") if "sliding_attention" in layer_types else None

    theta, scaling = _rope_from_hf(hf, family, "full_attention")
    s_theta, s_scaling = _rope_from_hf(hf, family, "sliding_attention")

    fields = dict(
        model_type=model_type,
        vocab_size=int(need("vocab_size")),
        hidden_size=hidden,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=int(num_kv),
        head_dim=int(head_dim),
        intermediate_size=int(need("intermediate_size")),
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        rope_theta=theta,
        rope_scaling=scaling,
        sliding_rope_theta=s_theta,
        sliding_rope_scaling=s_scaling,
        max_position_embeddings=int(hf.get("max_position_embeddings", 32768)),
        qkv_bias=family.always_qkv_bias or bool(hf.get("attention_bias", False)),
        qk_norm=family.qk_norm,
        norm_placement=family.norm_placement,
        sliding_window=int(sliding_window) if sliding_window else None,
        layer_types=layer_types,
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        pad_token_id=hf.get("pad_token_id"),
        bos_token_id=hf.get("bos_token_id"),
        eos_token_id=hf.get("eos_token_id"),
    )
    fields.update(overrides)
    return ModelConfig(**fields)


def config_to_hf(cfg: ModelConfig) -> dict:
    """The `config.json` dict for `cfg`, readable by transformers v4 and v5.

    Refuses a `cfg` whose block its family's config.json cannot say: reading the dict back must
    give the same q/k/v bias, q/k norm, norm placement and layer types."""
    family = FAMILIES[cfg.model_type]
    hf = {
        "architectures": [family.architecture],
        "model_type": cfg.model_type,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_position_embeddings,
        "rms_norm_eps": cfg.rms_norm_eps,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "attention_bias": cfg.qkv_bias,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "use_cache": True,
        "pad_token_id": cfg.pad_token_id,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": list(cfg.eos_token_id) if isinstance(cfg.eos_token_id, tuple)
        else cfg.eos_token_id,
        "torch_dtype": cfg.param_dtype,
    }
    full = {"rope_type": "default", "rope_theta": cfg.rope_theta, **rope_dict(cfg.rope_scaling)}
    # v4 readers look at rope_theta / rope_scaling; v5 at rope_parameters (it accepts both)
    hf["rope_theta"] = cfg.rope_theta
    hf["rope_scaling"] = rope_dict(cfg.rope_scaling) or None
    if family.rope_per_layer_type:
        sliding = {"rope_type": "default",
                   "rope_theta": cfg.sliding_rope_theta or cfg.rope_theta,
                   **rope_dict(cfg.sliding_rope_scaling)}
        hf["rope_parameters"] = {"full_attention": full, "sliding_attention": sliding}
    else:
        hf["rope_parameters"] = full
    hf.update(family.sliding_keys(cfg.layer_types, cfg.sliding_window))
    read_back = config_from_hf(hf)
    for field in ("qkv_bias", "qk_norm", "norm_placement", "layer_types"):
        if getattr(read_back, field) != getattr(cfg, field):
            raise ModelConfigError(
                f"model_type={cfg.model_type!r} cannot export {field}={getattr(cfg, field)!r}; "
                f"its config.json gives {getattr(read_back, field)!r}.")
    return hf
