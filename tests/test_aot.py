"""Ahead-of-time compilation for TPU slices on this CPU host (`sdpo_jax.tools.aot`, `sdpo_jax.programs`,
`sdpo_jax.hlo_flops`). Needs libtpu (requirements-tpu-aot.txt, part of requirements-test.txt): without it
these tests fail, they do not skip."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import configs.demo
from sdpo_jax import compiled_calls, hlo_flops, models, programs, setup
from sdpo_jax import config as config_lib
from sdpo_jax.tokenizer import load_tokenizer
from sdpo_jax.tools import aot

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tpu_devices(topology: str):
    return aot.tpu_devices(topology)[1]


def _tiny_demo(run_dir: str, variant: str):
    """The demo at test size, one bucket per width (so the loop's shapes are the largest the config allows)."""
    cfg = configs.demo.get_config()
    cfg.run_dir = run_dir
    init = cfg.model.init
    init.hidden_size, init.num_layers, init.num_heads, init.num_kv_heads, init.head_dim = 32, 1, 2, 1, 16
    init.intermediate_size = 64
    cfg.warm_start.steps, cfg.data.synthetic_train_size, cfg.data.prompts_per_step, cfg.rollout.n = 0, 64, 4, 4
    cfg.rollout.max_new_tokens, cfg.rollout.completion_buckets, cfg.rollout.prompt_buckets = 6, (8,), (256,)
    cfg.reprompt.teacher_prompt_buckets, cfg.loss.topk = (512,), 8
    cfg.eval.every, cfg.eval.at_start, cfg.data.eval_prompts, cfg.eval.min_gain_points = 2, False, 8, None
    cfg.checkpoint.every, cfg.checkpoint.at_end, cfg.checkpoint.export_hf_at_end = 0, False, False
    cfg.logging.plot, cfg.logging.tensorboard, cfg.logging.context_every, cfg.logging.progress_bar = False, False, 0, False
    cfg.train.steps = 2
    if variant == "ema_minibatches_bf16":
        cfg.teacher.kind, cfg.optim.minibatch_prompts, cfg.model.compute_dtype = "ema", 2, "bfloat16"
        cfg.rollout.decode_weights = "gathered"
    return cfg


@pytest.mark.parametrize("variant", ["demo", "ema_minibatches_bf16"])
def test_tool_programs_are_the_calls_the_loop_makes(tmp_path, variant):
    """Invariant: the programs `run_programs` builds from the config alone (what the tool compiles) are exactly
    the distinct calls a 2-step run of the loop makes, captured from the loop itself: the same names, static
    arguments, argument shapes, dtypes and shardings - for the demo (frozen teacher, one mini-batch, so no
    separate old log-probs) and for an EMA teacher with 2 mini-batches, bf16 compute and gathered decode weights."""
    cfg = _tiny_demo(str(tmp_path / "run"), variant)
    with compiled_calls.capture() as calls:
        assert setup.train_from_config(cfg) == 0
    loop = []
    for call in calls:
        if not any(call.matches(seen) for seen in loop):
            loop.append(call)
    mesh = setup.make_run_mesh(cfg)
    model_cfg, _ = setup.build_model(cfg, load_tokenizer(config_lib.tokenizer_path(cfg)), mesh)
    tool = [p.signature() for p in programs.run_programs(setup.program_shapes(cfg), model_cfg, mesh)]
    expected = {"demo": ["prefill", "decode", "train_step", "eval_prefill", "eval_decode"],
                "ema_minibatches_bf16": ["prefill", "decode", "old_logprobs", "train_step", "teacher_update",
                                         "eval_prefill", "eval_decode"]}[variant]
    assert [s.name for s in tool] == expected
    assert sorted(s.name for s in loop) == sorted(expected)
    for signature in tool:
        assert any(signature.matches(call) for call in loop), f"{signature.name} differs from the loop's call"
    assert not any(a.matches(b) for a in tool for b in tool if a is not b)


def test_tool_programs_are_the_calls_test_time_sdpo_makes(tmp_path):
    """Invariant: for a test-time config, `ttt_programs` (what the tool compiles) builds exactly the distinct
    calls a 2-question x 2-seed run of `sdpo_jax.ttt` makes, captured from it: SDPO's rollout, train step and
    EMA teacher update, best-of-k sampling and multi-turn prompting (names, statics, shapes, dtypes, shardings)."""
    from tests.test_ttt import _tiny_config

    cfg = _tiny_config(tmp_path)
    devices = jax.devices()[:1]
    with compiled_calls.capture() as calls:
        setup.run_ttt(cfg, devices=devices, log=lambda *a: None)
    loop = []
    for call in calls:
        if not any(call.matches(seen) for seen in loop):
            loop.append(call)
    mesh = setup.make_run_mesh(cfg, devices)
    model_cfg, _ = setup.build_model(cfg, load_tokenizer(config_lib.tokenizer_path(cfg)), mesh)
    tool = [p.signature() for p in programs.ttt_programs(setup.program_shapes(cfg), model_cfg, mesh, questions=cfg.ttt.num_questions)]
    assert [s.name for s in tool] == ["prefill", "decode", "train_step", "teacher_update", "best_of_k_prefill",
                                      "best_of_k_decode", "multi_turn_prefill", "multi_turn_decode"]
    assert sorted(s.name for s in loop) == sorted(s.name for s in tool)
    for signature in tool:
        assert any(signature.matches(call) for call in loop), f"{signature.name} differs from the run's call"


def test_tpu_decode_holds_the_kv_cache_once():
    """Invariant: the decode program compiled for a TPU takes the KV cache from the prefill in the layout its
    loop keeps it in, so it makes no copy of it: temporaries stay below a quarter of the cache (with the
    former [L, B, S, K, H] cache, libtpu relaid the whole cache out: temporaries = 1.00x the cache)."""
    cfg = configs.demo.get_config()
    cfg.warm_start.steps, cfg.data.prompts_per_step, cfg.rollout.n = 0, 64, 4
    cfg.rollout.max_new_tokens, cfg.rollout.completion_buckets, cfg.rollout.prompt_buckets = 2048, (2048,), (256,)
    cfg.model.compute_dtype = cfg.rollout.cache_dtype = "bfloat16"
    mesh = setup.make_run_mesh(cfg, _tpu_devices("v5e-1"))
    prefill, decode = programs.run_programs(setup.program_shapes(cfg), aot.model_config_for(cfg), mesh, only={"prefill", "decode"})
    cache = programs.device_bytes(decode.arguments()[1]["cache"])
    temp = decode.compile().memory_analysis().temp_size_in_bytes
    assert cache > 2**28 and temp < cache / 4, (temp / 2**20, cache / 2**20)


def test_resident_train_state_matches_shape_arithmetic():
    """Invariant: the resident state the tool counts per device (fp32 params + two Adam moments + fp32 EMA
    teacher, fsdp over 32 v5p devices) equals 4 x 4 bytes x parameters / 32 within 2 %, and the KV cache
    2 x layers x rows x slots x KV heads x head_dim x 2 bytes / row shards."""
    cfg = configs.demo.get_config()
    cfg.model.init.vocab_size, cfg.teacher.kind = 4096, "ema"
    cfg.model.init.num_layers, cfg.model.init.hidden_size, cfg.model.init.intermediate_size = 4, 256, 1024
    cfg.rollout.cache_dtype = "bfloat16"
    mesh = setup.make_run_mesh(cfg, _tpu_devices("v5p-64"))
    model_cfg = aot.model_config_for(cfg)
    resident = aot.resident_state_bytes(cfg, model_cfg, mesh)
    expect = 4 * 4 * model_cfg.num_params / 32
    assert abs(resident["train_state"] - expect) / expect < 0.02
    rows = cfg.data.prompts_per_step * max(cfg.rollout.n, cfg.eval.n)
    slots = max(cfg.rollout.prompt_buckets) + cfg.rollout.max_new_tokens
    cache = 2 * model_cfg.num_layers * rows * slots * model_cfg.num_kv_heads * model_cfg.head_dim * 2 / 32
    assert abs(resident["kv_cache"] - cache) / cache < 0.02


def _aot(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "sdpo_jax.tools.aot", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "XLA_FLAGS": ""})


