"""Hugging Face checkpoints in and out: `load_pretrained` and `save_pretrained`.

Loading reads `config.json` and one `model.safetensors` or several shards listed in
`model.safetensors.index.json`. Each file is memory-mapped; each tensor is viewed (no copy) in our
layout and handed to `jax.make_array_from_callback`, which copies only the slice each device needs
straight into its target sharding. Layer tensors are written into their stacked [L, ...] array on
device one layer at a time, so the host never holds more than about one tensor.

Saving streams tensor by tensor into safetensors files (header first: shapes are known from the
config), so it also never holds the model on the host.
"""

from __future__ import annotations

import functools
import json
import mmap
import os
import struct
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from etils import epath
from jax.sharding import NamedSharding, SingleDeviceSharding

from sdpo_jax.models.config import ModelConfig, config_from_hf, config_to_hf
from sdpo_jax.models.transformer import param_shapes, param_shardings

_ST_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16, "F64": np.float64,
              "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
              "BOOL": np.bool_}
_ST_NAMES = {np.dtype(v): k for k, v in _ST_DTYPES.items()}


class CheckpointError(ValueError):
    """A checkpoint file or tensor is missing or malformed; the message names it and the fix."""


# ----------------------------------------------------------------------------------------------
# Name mapping: (our path, layer or None) <-> HF tensor name, with the layout transforms


def _hf_names(cfg: ModelConfig) -> list[tuple[str, int | None, str]]:
    """[(our param path, layer index or None, HF tensor name)] for every parameter."""
    out = [("embed", None, "model.embed_tokens.weight"), ("final_norm", None, "model.norm.weight")]
    if not cfg.tie_word_embeddings:
        out.append(("lm_head", None, "lm_head.weight"))
    per_layer = {
        "q": "self_attn.q_proj.weight", "k": "self_attn.k_proj.weight",
        "v": "self_attn.v_proj.weight", "o": "self_attn.o_proj.weight",
        "gate": "mlp.gate_proj.weight", "up": "mlp.up_proj.weight", "down": "mlp.down_proj.weight",
    }
    if cfg.norm_placement == "pre":
        per_layer.update(attn_norm="input_layernorm.weight",
                         mlp_norm="post_attention_layernorm.weight")
    else:
        per_layer.update(post_attn_norm="post_attention_layernorm.weight",
                         post_mlp_norm="post_feedforward_layernorm.weight")
    if cfg.qkv_bias:
        per_layer.update(q_bias="self_attn.q_proj.bias", k_bias="self_attn.k_proj.bias",
                         v_bias="self_attn.v_proj.bias")
    if cfg.qk_norm != "none":
        per_layer.update(q_norm="self_attn.q_norm.weight", k_norm="self_attn.k_norm.weight")
    for i in range(cfg.num_layers):
        for ours, theirs in per_layer.items():
            out.append((f"layers/{ours}", i, f"model.layers.{i}.{theirs}"))
    return out


def _hf_shape(path: str, ours_shape: tuple) -> tuple:
    """The HF tensor shape of one (per-layer) parameter of our shape."""
    name = path.split("/")[-1]
    if name in ("q", "k", "v"):  # ours [D,N,H]; HF [N*H, D]
        d, n, h = ours_shape
        return (n * h, d)
    if name == "o":  # ours [N,H,D]; HF [D, N*H]
        n, h, d = ours_shape
        return (d, n * h)
    if name in ("gate", "up", "down", "lm_head"):
        return tuple(reversed(ours_shape))
    if name in ("q_bias", "k_bias", "v_bias", "q_norm", "k_norm"):
        return (int(np.prod(ours_shape)),)
    return tuple(ours_shape)


def _to_ours(path: str, hf_view: np.ndarray, ours_shape: tuple) -> np.ndarray:
    """A (lazy, where numpy allows) view of an HF tensor in our layout."""
    name = path.split("/")[-1]
    if name in ("q", "k", "v", "o", "gate", "up", "down", "lm_head"):
        return hf_view.T.reshape(ours_shape)
    return hf_view.reshape(ours_shape)


def _to_hf(path: str, ours: np.ndarray) -> np.ndarray:
    name = path.split("/")[-1]
    if name in ("q", "k", "v"):
        return ours.reshape(ours.shape[0], -1).T
    if name == "o":
        return ours.reshape(-1, ours.shape[-1]).T
    if name in ("gate", "up", "down", "lm_head"):
        return ours.T
    return ours.reshape(-1) if name in ("q_bias", "k_bias", "v_bias", "q_norm", "k_norm") else ours


# ----------------------------------------------------------------------------------------------
# Minimal safetensors reader (memory-mapped, bf16 via ml_dtypes) and streaming writer


