"""Device mesh, logical-axis rules, and the shardings of parameters and batches.

Parameter shardings come from the model's logical-axis table (`models.param_shardings`).

Mesh axes: `data` (pure data parallel, parameters replicated), `fsdp` (data parallel with
parameters sharded along their `embed` dimension), `tensor` (heads / MLP / vocabulary split).

Every parameter and activation dimension has a logical name; `LOGICAL_RULES` maps it to mesh axes.
A dimension that the product of its mesh axes does not divide keeps only the leading axes that do
divide it (often none: replicated), so e.g. 2 KV heads on a `tensor` axis of 4 are replicated.

Activation constraints inside the model (`constrain`) apply only under `jax.set_mesh(mesh)`;
without a mesh context they are no-ops and the jit's in/out shardings decide the layout.
"""

from __future__ import annotations

import contextlib
import math
import os
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis name -> mesh axes (in order); names not listed are replicated.
LOGICAL_RULES: dict[str, tuple[str, ...]] = {
    "batch": ("data", "fsdp"),
    "embed": ("fsdp",),
    "vocab": ("tensor",),
    "q_heads": ("tensor",),
    "kv_heads": ("tensor",),
    "mlp": ("tensor",),
    # replicated: "layers", "head_dim", "norm", "seq", "act_embed", "cache_seq"
}


class MeshError(ValueError):
    """The requested mesh does not fit the devices; the message names the axes and the count."""