def test_tool_reports_every_program_as_json(tmp_path):
    """Invariant: the tool on the demo for a v5e-4 slice exits 0 and writes the JSON schema: topology, hosts,
    mesh, per program the memory / FLOP / compile figures (peak = resident + arguments + temporaries + outputs
    not aliased), and the run's headroom, mesh flags, padding and roofline."""
    out = tmp_path / "demo.json"
    proc = _aot("--config=configs/demo.py", "--topology=v5e-4", "--programs=prefill,decode",
                "--config.rollout.prompt_buckets=(256,)", f"--json={out}")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["topology"] == "v5e-4" and report["hosts"] == 1 and report["mesh"]["fsdp"] == 4
    assert list(report["programs"]) == ["prefill", "decode"]
    for r in report["programs"].values():
        for key in ("argument_bytes", "output_bytes", "alias_bytes", "temp_bytes", "peak_bytes", "hbm_bytes", "flops",
                    "collective_bytes",
                    "bytes_accessed_loop_bodies_once", "compile_s"):
            assert key in r
        assert r["peak_bytes"] == r["resident_bytes"] + r["argument_bytes"] + r["temp_bytes"] + max(
            r["output_bytes"] - r["alias_bytes"], 0)
    assert report["programs"]["decode"]["alias_bytes"] > 0  # the donated KV cache
    assert report["programs"]["decode"]["loops_counted_at_bound"]  # the decode loop may stop early
    run = report["run"]
    assert run["mesh_flags"] == "--config.mesh.data=1 --config.mesh.fsdp=4 --config.mesh.tensor=1"
    assert run["headroom_bytes"] > 0 and run["roofline_step_s"] > 0


