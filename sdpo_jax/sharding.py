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
