"""Compile every program of an RL run for a TPU slice ahead of time, on a CPU host: memory, FLOPs, fit.

    python -m sdpo_jax.tools.aot --config=configs/lcb_qwen3_8b.py --topology=v5p-64 [--config.a.b=v ...]
        [--programs=train_step,decode] [--json=PATH] [--eval_questions=131]

Use it before booking a slice: it needs `libtpu` (requirements-tpu-aot.txt), no TPU, no weights, tokenizer
or data. The topology is a gcloud accelerator type as `launch/tpu.sh --accelerator` takes it (v4-8,
v5p-64, v5litepod-16, v6e-64, ...), a libtpu topology string (v5p:2x4x4), or 1/2/4/8xH100: one GPU host,
compiled for without a GPU by jax-cuda12-plugin (requirements-gpu-aot.txt; Triton GEMMs off, see main). The tool models the slice's
hosts and devices (program shapes do not depend on the host count: every host holds the whole generation
batch), validates the config as `main` would there, resolves the run's mesh as the loop does
(`config.resolve_mesh_sizes`), builds every program's arguments from shapes alone (`programs.run_programs`:
the loop's own jitted functions, at the largest buckets) and compiles them with libtpu's compiler.

Before compiling it refuses (exit 5) when the resident state alone (parameters, optimizer, teacher, decode
copy, KV cache) exceeds a chip's HBM by arithmetic; after, it exits 5 naming each program whose peak does
not fit and by how many GiB. Per program and device it reports argument / output / alias / temporary
bytes (XLA's memory analysis), the peak (the loop's other arrays on device + arguments + temporaries +
outputs that do not alias an argument), FLOPs with loops expanded (`hlo_flops`), the model's own FLOPs
(`programs.model_flops`) and the compile time; then the run's headroom, the mesh as `--config.mesh.*`
flags, the padding of a mini-batch and a roofline estimate of one RL step (`CHIPS`; assumptions printed).
Exit codes: 0 fits, 2 bad input (config, topology), 5 does not fit.
"""

from __future__ import annotations

import os

os.environ["JAX_PLATFORMS"] = "cpu"  # the local backend stays CPU; only the compile targets the TPU
os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")  # no GCE metadata server here (jax-ml/jax#11668)
os.environ.setdefault("TPU_STDERR_LOG_LEVEL", "3")  # libtpu's warnings about the absent TPU VM environment
os.environ.setdefault("TPU_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")  # a single-host view; compiling needs no workers
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # no TPU to guard: several compiling processes may load it
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")  # GPU targets (NxH100) are compiled for without a GPU

import dataclasses  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402

from absl import app, flags  # noqa: E402

from sdpo_jax import cli  # noqa: E402

EXIT_BAD_INPUT, EXIT_DOES_NOT_FIT = 2, 5
GIB = 2**30
_COMPILER_OOM = re.compile(r"Ran out of memory .*?required for (.*?) \(([\d.]+)G\) exceeds available HBM \(([\d.]+)G\)")


@dataclasses.dataclass(frozen=True)
class Chip:
    """Per chip: the HBM libtpu's compiler lets a program use (measured here: the figure in its
    out-of-memory error), bf16 peak FLOP/s and HBM bandwidth as Google's Cloud TPU pages state them."""
    hbm_bytes: float
    peak_flops: float
    hbm_bandwidth: float
    interconnect_bandwidth: float  # bidirectional ICI (TPU) / NVLink (GPU) bytes/s per chip
    source: str