class _SafetensorsFile:
    def __init__(self, path: str):
        self.path = path
        self._file = open(path, "rb")
        try:
            (n,) = struct.unpack("<Q", self._file.read(8))
            self.header = json.loads(self._file.read(n))
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(f"{path}: not a readable safetensors file ({e}).") from e
        self.header.pop("__metadata__", None)
        self._data_start = 8 + n
        self._mmap = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)

    def view(self, name: str) -> np.ndarray:
        info = self.header[name]
        if info["dtype"] not in _ST_DTYPES:
            raise CheckpointError(f"{self.path}: tensor {name!r} has dtype {info['dtype']}, "
                                  f"which is not supported ({sorted(_ST_DTYPES)}).")
        begin, end = info["data_offsets"]
        arr = np.frombuffer(self._mmap, dtype=_ST_DTYPES[info["dtype"]],
                            count=(end - begin) // np.dtype(_ST_DTYPES[info["dtype"]]).itemsize,
                            offset=self._data_start + begin)
        return arr.reshape(info["shape"])

    def close(self):
        try:
            self._mmap.close()
        except BufferError:  # a view is still alive; the mapping closes when it is collected
            pass
        self._file.close()


def _checkpoint_index(path: str) -> dict[str, str]:
    """{tensor name: safetensors file path} for a checkpoint directory."""
    index_path = os.path.join(path, "model.safetensors.index.json")
    single = os.path.join(path, "model.safetensors")
    if os.path.exists(index_path):
        with open(index_path) as f:
            weight_map = json.load(f).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index_path}: no 'weight_map' dict; re-save the checkpoint.")
        return {k: os.path.join(path, v) for k, v in weight_map.items()}
    if os.path.exists(single):
        return {k: single for k in _SafetensorsFile(single).header}
    found = sorted(os.listdir(path)) if os.path.isdir(path) else "not a directory"
    raise CheckpointError(
        f"{path}: no model.safetensors or model.safetensors.index.json (found: {found}); "
        "save the model with transformers' save_pretrained(safe_serialization=True).")