def make_mesh(data: int = 1, fsdp: int = -1, tensor: int = 1, devices=None) -> Mesh:
    """A `Mesh` with Auto axes ('data', 'fsdp', 'tensor'); one axis may be -1 (= the rest)."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = {"data": data, "fsdp": fsdp, "tensor": tensor}
    n = len(devices)
    free = [k for k, v in sizes.items() if v == -1]
    for k, v in sizes.items():
        if v != -1 and (not isinstance(v, int) or v < 1):
            raise MeshError(
                f"mesh.{k}={v!r}: each mesh axis must be a positive int or -1 (the rest).")
    if len(free) > 1:
        raise MeshError(f"mesh {sizes}: at most one axis may be -1 (the rest of the {n} devices).")
    fixed = math.prod(v for v in sizes.values() if v != -1)
    if free:
        if n % fixed:
            raise MeshError(
                f"mesh data={data} fsdp={fsdp} tensor={tensor}: the fixed axes multiply to "
                f"{fixed}, "
                f"which does not divide the {n} devices; pick sizes whose product divides {n}.")
        sizes[free[0]] = n // fixed
    if math.prod(sizes.values()) != n:
        raise MeshError(
            f"mesh data={sizes['data']} fsdp={sizes['fsdp']} tensor={sizes['tensor']} needs "
            f"{math.prod(sizes.values())} devices, but there are {n}; make data*fsdp*tensor = {n} "
            "(or set one axis to -1).")
    grid = np.array(devices).reshape(sizes["data"], sizes["fsdp"], sizes["tensor"])
    return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * 3)


def logical_to_spec(logical_axes: tuple, shape: tuple, mesh_shape: dict[str, int],
                    rules: dict[str, tuple[str, ...]] | None = None) -> P:
    """The PartitionSpec for one array: each dim gets the leading mesh axes of its rule whose
    running product divides it; a mesh axis is used at most once per array."""
    rules = LOGICAL_RULES if rules is None else rules
    if len(logical_axes) != len(shape):
        raise ValueError(f"logical axes {logical_axes} do not match the shape {shape}")
    used: set[str] = set()
    spec = []
    for name, dim in zip(logical_axes, shape):
        chosen, prod = [], 1
        for axis in rules.get(name, ()) if name else ():
            size = mesh_shape.get(axis, 1)
            if axis in used or dim % (prod * size):
                break
            chosen.append(axis)
            prod *= size
        chosen = [a for a in chosen if mesh_shape.get(a, 1) > 1]
        used.update(chosen)
        spec.append(None if not chosen else chosen[0] if len(chosen) == 1 else tuple(chosen))
    return P(*spec)


def batch_sharding(mesh: Mesh, ndim: int, batch_size: int | None = None) -> NamedSharding:
    """Leading (batch) dim over ('data', 'fsdp'), the rest replicated. With `batch_size`, axes that
    do not divide it are dropped (as for parameters)."""
    if batch_size is None:
        return NamedSharding(mesh, P(("data", "fsdp"), *([None] * (ndim - 1))))
    spec = logical_to_spec(("batch",) + (None,) * (ndim - 1), (batch_size,) + (1,) * (ndim - 1),
                           dict(mesh.shape))
    return NamedSharding(mesh, spec)


def use_mesh(mesh: Mesh | None):
    """`jax.set_mesh(mesh)` (the model's activation constraints apply under it), or no context for None."""
    return contextlib.nullcontext() if mesh is None else jax.set_mesh(mesh)


def shard_params(params: Any, shardings: Any) -> Any:
    """Place each parameter into its sharding (`jax.device_put` leaf by leaf)."""
    return jax.tree.map(jax.device_put, params, shardings)


def context_mesh_shape() -> dict[str, int]:
    """{axis: size} of the `jax.set_mesh` context, without Manual axes (inside shard_map);
    {} when there is no mesh context."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return {}
    return {name: size for (name, size), kind in zip(mesh.shape.items(), mesh.axis_types)
            if kind != AxisType.Manual}


def constrain(x: jax.Array, logical_axes: tuple) -> jax.Array:
    """`with_sharding_constraint` by logical names under `jax.set_mesh`; a no-op without a mesh."""
    mesh_shape = context_mesh_shape()
    if not any(size > 1 for size in mesh_shape.values()):
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(logical_axes, x.shape, mesh_shape))


def _is_multi_process_launch() -> bool:
    env = os.environ
    if env.get("JAX_COORDINATOR_ADDRESS") or env.get("COORDINATOR_ADDRESS"):
        return True
    if int(env.get("JAX_NUM_PROCESSES", "1") or 1) > 1:
        return True
    # TPU pod slice: the worker list names more than one host.
    hosts = env.get("TPU_WORKER_HOSTNAMES") or env.get("CLOUD_TPU_TASK_HOSTNAMES") or ""
    if len([h for h in hosts.split(",") if h.strip()]) > 1:
        return True
    # SLURM / OpenMPI launches with several tasks.
    for key in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
        if int(env.get(key, "1") or 1) > 1:
            return True
    return False


def maybe_initialize_distributed() -> bool:
    """Call `jax.distributed.initialize()` on multi-process launches (detected from the
    environment: JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES, a TPU pod's worker host list, SLURM,
    OpenMPI). Returns whether it initialized. `main` is its only caller; call before any jax op."""
    if not _is_multi_process_launch():
        return False
    kwargs = {}
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        kwargs["coordinator_address"] = os.environ["JAX_COORDINATOR_ADDRESS"]
        if os.environ.get("JAX_NUM_PROCESSES"):
            kwargs["num_processes"] = int(os.environ["JAX_NUM_PROCESSES"])
        if os.environ.get("JAX_PROCESS_ID"):
            kwargs["process_id"] = int(os.environ["JAX_PROCESS_ID"])
    jax.distributed.initialize(**kwargs)
    return True


# ----------------------------------------------------------------------------- several processes
#
# Every process runs the same program on the same host-side data: the global prompt batch, every
# completion, every score, every RolloutBatch row (a generation batch is small: 256 rows x 8192 tokens
# of int32 is 8 MB). Device arrays are global; each process feeds its own shards from its full host
# copy (`global_from_host`) and reads results back whole (`host_copy`). Only the expensive host work
# is split: process p scores the rows of `scoring_block` and the scores are gathered
# (`gather_objects`). On one process each helper is the identity (no collective runs).


def scoring_block(num_rows: int, process_index: int | None = None, process_count: int | None = None) -> slice:
    """The rows process p scores out of `num_rows`: contiguous blocks in process order, sizes differing by
    at most one (a block may be empty when there are fewer rows than processes)."""
    p = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    base, extra = divmod(num_rows, count)
    start = p * base + min(p, extra)
    return slice(start, start + base + (p < extra))


def gather_objects(values: list) -> list:
    """Every process's list of JSON values, concatenated in process order (the input on one process):
    e.g. each process's scores of its `scoring_block`, giving every row's score on every process."""
    if jax.process_count() == 1:
        return list(values)
    import json

    from jax.experimental import multihost_utils

    data = np.frombuffer(json.dumps(values).encode(), np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.asarray([data.size], np.int64))).reshape(-1)
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[:data.size] = data
    rows = np.asarray(multihost_utils.process_allgather(padded[None], tiled=True))
    return [v for row, size in zip(rows, sizes) for v in json.loads(row[:size].tobytes().decode())]


def check_same_on_every_process(what: str, *arrays: np.ndarray) -> None:
    """Raise ValueError naming `what` unless every process passed equal host arrays (compared by
    checksum): host-side inputs of a global program (e.g. `sampling.generate`'s prompts) must agree."""
    if jax.process_count() == 1:
        return
    import zlib

    from jax.experimental import multihost_utils

    digest = 0
    for x in arrays:
        x = np.ascontiguousarray(x)
        digest = zlib.crc32(str((x.shape, x.dtype)).encode() + x.tobytes(), digest)
    digests = np.asarray(multihost_utils.process_allgather(np.asarray([digest], np.int64))).reshape(-1)
    if len(set(digests.tolist())) > 1:
        raise ValueError(f"{what} differ between processes (checksums {digests.tolist()}); every process must "
                         "pass the same global values")


def global_from_host(x_global: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A global array from a host array that every process holds in full (each keeps its own shards)."""
    x_global = np.asarray(x_global)
    if jax.process_count() == 1:
        return jax.device_put(x_global, sharding)
    return jax.make_array_from_callback(x_global.shape, sharding, lambda index: x_global[index])


def tree_from_host(tree: Any, shardings: Any) -> Any:
    """`global_from_host` leaf by leaf (a tree of host arrays every process holds in full)."""
    return jax.tree.map(global_from_host, tree, shardings)


def replicated_key(key, mesh: Mesh):
    """A PRNG key replicated over `mesh` (works when the mesh spans processes, where `device_put` of a
    key to a non-addressable sharding is refused): the same key data on every process."""
    replicated = NamedSharding(mesh, P())
    if jax.process_count() == 1:
        return jax.device_put(key, replicated)
    data = jax.device_put(np.asarray(jax.random.key_data(key)), replicated)
    return jax.random.wrap_key_data(data, impl=jax.random.key_impl(key))


def host_copy(tree: Any) -> Any:
    """Full host (numpy) copies of a pytree of global arrays on every process (an all-gather when they
    span processes): e.g. parameters to export. Every process must call it."""
    if jax.process_count() == 1:
        return jax.tree.map(np.asarray, tree)
    from jax.experimental import multihost_utils

    return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))
