"""Device mesh, logical-axis rules, and the shardings of parameters and batches.

Mesh axes: `data` (pure data parallel, parameters replicated), `fsdp` (data parallel with
parameters sharded along their `embed` dimension), `tensor` (heads / MLP / vocabulary split).

Every parameter and activation dimension has a logical name; `LOGICAL_RULES` maps it to mesh axes.
A dimension that the product of its mesh axes does not divide keeps only the leading axes that do
divide it (often none: replicated), so e.g. 2 KV heads on a `tensor` axis of 4 are replicated.

Activation constraints inside the model (`constrain`) apply only under `jax.set_mesh(mesh)`;
without a mesh context they are no-ops and the jit's in/out shardings decide the layout.
"""

from __future__ import annotations

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


def param_specs(cfg, mesh: Mesh) -> Any:
    """Tree of PartitionSpecs for the parameters of `cfg` on `mesh`."""
    from sdpo_jax.models import transformer  # local import: models import this module

    axes = transformer.param_logical_axes(cfg)
    shapes = transformer.param_shapes(cfg)
    mesh_shape = dict(mesh.shape)
    return jax.tree.map(lambda a, s: logical_to_spec(a, s, mesh_shape), axes, shapes,
                        is_leaf=lambda x: isinstance(x, tuple))


def param_shardings(cfg, mesh: Mesh) -> Any:
    """Tree of `NamedSharding`s, the same structure as `init_params(cfg, ...)`."""
    return jax.tree.map(lambda spec: NamedSharding(mesh, spec), param_specs(cfg, mesh),
                        is_leaf=lambda x: isinstance(x, P))


def batch_sharding(mesh: Mesh, ndim: int, batch_size: int | None = None) -> NamedSharding:
    """Leading (batch) dim over ('data', 'fsdp'), the rest replicated. With `batch_size`, axes that
    do not divide it are dropped (as for parameters)."""
    if batch_size is None:
        return NamedSharding(mesh, P(("data", "fsdp"), *([None] * (ndim - 1))))
    spec = logical_to_spec(("batch",) + (None,) * (ndim - 1), (batch_size,) + (1,) * (ndim - 1),
                           dict(mesh.shape))
    return NamedSharding(mesh, spec)


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
# Every process runs the same program. Host-side data (prompts, rollouts, scores) is process-local:
# process p holds rows [p*N/P, (p+1)*N/P) of each global batch of N rows (`process_block`). These
# helpers agree on shapes, move process-local rows into global arrays and back, and gather small
# host values. On one process each of them is the identity (no collective runs).


def process_block(num_rows: int, process_index: int | None = None, process_count: int | None = None) -> slice:
    """Rows [p*N/P, (p+1)*N/P) of a global batch of N rows: the block that process p holds."""
    p = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    if num_rows % count:
        raise ValueError(f"a global batch of {num_rows} rows does not split evenly over {count} processes; "
                         "make data.prompts_per_step a multiple of the process count")
    per = num_rows // count
    return slice(p * per, (p + 1) * per)


def agree_max(value: int) -> int:
    """The largest `value` over all processes (itself on one process): e.g. the longest prompt, so
    every process picks the same bucket and compiles the same program."""
    if jax.process_count() == 1:
        return int(value)
    from jax.experimental import multihost_utils

    return int(np.max(multihost_utils.process_allgather(np.asarray([value], np.int64))))


def gather_rows(x_local: np.ndarray) -> np.ndarray:
    """Every process's equally shaped host array, concatenated along axis 0 in process order (so the
    result is the global batch when each process holds its `process_block`); the input on one process."""
    x_local = np.asarray(x_local)
    if jax.process_count() == 1:
        return x_local
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x_local, tiled=True))


def global_from_host(x_global: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A global array from a host array that every process holds in full (each keeps its own shards)."""
    x_global = np.asarray(x_global)
    if jax.process_count() == 1:
        return jax.device_put(x_global, sharding)
    return jax.make_array_from_callback(x_global.shape, sharding, lambda index: x_global[index])


def replicated_key(key, mesh: Mesh):
    """A PRNG key replicated over `mesh` (works when the mesh spans processes, where `device_put` of a
    key to a non-addressable sharding is refused): the same key data on every process."""
    replicated = NamedSharding(mesh, P())
    if jax.process_count() == 1:
        return jax.device_put(key, replicated)
    data = jax.device_put(np.asarray(jax.random.key_data(key)), replicated)
    return jax.random.wrap_key_data(data, impl=jax.random.key_impl(key))


def local_rows(x: jax.Array) -> np.ndarray:
    """This process's rows of a global array whose leading dim is split over devices: the host array of
    its `process_block`, checked (a mesh whose row-sharded axes cross processes in another order raises).
    `np.asarray(x)` when the array is fully addressable (one process)."""
    if getattr(x, "is_fully_addressable", True):
        return np.asarray(x)
    starts = {}
    for shard in x.addressable_shards:
        rows = shard.index[0] if shard.index else slice(None)
        start = rows.start or 0
        starts.setdefault(start, shard)
    pieces, expect = [], None
    for start in sorted(starts):
        data = np.asarray(starts[start].data)
        if expect is not None and start != expect:
            raise ValueError(f"local_rows: this process's rows of a {x.shape} array are not one contiguous "
                             f"block (a gap at row {expect}); keep mesh.tensor within one host")
        pieces.append(data)
        expect = start + data.shape[0]
    block = process_block(x.shape[0])
    first = min(starts)
    if first != block.start or expect != block.stop:
        raise ValueError(f"local_rows: process {jax.process_index()} holds rows [{first}, {expect}) of a "
                         f"{x.shape} array, not its block [{block.start}, {block.stop}); devices must be "
                         "ordered by process with mesh.tensor within one host")
    return np.concatenate(pieces, axis=0)


def host_copy(tree: Any) -> Any:
    """Full host (numpy) copies of a pytree of global arrays on every process (an all-gather when they
    span processes): e.g. parameters to export. Every process must call it."""
    if jax.process_count() == 1:
        return jax.tree.map(np.asarray, tree)
    from jax.experimental import multihost_utils

    return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))