def _write_safetensors(path: str, entries: list[tuple[str, tuple, np.dtype]], produce) -> None:
    """Write tensors [(name, shape, dtype)] whose data `produce(name)` returns, one at a time."""
    header, offset = {}, 0
    for name, shape, dtype in entries:
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        header[name] = {"dtype": _ST_NAMES[np.dtype(dtype)], "shape": list(shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header["__metadata__"] = {"format": "pt"}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * ((-len(blob)) % 8)
    with epath.Path(path).open("wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name, shape, dtype in entries:
            arr = np.ascontiguousarray(produce(name), dtype=dtype)
            if arr.shape != tuple(shape):
                raise CheckpointError(f"internal: {name} has shape {arr.shape}, expected {shape}")
            f.write(arr.tobytes())


# ----------------------------------------------------------------------------------------------
# Load


def _sharding_for(path_parts: tuple, shardings, default):
    if shardings is None:
        return default
    node = shardings
    for p in path_parts:
        node = node[p]
    return node


@functools.lru_cache(maxsize=None)
def _zeros_fn(shape, dtype, sharding):
    return jax.jit(lambda: jnp.zeros(shape, dtype), out_shardings=sharding)


@functools.lru_cache(maxsize=None)
def _set_layer_fn(sharding):
    def set_layer(stacked, layer, i):
        return jax.lax.dynamic_update_index_in_dim(stacked, layer.astype(stacked.dtype), i, 0)
    return jax.jit(set_layer, out_shardings=sharding, donate_argnums=0)


def _layer_sharding(sharding):
    """The sharding of one layer slice of a stacked [L, ...] parameter."""
    if isinstance(sharding, NamedSharding):
        return NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(*sharding.spec[1:]))
    return sharding


def _device_array(view: np.ndarray, sharding, dtype) -> jax.Array:
    def slice_for(index):
        return np.asarray(view[index]).astype(dtype, copy=False)
    return jax.make_array_from_callback(view.shape, sharding, slice_for)


def load_pretrained(path: str, *, mesh=None, dtype: str | None = None,
                    **config_overrides) -> tuple[ModelConfig, dict]:
    """(ModelConfig, params) from a local Hugging Face checkpoint directory.

    `mesh`: place each parameter straight into `param_shardings(cfg, mesh)` (else device 0).
    `dtype`: the parameter dtype ("float32" default, "bfloat16"); `config_overrides` set other
    `ModelConfig` fields (compute_dtype, attention_impl, scan_layers, remat, ...).
    """
    config_path = os.path.join(path, "config.json")
    if not os.path.exists(config_path):
        raise CheckpointError(f"{path}: no config.json; point to a Hugging Face model directory.")
    with open(config_path) as f:
        hf_config = json.load(f)
    if dtype is not None:
        config_overrides["param_dtype"] = dtype
    index = _checkpoint_index(path)
    if "tie_word_embeddings" not in hf_config:  # the default differs across transformers versions
        hf_config = dict(hf_config, tie_word_embeddings="lm_head.weight" not in index)
    cfg = config_from_hf(hf_config, **config_overrides)
    np_dtype = np.dtype(jnp.dtype(cfg.param_dtype))

    shardings = None
    if mesh is not None:
        shardings = param_shardings(cfg, mesh)
    default = SingleDeviceSharding(jax.devices()[0])

    shapes = param_shapes(cfg)
    files: dict[str, _SafetensorsFile] = {}
    flat: dict[str, Any] = {}
    try:
        for ours, layer, hf_name in _hf_names(cfg):
            parts = tuple(ours.split("/"))
            full_shape = functools.reduce(lambda node, p: node[p], parts, shapes)
            shape = full_shape[1:] if layer is not None else full_shape
            if hf_name not in index:
                raise CheckpointError(
                    f"{path}: tensor {hf_name!r} is missing from the checkpoint "
                    f"(model_type={cfg.model_type}, {cfg.num_layers} layers); the config.json and "
                    "the weights do not match.")
            file_path = index[hf_name]
            if file_path not in files:
                if not os.path.exists(file_path):
                    raise CheckpointError(f"{file_path}: listed in the index for {hf_name!r} "
                                          "but missing on disk.")
                files[file_path] = _SafetensorsFile(file_path)
            st = files[file_path]
            if hf_name not in st.header:
                raise CheckpointError(f"{file_path}: tensor {hf_name!r} is not in this file, "
                                      "although the index lists it there.")
            view = st.view(hf_name)
            want = _hf_shape(ours, shape)
            if tuple(view.shape) != want:
                raise CheckpointError(
                    f"{file_path}: tensor {hf_name!r} has shape {tuple(view.shape)}, expected "
                    f"{want} from config.json (hidden_size={cfg.hidden_size}, heads={cfg.num_heads}"
                    f", kv_heads={cfg.num_kv_heads}, head_dim={cfg.head_dim}, "
                    f"intermediate_size={cfg.intermediate_size}, vocab_size={cfg.vocab_size}).")
            ours_view = _to_ours(ours, view, shape)
            target = _sharding_for(parts, shardings, default)
            if layer is None:
                flat[ours] = _device_array(ours_view, target, np_dtype)
            else:
                if ours not in flat:
                    flat[ours] = _zeros_fn(tuple(full_shape), np_dtype, target)()
                layer_arr = _device_array(ours_view, _layer_sharding(target), np_dtype)
                flat[ours] = _set_layer_fn(target)(flat[ours], layer_arr, layer)
                del layer_arr
            del view, ours_view
    finally:
        for st in files.values():
            st.close()
    params: dict = {}
    for key, value in flat.items():
        node = params
        *parents, leaf = key.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return cfg, params


# ----------------------------------------------------------------------------------------------
# Save


def _host(x) -> np.ndarray:
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils
        x = multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(jax.device_get(x))


def save_pretrained(cfg: ModelConfig, params: dict, out_dir: str, *,
                    max_shard_bytes: int = 5 * 2**30, dtype: str | None = None) -> str:
    """Write `config.json`, `generation_config.json` and safetensors (sharded above
    `max_shard_bytes`, with `model.safetensors.index.json`) that `transformers` loads, into a local
    directory or a bucket (gs://, through etils.epath). Tensors go through the host one at a time; only
    process 0 writes. Returns `out_dir`."""
    dtype = np.dtype(jnp.dtype(dtype or cfg.param_dtype))
    names = _hf_names(cfg)
    shapes = param_shapes(cfg)

    def hf_shape(ours, layer):
        full = functools.reduce(lambda node, p: node[p], ours.split("/"), shapes)
        return _hf_shape(ours, full[1:] if layer is not None else full)

    def produce(hf_name):
        ours, layer = by_name[hf_name]
        node = functools.reduce(lambda n, p: n[p], ours.split("/"), params)
        return _to_hf(ours, _host(node[layer] if layer is not None else node)).astype(dtype)

    by_name = {hf: (ours, layer) for ours, layer, hf in names}
    entries = [(hf, hf_shape(ours, layer), dtype) for ours, layer, hf in names]
    shards, current, size = [], [], 0
    for entry in entries:
        nbytes = int(np.prod(entry[1])) * dtype.itemsize
        if current and size + nbytes > max_shard_bytes:
            shards.append(current)
            current, size = [], 0
        current.append(entry)
        size += nbytes
    shards.append(current)

    write = jax.process_index() == 0
    out = epath.Path(out_dir)  # a local directory or gs://
    if write:
        out.mkdir(parents=True, exist_ok=True)
        hf_config = config_to_hf(cfg)
        hf_config["torch_dtype"] = str(jnp.dtype(dtype).name)
        (out / "config.json").write_text(json.dumps(hf_config, indent=2))
        gen = {k: hf_config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")
               if hf_config.get(k) is not None}
        (out / "generation_config.json").write_text(json.dumps(gen, indent=2))
    weight_map, total = {}, 0
    for i, shard in enumerate(shards):
        fname = ("model.safetensors" if len(shards) == 1
                 else f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors")
        if write:
            _write_safetensors(os.fspath(out / fname), shard, produce)
        else:  # other processes still take part in the gathers
            for name, _, _ in shard:
                produce(name)
        for name, shape, _ in shard:
            weight_map[name] = fname
            total += int(np.prod(shape)) * dtype.itemsize
    if write and len(shards) > 1:
        (out / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return out_dir