CHIPS = {  # HBM: libtpu 0.0.42.1's "available HBM" (pages: 32 / 16 / 95 / 32 GB); peak and bandwidth: the pages
    "v4": Chip(30.75 * GIB, 275e12, 1.2e12, 300e9, "https://cloud.google.com/tpu/docs/v4"),
    "v5e": Chip(15.75 * GIB, 197e12, 0.819e12, 400e9, "https://cloud.google.com/tpu/docs/v5e"),
    "v5p": Chip(95.74 * GIB, 459e12, 2.765e12, 600e9, "https://cloud.google.com/tpu/docs/v5p"),
    "v6e": Chip(31.25 * GIB, 918e12, 1.638e12, 800e9, "https://cloud.google.com/tpu/docs/v6e"),
    # the H100 SXM's 80 GB (as its target description below states it), dense bf16 peak, HBM3 bandwidth
    "h100": Chip(84929347584, 989e12, 3.35e12, 900e9, "https://www.nvidia.com/en-us/data-center/h100/"),
}

# What XLA's GPU compiler needs to know of an H100 SXM 80GB when no GPU is present (a stream_executor
# GpuTargetConfig; the figures are the device's published properties: 132 SMs, 48 KiB / 227 KiB shared
# memory per block, 50 MiB L2, compute capability 9.0), CUDA 12.8 / cuDNN 9.7 as jax-cuda12-plugin 0.10.2.
_H100_TARGET = """gpu_device_info {
  threads_per_block_limit: 1024 threads_per_warp: 32 shared_memory_per_block: 49152
  shared_memory_per_core: 233472 threads_per_core_limit: 2048 core_count: 132 fpus_per_core: 128
  block_dim_limit_x: 2147483647 block_dim_limit_y: 65535 block_dim_limit_z: 65535
  memory_bandwidth: 3352320000000 l2_cache_size: 52428800 clock_rate_ghz: 1.98
  device_memory_size: 84929347584 shared_memory_per_block_optin: 232448
  cuda_compute_capability { major: 9 } registers_per_core_limit: 65536 registers_per_block_limit: 65536
}
platform_name: "CUDA"
dnn_version_info { major: 9 minor: 7 }
runtime_version { major: 12 minor: 8 patch: 0 }
device_description_str: "NVIDIA H100 80GB HBM3"
"""
_GRID_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8", 256: "4x8x8",
            512: "8x8x8", 1024: "8x8x16", 2048: "8x16x16", 4096: "16x16x16"}  # v4 / v5p chips
_GRID_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}  # v5e / v6e


PAPER_TTT_QUESTIONS = 19  # the paper's "hard" LiveCodeBench v6 set for test-time SDPO (configs/ttt_lcb_qwen3_8b.py)


class TopologyError(ValueError):
    """The topology name is not one this tool can model; the message lists what it takes."""


def topology_spec(name: str) -> tuple[str, str, dict]:
    """(chip kind, libtpu topology string, get_topology_desc kwargs) for a gcloud accelerator type
    (v4 and v5p count TensorCores: v5p-64 = 32 chips; v5litepod / v5e and v6e count chips) or a topology
    string like "v5p:2x4x4". Slices of 4 chips per host, except v5e / v6e single hosts of 1-8 chips."""
    if ":" in name:
        kind, grid = name.split(":", 1)
        kind = "v5e" if kind == "v5litepod" else kind
        if kind not in CHIPS:
            raise TopologyError(f"--topology={name}: unknown chip {kind!r}; one of {sorted(CHIPS)}")
        return kind, f"{kind}:{grid}", {"chip_config_name": "megacore"} if kind == "v4" else {}
    match = re.fullmatch(r"(v4|v5p|v5litepod|v5e|v6e)-(\d+)", name)
    if not match:
        raise TopologyError(f"--topology={name}: expected a gcloud accelerator type such as v4-8, v5p-64, "
                            "v5litepod-16, v6e-64, or a topology such as v5p:2x4x4")
    kind, count = match.group(1), int(match.group(2))
    kind = "v5e" if kind == "v5litepod" else kind
    if kind in ("v4", "v5p"):
        chips, grids = count // 2, _GRID_3D
    else:
        chips, grids = count, _GRID_2D
    if chips not in grids:
        raise TopologyError(f"--topology={name}: {chips} chips is not a slice this tool models "
                            f"({kind}: {sorted(grids)} chips)")
    kwargs = {"chip_config_name": "megacore"} if kind == "v4" else {}
    if kind in ("v5e", "v6e") and chips <= 8:
        kwargs["chips_per_host_bounds"] = {1: (1, 1, 1), 4: (2, 2, 1), 8: (2, 4, 1)}[chips]
    return kind, f"{kind}:{grids[chips]}", kwargs


