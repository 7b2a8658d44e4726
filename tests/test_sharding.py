"""Mesh construction, logical-axis rules, and sharded forward == unsharded (8 fake CPU devices)."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from sdpo_jax import models, sharding
from sdpo_jax.models import ModelConfig, forward, init_params, param_shapes
from sdpo_jax.sharding import MeshError, make_mesh

CFG = ModelConfig(model_type="qwen3", vocab_size=256, hidden_size=32, num_layers=2, num_heads=4,
                  num_kv_heads=2, head_dim=8, intermediate_size=64, qk_norm="per_head",
                  qkv_bias=True, tie_word_embeddings=False)


def test_make_mesh_fills_the_rest_and_names_bad_shapes():
    """-1 takes the remaining devices; a shape that does not divide the device count raises
    MeshError naming the axes and the count."""
    assert dict(make_mesh().shape) == {"data": 1, "fsdp": 8, "tensor": 1}
    assert dict(make_mesh(data=2, fsdp=-1, tensor=2).shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert dict(make_mesh(1, 2, 4).shape) == {"data": 1, "fsdp": 2, "tensor": 4}
    with pytest.raises(MeshError, match=r"tensor=3.*8 devices"):
        make_mesh(data=1, fsdp=-1, tensor=3)
    with pytest.raises(MeshError, match=r"needs 4 devices, but there are 8"):
        make_mesh(data=1, fsdp=2, tensor=2)
    with pytest.raises(MeshError, match="at most one axis may be -1"):
        make_mesh(data=-1, fsdp=-1)
    assert all(t == jax.sharding.AxisType.Auto for t in make_mesh().axis_types)


def _expected_spec(path, mesh_shape):
    """The rules table spelled out by hand for CFG's parameters."""
    tensor, fsdp = mesh_shape["tensor"], mesh_shape["fsdp"]
    t = "tensor" if tensor > 1 else None
    f = "fsdp" if fsdp > 1 else None
    kv = t if CFG.num_kv_heads % tensor == 0 else None  # 2 KV heads on tensor=4: replicated
    name = path[-1]
    table = {
        "embed": (t, f), "lm_head": (f, t), "final_norm": (None,),
        "q": (None, f, t, None), "k": (None, f, kv, None), "v": (None, f, kv, None),
        "o": (None, t, None, f), "gate": (None, f, t), "up": (None, f, t), "down": (None, t, f),
        "q_bias": (None, t, None), "k_bias": (None, kv, None), "v_bias": (None, kv, None),
        "q_norm": (None, None), "k_norm": (None, None), "attn_norm": (None, None),
        "mlp_norm": (None, None),
    }
    return P(*table[name])


@pytest.mark.parametrize("fsdp,tensor", [(2, 4), (8, 1)])
def test_param_shardings_follow_the_rules(fsdp, tensor):
    """Each parameter's NamedSharding is what the logical rules say: embed dims on fsdp, heads /
    MLP / vocab on tensor, KV heads that do not divide the tensor axis replicated."""
    mesh = make_mesh(data=1, fsdp=fsdp, tensor=tensor)
    shardings = models.param_shardings(CFG, mesh)
    flat = jax.tree_util.tree_leaves_with_path(shardings)
    shapes = jax.tree.leaves(param_shapes(CFG), is_leaf=lambda x: isinstance(x, tuple))
    assert len(flat) == len(shapes)
    for path, s in flat:
        keys = tuple(k.key for k in path)
        assert s.mesh is mesh
        assert s.spec == _expected_spec(keys, dict(mesh.shape)), keys


def test_logical_to_spec_drops_axes_that_do_not_divide():
    """A dim keeps only the leading mesh axes whose product divides it; an axis is used once."""
    shape = {"data": 2, "fsdp": 4, "tensor": 2}
    assert sharding.logical_to_spec(("batch", None), (8, 3), shape) == P(("data", "fsdp"), None)
    assert sharding.logical_to_spec(("batch", None), (2, 3), shape) == P("data", None)
    assert sharding.logical_to_spec(("batch",), (3,), shape) == P(None)
    assert sharding.logical_to_spec(("q_heads", "kv_heads"), (4, 4), shape) == P("tensor", None)