def test_a_run_that_cannot_fit_is_refused_naming_the_program(tmp_path):
    """Invariant: a train step whose logits block alone is ~128 GiB (65,536-token vocabulary, all 524,288
    completion tokens in one block) exits 5 naming train_step and the GiB it lacks on a v5e chip; a paper
    8B config on 4 v5e chips is refused before compiling (resident state over HBM), listing what frees memory."""
    proc = _aot("--config=configs/demo.py", "--topology=v5e-1", "--programs=train_step",
                "--config.model.init.vocab_size=65536", "--config.loss.vocab_chunk=65536", "--config.loss.seq_chunk=0",
                "--config.rollout.max_new_tokens=4096", "--config.rollout.completion_buckets=(4096,)",
                "--config.rollout.prompt_buckets=(64,)", "--config.reprompt.teacher_prompt_buckets=(256,)")
    assert proc.returncode == aot.EXIT_DOES_NOT_FIT, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "does not fit: train_step needs" in proc.stderr and "GiB more than" in proc.stderr
    assert "--config.optim.micro_batches=2 halves the rows" in proc.stderr and "decode_weights" not in proc.stderr
    proc = _aot("--config=configs/science_qwen3_8b.py", "--topology=v5litepod-4")
    assert proc.returncode == aot.EXIT_DOES_NOT_FIT, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "resident state alone needs" in proc.stderr and "compiling" not in proc.stdout
    # and it says what frees memory without changing a paper hyperparameter
    assert "options: --config.rollout.decode_weights=sharded frees the" in proc.stderr
    assert "--config.mesh.fsdp=2 --config.mesh.tensor=2 divides the decode copy" in proc.stderr


def test_topology_names_map_to_slices():
    """Invariant: gcloud accelerator types give the slice's devices and hosts (v4 / v5p names count
    TensorCores, v5e / v6e chips; 4 chips per host, v5e / v6e single hosts up to 8), and a bad name is
    refused naming what is accepted."""
    for name, devices, hosts in [("v5p-64", 32, 8), ("v6e-64", 64, 16), ("v5litepod-8", 8, 1), ("v5litepod-16", 16, 4),
                                 ("v4-8", 4, 1), ("v5p:2x2x1", 4, 1)]:
        kind, found, found_hosts = aot.tpu_devices(name)
        assert (len(found), found_hosts) == (devices, hosts), name
        assert found[0].platform == "tpu"
    for bad in ("v5p-63", "h100-8", "v7x-8"):
        with pytest.raises(aot.TopologyError, match="accelerator type|chips|unknown chip"):
            aot.topology_spec(bad)


def _forward_program(devices, scan: bool, attention: str):
    cfg = models.ModelConfig(model_type="qwen3", vocab_size=1024, hidden_size=256, num_layers=3, num_heads=4,
                             num_kv_heads=2, head_dim=64, intermediate_size=512, scan_layers=scan,
                             attention_impl=attention, tie_word_embeddings=False)
    mesh = Mesh(np.array(devices), ("data",))
    replicated, rows = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    params = jax.tree.map(lambda s: jax.ShapeDtypeStruct(tuple(s), jnp.float32, sharding=replicated),
                          models.param_shapes(cfg), is_leaf=lambda x: isinstance(x, tuple))
    ids = jax.ShapeDtypeStruct((8, 256), jnp.int32, sharding=rows)
    with jax.set_mesh(mesh):
        lowered = jax.jit(lambda p, i, m: models.forward(cfg, p, i, m)).lower(params, ids, ids)
    return cfg, lowered


@pytest.mark.parametrize("platform", ["tpu", "cpu"])
def test_flop_counter_expands_loops_and_matches_the_analytic_count(platform):
    """Invariant: on an unrolled 3-layer model (8 rows x 256 tokens over 4 devices) the counted FLOPs per
    device are within 10 % of 2 N_nonembed T + 2 V d T + 4 L T^2 (heads x head_dim) per row over 4 (attention
    computed in full: plain and blockwise both compute every block); with the layers under `lax.scan` the
    count is the same, while XLA's cost analysis (loop body once) reports less than half."""
    devices = _tpu_devices("v5e-4") if platform == "tpu" else jax.devices()[:4]
    counts = {}
    for scan in (False, True):
        cfg, lowered = _forward_program(devices, scan, "blockwise")
        compiled, counted = hlo_flops.compile_counting_flops(lowered)
        counts[scan] = counted.flops
        if scan:
            assert compiled.cost_analysis()["flops"] < 0.5 * counted.flops
    full_attention = 8 * 4 * cfg.num_layers * 256**2 * cfg.num_heads * cfg.head_dim
    analytic = (programs._forward_flops(cfg, 8, 256, 256) + full_attention / 2) / 4
    assert abs(counts[False] - analytic) / analytic < 0.10
    assert abs(counts[True] - counts[False]) / counts[False] < 0.01


def test_splash_attention_compiles_to_a_mosaic_kernel_for_tpu():
    """Invariant: attention_impl=splash compiled for a TPU topology from this CPU host takes the platform from
    the mesh being compiled for and lowers to the Mosaic custom call (the Pallas kernel), not a fallback."""
    _, lowered = _forward_program(_tpu_devices("v5e-4"), True, "splash")
    compiled = lowered.compile()
    assert 'custom_call_target="tpu_custom_call"' in compiled.as_text()
