"""The model families: one `Family` entry per Hugging Face `model_type` in `FAMILIES`.

An entry says how the family's decoder is expressed in `ModelConfig`'s switches and how its
`config.json` reads and writes; `models/config.py` takes the model types it accepts, the family
defaults of a `ModelConfig` and every family rule of `config_from_hf` / `config_to_hf` from it.
Tensor names follow from the switches (`models/hf.py`), so a family with the same block as one of
these needs only its entry here (and its tiny model in `tests/hf_tiny.py`):

| family      | qkv bias | q/k norm               | norms        | sliding layers        |
|-------------|----------|------------------------|--------------|-----------------------|
| qwen2       | yes      | none                   | pre          | optional (layer_types)|
| qwen3       | optional | per_head ([H] weight)  | pre          | optional              |
| llama       | optional | none                   | pre          | no                    |
| olmo2       | optional | full ([N*H] weight)    | post         | no                    |
| olmo3       | optional | full                   | post         | 3 of 4 (layer_types)  |

"optional" bias: config.json's `attention_bias`. Sliding layers: config.json's `layer_types` when
present, else the family's rule (`Family.layer_types`).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

FULL, SLIDING = "full_attention", "sliding_attention"


def no_sliding_layers(hf: dict, num_layers: int) -> tuple[str, ...]:
    """Every layer full attention, whatever config.json says (Llama, OLMo 2)."""
    return (FULL,) * num_layers


def no_sliding_keys(layer_types: tuple[str, ...], sliding_window: int | None) -> dict:
    """Nothing to write: the family's config.json has no sliding-window fields."""
    return {}


def window_keys(layer_types: tuple[str, ...], sliding_window: int | None) -> dict:
    """`layer_types` and `sliding_window` (OLMo 3)."""
    return {"layer_types": list(layer_types), "sliding_window": sliding_window}


def qwen_layer_types(hf: dict, num_layers: int) -> tuple[str, ...]:
    """config.json's `layer_types`, else layers from `max_window_layers` on slide when
    `use_sliding_window` and `sliding_window` are set (Qwen2, Qwen3)."""
    if hf.get("layer_types"):
        return tuple(hf["layer_types"])
    slides = hf.get("use_sliding_window", False) and hf.get("sliding_window")
    first_sliding = hf.get("max_window_layers", num_layers)
    return tuple(SLIDING if slides and i >= first_sliding else FULL for i in range(num_layers))


def qwen_sliding_keys(layer_types: tuple[str, ...], sliding_window: int | None) -> dict:
    """`window_keys` plus the v4 fields `use_sliding_window` and `max_window_layers` (the first
    sliding layer)."""
    sliding = [i for i, t in enumerate(layer_types) if t == SLIDING]
    return {**window_keys(layer_types, sliding_window),
            "use_sliding_window": sliding_window is not None,
            "max_window_layers": sliding[0] if sliding else len(layer_types)}


def olmo3_layer_types(hf: dict, num_layers: int) -> tuple[str, ...]:
    """config.json's `layer_types`, else three sliding layers then one full, repeated (OLMo 3)."""
    if hf.get("layer_types"):
        return tuple(hf["layer_types"])
    return tuple(SLIDING if (i + 1) % 4 else FULL for i in range(num_layers))


@dataclasses.dataclass(frozen=True)
class Family:
    """One Hugging Face model family in `ModelConfig`'s switches, and its config.json rules."""

    architecture: str  # config.json `architectures[0]`: the causal-LM class transformers builds
    qk_norm: str = "none"  # none | per_head | full (`ModelConfig.qk_norm`)
    norm_placement: str = "pre"  # pre | post (`ModelConfig.norm_placement`)
    always_qkv_bias: bool = False  # q/k/v biases whatever config.json says; else its attention_bias
    rope_theta: float = 10000.0  # when config.json names none
    # sliding layers keep plain RoPE under a v4 top-level rope_scaling, and the export nests
    # rope_parameters per layer type (OLMo 3)
    rope_per_layer_type: bool = False
    # config.json dict, num_layers -> the attention kind of each layer
    layer_types: Callable[[dict, int], tuple[str, ...]] = no_sliding_layers
    # (layer_types, sliding_window) -> the config.json fields that say them
    sliding_keys: Callable[[tuple[str, ...], int | None], dict] = no_sliding_keys


FAMILIES: dict[str, Family] = {
    "qwen2": Family("Qwen2ForCausalLM", always_qkv_bias=True,
                    layer_types=qwen_layer_types, sliding_keys=qwen_sliding_keys),
    "qwen3": Family("Qwen3ForCausalLM", qk_norm="per_head",
                    layer_types=qwen_layer_types, sliding_keys=qwen_sliding_keys),
    "llama": Family("LlamaForCausalLM"),
    "olmo2": Family("Olmo2ForCausalLM", qk_norm="full", norm_placement="post"),
    "olmo3": Family("Olmo3ForCausalLM", qk_norm="full", norm_placement="post",
                    rope_theta=500000.0, rope_per_layer_type=True,
                    layer_types=olmo3_layer_types, sliding_keys=window_keys),
}