@pytest.mark.parametrize("fsdp,tensor", [(2, 4), (8, 1)])
def test_sharded_forward_equals_unsharded(fsdp, tensor):
    """forward with parameters sharded by the rules and the batch over (data, fsdp), jitted with
    explicit in/out shardings, equals the single-device forward to 1e-5, with and without the
    activation constraints that `jax.set_mesh` turns on."""
    params = init_params(CFG, jax.random.key(0))
    rng = np.random.default_rng(0)
    ids = rng.integers(0, CFG.vocab_size, (8, 16)).astype(np.int32)
    mask = np.ones((8, 16), bool)
    mask[3, :5] = False
    ref = jax.jit(forward, static_argnums=0)(CFG, params, ids, mask)

    mesh = make_mesh(data=1, fsdp=fsdp, tensor=tensor)
    p_sh = models.param_shardings(CFG, mesh)
    sharded = sharding.shard_params(params, p_sh)
    assert sharded["layers"]["q"].sharding == p_sh["layers"]["q"]
    b_sh = sharding.batch_sharding(mesh, 2)
    out_sh = sharding.batch_sharding(mesh, 3)
    fwd = jax.jit(lambda p, i, m: forward(CFG, p, i, m), in_shardings=(p_sh, b_sh, b_sh),
                  out_shardings=out_sh)
    got = fwd(sharded, jax.device_put(ids, b_sh), jax.device_put(mask, b_sh))
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), atol=1e-5)
    with jax.set_mesh(mesh):
        got2 = fwd(sharded, jax.device_put(ids, b_sh), jax.device_put(mask, b_sh))
    np.testing.assert_allclose(np.asarray(got2), np.asarray(ref), atol=1e-5)
    assert got.sharding.spec == out_sh.spec


def test_init_params_directly_sharded():
    """init_params(..., shardings=) creates every parameter in its rule sharding, with the same
    values as the unsharded init."""
    mesh = make_mesh(data=1, fsdp=2, tensor=4)
    p_sh = models.param_shardings(CFG, mesh)
    params = init_params(CFG, jax.random.key(3), shardings=p_sh)
    ref = init_params(CFG, jax.random.key(3))
    for (path, x), s, r in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(p_sh),
                               jax.tree.leaves(ref)):
        assert x.sharding == s, path
        np.testing.assert_array_equal(np.asarray(x), np.asarray(r))


def test_distributed_init_only_on_multi_process_launches(monkeypatch):
    """maybe_initialize_distributed does nothing on a single-process launch and calls
    jax.distributed.initialize (with the coordinator from the environment) on a multi-process
    one."""
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    for key in ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES",
                "TPU_WORKER_HOSTNAMES", "CLOUD_TPU_TASK_HOSTNAMES", "SLURM_NTASKS",
                "OMPI_COMM_WORLD_SIZE", "JAX_PROCESS_ID"):
        monkeypatch.delenv(key, raising=False)
    assert sharding.maybe_initialize_distributed() is False and calls == []
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "w0")
    assert sharding.maybe_initialize_distributed() is False
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "w0,w1,w2,w3")
    assert sharding.maybe_initialize_distributed() is True and calls == [{}]
    monkeypatch.delenv("TPU_WORKER_HOSTNAMES")
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    monkeypatch.setenv("JAX_PROCESS_ID", "1")
    assert sharding.maybe_initialize_distributed() is True
    assert calls[-1] == {"coordinator_address": "10.0.0.1:1234", "num_processes": 2,
                         "process_id": 1}


def test_model_runs_inside_a_partial_shard_map():
    """Inside shard_map over `data` (Manual) with `fsdp` still Auto, the model's activation
    constraints skip the manual axis and the result equals the plain forward."""
    cfg = CFG.replace(num_layers=1)
    params = init_params(cfg, jax.random.key(0))
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, (8, 16)).astype(np.int32)
    mask = np.ones((8, 16), bool)
    ref = jax.jit(lambda p, i, m: forward(cfg, p, i, m))(params, ids, mask)
    mesh = make_mesh(data=2, fsdp=4, tensor=1)
    with jax.set_mesh(mesh):
        per_shard = jax.shard_map(lambda p, i, m: forward(cfg, p, i, m), mesh=mesh,
                                  in_specs=(P(), P("data"), P("data")), out_specs=P("data"),
                                  axis_names={"data"}, check_vma=False)
        got = jax.jit(per_shard)(params, ids, mask)
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), atol=1e-5)


def test_scoring_blocks_cover_every_row_once():
    """Invariant: the processes' scoring blocks are contiguous, in process order, differ in size by at most one
    and together cover every row exactly once, also with fewer rows than processes (empty blocks)."""
    for rows, processes in [(16, 2), (10, 3), (8, 8), (3, 8), (1, 16), (0, 4)]:
        blocks = [sharding.scoring_block(rows, p, processes) for p in range(processes)]
        assert [b.start for b in blocks] == [0] + [b.stop for b in blocks[:-1]]
        assert blocks[-1].stop == rows
        sizes = [b.stop - b.start for b in blocks]
        assert max(sizes) - min(sizes) <= 1, (rows, processes, sizes)
    assert sharding.scoring_block(7) == slice(0, 7)  # one process scores everything
    assert sharding.gather_objects([{"a": 1}, "x"]) == [{"a": 1}, "x"]