def gpu_devices(name: str):
    """("h100", devices, 1) for "NxH100" (N GPUs on one host, N in 1, 2, 4, 8), compiled for without a GPU
    by jax-cuda12-plugin (requirements-gpu-aot.txt)."""
    from jax.experimental import topologies

    match = re.fullmatch(r"([1248])xh100", name.lower())
    if not match:
        raise TopologyError(f"--topology={name}: GPU targets are 1xH100, 2xH100, 4xH100 or 8xH100")
    try:
        topology = topologies.get_topology_desc(platform="cuda", target_config=_H100_TARGET,
                                                topology=f"1x1x{match.group(1)}")
    except Exception as err:
        raise TopologyError(f"--topology={name}: XLA's GPU compiler is not available ({type(err).__name__}: {err}); "
                            "pip install -r requirements-gpu-aot.txt") from err
    return "h100", list(topology.devices), 1


def tpu_devices(name: str):
    """(chip kind, the slice's devices, host count) from libtpu's topology description (GPU targets:
    `gpu_devices`)."""
    from jax.experimental import topologies

    if "xh100" in name.lower():
        return gpu_devices(name)
    kind, topology, kwargs = topology_spec(name)
    devices = topologies.get_topology_desc(topology_name=topology, platform="tpu", **kwargs).devices
    return kind, list(devices), len({d.process_index for d in devices})


# ---------------------------------------------------------------------------------------------- set-up


def model_config_for(cfg):
    """The run's ModelConfig without weights: a local model.path's config.json, else cfg.model.init with
    model.init.vocab_size (or, when that is unset, the vocabulary of the config's tokenizer)."""
    from sdpo_jax import models, setup

    path = cfg.model.path
    if path and os.path.isfile(os.path.join(path, "config.json")):
        with open(os.path.join(path, "config.json")) as f:
            return models.config_from_hf(json.load(f), **setup.runtime_overrides(cfg))
    if path:
        raise ValueError(f"model.path={path!r} has no config.json here; unset it to use model.init (the paper "
                         "configs carry Qwen3-8B's shape)")
    vocab = cfg.model.init.vocab_size
    if vocab is None:
        from sdpo_jax import config as config_lib
        from sdpo_jax.tokenizer import load_tokenizer

        vocab = -(-len(load_tokenizer(config_lib.tokenizer_path(cfg))) // 64) * 64  # as setup.build_model rounds it
    return setup.init_model_config(cfg, int(vocab))


def resident_state_bytes(cfg, model_cfg, mesh) -> dict[str, int]:
    """Per device, by shape arithmetic: the train state (parameters, optimizer, teacher), the decode copy
    (compute dtype, when it differs) and the largest KV cache (rollout or evaluation)."""
    import jax.numpy as jnp

    from sdpo_jax import programs, setup

    shapes = setup.program_shapes(cfg)
    state = programs.abstract_train_state(model_cfg, shapes.step, shapes.optimizer, mesh)
    decode_params = programs.abstract_decode_params(shapes, model_cfg, state, mesh)
    copy = 0 if decode_params is state.params else programs.device_bytes(decode_params)
    row_shards = mesh.shape["data"] * mesh.shape["fsdp"]
    head_shards = mesh.shape["tensor"] if model_cfg.num_kv_heads % mesh.shape["tensor"] == 0 else 1
    slots = programs.buckets_used(shapes)["prompt"] + cfg.rollout.max_new_tokens
    cache_item = jnp.dtype(cfg.rollout.cache_dtype or model_cfg.compute_dtype).itemsize
    rows = max(cfg.data.prompts_per_step * cfg.rollout.n, cfg.data.prompts_per_step * cfg.eval.n if cfg.eval.every else 0)
    rows = -(-rows // row_shards) * row_shards
    cache = (2 * model_cfg.num_layers * rows * slots * model_cfg.num_kv_heads * model_cfg.head_dim * cache_item
             // (row_shards * head_shards))
    return {"train_state": programs.device_bytes(state), "decode_copy": int(copy), "kv_cache": int(cache)}


# ---------------------------------------------------------------------------------------------- the report


def program_report(program, shapes, model_cfg, chip: Chip, num_devices: int) -> dict:
    """The per-device figures of one compiled program (see the module docstring)."""
    from sdpo_jax import programs

    compiled = program.compile()
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else (cost or {})
    counted = program.flops
    resident = programs.device_bytes(program.resident)
    arguments, outputs = memory.argument_size_in_bytes, memory.output_size_in_bytes
    alias, temp = memory.alias_size_in_bytes, memory.temp_size_in_bytes
    model = programs.model_flops(program, shapes, model_cfg) / num_devices
    return {
        "argument_bytes": arguments, "output_bytes": outputs, "alias_bytes": alias, "temp_bytes": temp,
        "resident_bytes": resident, "peak_bytes": resident + arguments + temp + max(outputs - alias, 0),
        "hbm_bytes": chip.hbm_bytes, "flops": counted.flops, "collective_bytes": counted.collective_bytes, "xla_flops_loop_bodies_once": float(cost.get("flops", 0.0)),
        "bytes_accessed_loop_bodies_once": float(cost.get("bytes accessed", 0.0)), "model_flops": model,
        "compiled_over_model_flops": counted.flops / model if model else None, "compile_s": round(program.compile_s, 1),
        "calls_per_step": program.calls_per_step, "loops_counted_at_bound": counted.bounded_loops,
        "loops_without_bound": counted.unknown_loops, "custom_calls": counted.custom_calls,
    }


def roofline_s(name: str, report: dict, chip: Chip, decode_steps: int) -> float:
    """Seconds for one call at the chip's peaks: the largest of FLOPs / peak FLOP/s, HBM bytes / HBM bandwidth
    and collective bytes / interconnect bandwidth; the decode per step (every step reads its arguments:
    weights and KV cache), memory-bound in practice."""
    steps = max(decode_steps, 1) if name.endswith("decode") else 1
    hbm = report["argument_bytes"] + (0 if steps > 1 else report["output_bytes"])
    per_step = max(report["flops"] / steps / chip.peak_flops, hbm / chip.hbm_bandwidth,
                   report["collective_bytes"] / steps / chip.interconnect_bandwidth)
    return steps * per_step


def memory_options(cfg, model_cfg, mesh, resident: dict, program: str | None = None) -> str:
    """What frees memory per chip without changing a paper hyperparameter. For the rollout's programs
    (and the resident state, `program` None): dropping the decode copy, or more `tensor` shards, which
    divide it; for the train step and old log-probs: more gradient-accumulation steps per mini-batch;
    always: a larger slice."""
    options = []
    if program is None or program.endswith(("prefill", "decode")):  # where the decode copy is held
        if cfg.rollout.decode_weights == "gathered" and resident["decode_copy"]:
            options.append(f"--config.rollout.decode_weights=sharded frees the {_gib(resident['decode_copy'])} GiB "
                           "decode copy (every decode step then all-gathers the weights: slower rollouts)")
            devices, tensor = mesh.devices.size, mesh.shape["tensor"]
            wider = next((t for t in (2 * tensor, 4 * tensor, 8 * tensor)
                          if devices % (t * mesh.shape["data"]) == 0 and model_cfg.num_kv_heads % t == 0), None)
            if wider:
                options.append(f"--config.mesh.fsdp={devices // (wider * mesh.shape['data'])} "
                               f"--config.mesh.tensor={wider} divides the decode copy over {wider} tensor shards "
                               f"instead of {tensor}")
    rows = (cfg.optim.minibatch_prompts or cfg.data.prompts_per_step) * cfg.rollout.n
    more = 2 * cfg.optim.micro_batches
    if program in ("train_step", "old_logprobs") and rows % (more * mesh.shape["data"] * mesh.shape["fsdp"]) == 0:
        options.append(f"--config.optim.micro_batches={more} halves the rows of each gradient-accumulation step "
                       "(the train step's activations; same update)")
    options.append("a slice with more chips")
    return "options: " + "; or ".join(options)


def _gib(x: float) -> str:
    return f"{x / GIB:.2f}"


def run_report(cfg, reports: dict, chip: Chip, layout: dict, mesh, resident: dict) -> dict:
    peak_name = max(reports, key=lambda k: reports[k]["peak_bytes"])
    steps = int(cfg.rollout.max_new_tokens) - 1
    times = {k: roofline_s(k, r, chip, steps) * r["calls_per_step"] for k, r in reports.items()}
    return {
        "peak_program": peak_name, "peak_bytes": reports[peak_name]["peak_bytes"], "hbm_bytes": chip.hbm_bytes,
        "headroom_bytes": chip.hbm_bytes - reports[peak_name]["peak_bytes"], "resident_state": resident,
        "mesh_flags": " ".join(f"--config.mesh.{axis}={size}" for axis, size in mesh.shape.items()),
        "minibatch_rows": layout["rows"], "minibatch_padded_rows": layout["padded_rows"],
        "minibatch_padding_fraction": 1 - layout["rows"] / layout["padded_rows"], "minibatches_per_step": layout["minibatches"],
        "flops_per_step": sum(r["flops"] * r["calls_per_step"] for k, r in reports.items() if not k.startswith("eval_")),
        "roofline_step_s": sum(t for k, t in times.items() if not k.startswith("eval_")),
        "roofline_eval_s_per_step": sum(t for k, t in times.items() if k.startswith("eval_")),
        "roofline_assumptions": (f"per chip: {chip.peak_flops:.3g} FLOP/s bf16 peak, {chip.hbm_bandwidth:.3g} B/s HBM "
                                 f"{chip.interconnect_bandwidth:.3g} B/s interconnect ({chip.source}); every completion runs to max_new_tokens ({steps} decode steps "
                                 "after the prefill), every mini-batch at the largest buckets; one call = max(FLOPs / "
                                 "peak, HBM bytes / bandwidth, collective bytes / interconnect), decode per step (weights + KV cache "
                                 "read once a step); no overlap between programs; scoring and host work not modelled"),
    }


def print_report(out: dict) -> None:
    print(f"\n{out['topology']}: {out['devices']} devices on {out['hosts']} hosts, mesh {out['mesh']}")
    print(f"{'program':18} {'calls':>6} {'args':>8} {'temp':>8} {'out-alias':>9} {'resident':>8} {'peak':>8} "
          f"{'GFLOP/dev':>11} {'/model':>7} {'coll GiB':>9} {'compile s':>9}")
    for name, r in out["programs"].items():
        ratio = "" if r["compiled_over_model_flops"] is None else f"{r['compiled_over_model_flops']:.2f}"
        print(f"{name:18} {r['calls_per_step']:6.2f} {_gib(r['argument_bytes']):>8} {_gib(r['temp_bytes']):>8} "
              f"{_gib(max(r['output_bytes'] - r['alias_bytes'], 0)):>9} {_gib(r['resident_bytes']):>8} "
              f"{_gib(r['peak_bytes']):>8} {r['flops'] / 1e9:11.1f} {ratio:>7} {_gib(r['collective_bytes']):>9} "
              f"{r['compile_s']:9.1f}")
    run = out["run"]
    print(f"GiB per device; HBM {_gib(run['hbm_bytes'])}; peak {_gib(run['peak_bytes'])} in {run['peak_program']}, "
          f"headroom {_gib(run['headroom_bytes'])}")
    print(f"mesh: {run['mesh_flags']}; mini-batch {run['minibatch_rows']} rows padded to {run['minibatch_padded_rows']} "
          f"({100 * run['minibatch_padding_fraction']:.0f} % padding), {run['minibatches_per_step']} per step")
    print(f"one RL step: {run['flops_per_step']:.3g} FLOP per device; roofline {run['roofline_step_s']:.1f} s "
          f"(+ {run['roofline_eval_s_per_step']:.1f} s of evaluation per step on average)")
    print(f"assumptions: {run['roofline_assumptions']}")


# ---------------------------------------------------------------------------------------------- main


_CONFIG = cli.define_config_flags("Experiment config file (configs/*.py); override fields with --config.a.b=v.")
_TOPOLOGY = flags.DEFINE_string("topology", None, "gcloud accelerator type (v5p-64, v6e-64, v5litepod-16, v4-8), "
                                "a libtpu topology (v5p:2x4x4), or 8xH100 (needs requirements-gpu-aot.txt).")
_PROGRAMS = flags.DEFINE_list("programs", None, "Compile only these programs (default: all the run executes).")
_JSON = flags.DEFINE_string("json", None, "Write the report as JSON here.")
_EVAL_QUESTIONS = flags.DEFINE_integer("eval_questions", None, "Evaluation set size (default data.eval_prompts); "
                                       "for a test-time config, its question count (default ttt.num_questions, "
                                       f"else {PAPER_TTT_QUESTIONS})")


def main(argv) -> int:
    del argv
    if _TOPOLOGY.value and "xh100" in _TOPOLOGY.value.lower():  # before jax starts: XLA reads its flags once
        # jax-cuda12-plugin 0.10.2 fails deviceless on Triton GEMM tiling ("Couldn't find output tile sizes");
        # GEMMs then go to cuBLAS (as the deviceless example in jax-ml/jax#28376 does)
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_gpu_enable_triton_gemm=false").strip()
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)
    import jax

    from sdpo_jax import compiled_calls, programs, setup, sharding
    from sdpo_jax import config as config_lib

    cfg = _CONFIG.value
    if cfg is None or not _TOPOLOGY.value:
        print("error: pass --config=configs/X.py and --topology=T (e.g. v5p-64)", file=sys.stderr)
        return EXIT_BAD_INPUT
    unknown = set(_PROGRAMS.value or ()) - set(compiled_calls.PROGRAM_NAMES)
    if unknown:
        print(f"error: --programs: unknown {sorted(unknown)}; one of {compiled_calls.PROGRAM_NAMES}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        kind, devices, hosts = tpu_devices(_TOPOLOGY.value)
    except TopologyError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as err:  # libtpu missing or refusing the topology
        print(f"error: libtpu could not describe {_TOPOLOGY.value} ({type(err).__name__}: {err}); "
              "install it with `pip install -r requirements-tpu-aot.txt`", file=sys.stderr)
        return EXIT_BAD_INPUT
    chip = CHIPS[kind]
    test_time = "ttt" in cfg  # a test-time SDPO config (python -m sdpo_jax.ttt)
    try:
        if test_time:
            checked = cfg.copy_and_resolve_references()
            with checked.unlocked():
                checked.ttt.questions = "synthetic"  # the tool reads no question file
            config_lib.validate_ttt(checked, num_devices=len(devices))
        else:
            config_lib.validate(cfg, num_devices=len(devices))
        model_cfg = model_config_for(cfg)
    except (config_lib.ConfigError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if flags.FLAGS.print_config:
        print(cfg.to_json_best_effort(indent=2))
        return 0
    mesh = setup.make_run_mesh(cfg, devices)
    print(f"{_TOPOLOGY.value}: {len(devices)} x {devices[0].device_kind} on {hosts} hosts; mesh {dict(mesh.shape)}; "
          f"model {model_cfg.model_type} L={model_cfg.num_layers} D={model_cfg.hidden_size} V={model_cfg.vocab_size} "
          f"({model_cfg.num_params / 1e9:.2f}B params); attention {model_cfg.attention_impl}", flush=True)

    resident = resident_state_bytes(cfg, model_cfg, mesh)
    total = sum(resident.values())
    print("resident state per device (arithmetic): " + ", ".join(f"{k} {_gib(v)} GiB" for k, v in resident.items())
          + f"; total {_gib(total)} of {_gib(chip.hbm_bytes)} GiB HBM", flush=True)
    if total > chip.hbm_bytes:
        print(f"error: does not fit: the resident state alone needs {_gib(total)} GiB per device, "
              f"{_gib(total - chip.hbm_bytes)} GiB more than a {kind} chip's {_gib(chip.hbm_bytes)} GiB\n"
              f"{memory_options(cfg, model_cfg, mesh, resident)}", file=sys.stderr)
        return EXIT_DOES_NOT_FIT

    shapes = setup.program_shapes(cfg)
    wanted = set(_PROGRAMS.value) if _PROGRAMS.value else None
    reports = {}
    if test_time:
        questions = _EVAL_QUESTIONS.value or cfg.ttt.num_questions or PAPER_TTT_QUESTIONS
        print(f"test-time SDPO: {questions} questions x {cfg.ttt.seeds} seeds (--eval_questions sets the count)")
        run_programs = programs.ttt_programs(shapes, model_cfg, mesh, questions=questions, only=wanted)
    else:
        run_programs = programs.run_programs(shapes, model_cfg, mesh, eval_questions=_EVAL_QUESTIONS.value, only=wanted)
    for program in run_programs:
        print(f"compiling {program.name} ...", flush=True)
        try:
            reports[program.name] = program_report(program, shapes, model_cfg, chip, len(devices))
        except Exception as err:  # libtpu's compiler refuses a program over HBM itself
            oom = _COMPILER_OOM.search(str(err))
            if oom is None:
                raise
            need, have = float(oom.group(2)), float(oom.group(3))
            print(f"error: does not fit: {program.name} needs {need:.2f} GiB per device for {oom.group(1)} (libtpu's "
                  f"compiler), {need - have:.2f} GiB more than the {have:.2f} GiB of HBM\n"
                  f"{memory_options(cfg, model_cfg, mesh, resident, program.name)}", file=sys.stderr)
            return EXIT_DOES_NOT_FIT
        r = reports[program.name]
        print(f"  {program.name}: peak {_gib(r['peak_bytes'])} GiB, {r['flops'] / 1e9:.1f} GFLOP per device, "
              f"compiled in {r['compile_s']:.0f} s", flush=True)
    layout = programs.minibatch_layout(shapes, mesh)
    out = {"topology": _TOPOLOGY.value, "chip": kind, "devices": len(devices), "hosts": hosts,
           "mesh": dict(mesh.shape), "programs": reports,
           "run": run_report(cfg, reports, chip, layout, mesh, resident)}
    print_report(out)
    if _JSON.value:
        with open(_JSON.value, "w") as f:
            json.dump(out, f, indent=2, default=str)
        print(f"wrote {_JSON.value}")
    short = {k: r["peak_bytes"] - chip.hbm_bytes for k, r in reports.items() if r["peak_bytes"] > chip.hbm_bytes}
    for name, over in short.items():
        print(f"error: does not fit: {name} needs {_gib(reports[name]['peak_bytes'])} GiB per device, "
              f"{_gib(over)} GiB more than the {_gib(chip.hbm_bytes)} GiB of HBM", file=sys.stderr)
    for name in short:
        print(f"{name}: {memory_options(cfg, model_cfg, mesh, resident, name)}", file=sys.stderr)
    del jax, sharding
    return EXIT_DOES_NOT_FIT if short else 0


if __name__ == "__main__":
    app.run(lambda argv: sys.exit(cli.exit_code(lambda: main(argv))), flags_parser=cli.flags_parser(None, __doc__))
