"""Markdown tables of `sdpo_jax.tools.aot` JSON reports.

    python bench/aot_table.py bench/logs/aot_2026-12-07/*.json            # one row per config x slice
    python bench/aot_table.py --programs bench/logs/aot_2026-12-07/*.json # one row per program

Summary: mesh, the program with the highest peak and its GiB per chip, headroom, FLOPs per RL step per chip,
compiled / model FLOPs of the train step, roofline seconds per step (+ evaluation per step), total compile
seconds. Programs: peak GiB per chip, compiled / model FLOPs, collective GiB per chip and call, compile s.
"""
import json
import os
import sys

GIB = 2**30


def _mesh(report: dict) -> str:
    return " x ".join(f"{k} {v}" for k, v in report["mesh"].items() if v > 1) or "1 device"


def summary(paths: list[str]) -> None:
    print("| config @ slice | chips | mesh | peak program | peak GiB/chip | headroom GiB | FLOP/chip per step "
          "| train_step compiled/model | roofline s/step (+eval) | compile s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for path in paths:
        with open(path) as f:
            report = json.load(f)
        run, programs = report["run"], report["programs"]
        step = programs.get("train_step", {}).get("compiled_over_model_flops")
        compile_s = sum(r["compile_s"] for r in programs.values())
        print(f"| {os.path.basename(path).removesuffix('.json')} | {report['devices']} | {_mesh(report)} | "
              f"{run['peak_program']} | {run['peak_bytes'] / GIB:.1f} | {run['headroom_bytes'] / GIB:.1f} | "
              f"{run['flops_per_step']:.3g} | {'' if step is None else f'{step:.2f}'} | "
              f"{run['roofline_step_s']:.0f} (+{run['roofline_eval_s_per_step']:.0f}) | {compile_s:.0f} |")


def per_program(paths: list[str]) -> None:
    print("| config @ slice | program | calls/step | peak GiB/chip | compiled/model FLOPs | collectives GiB/chip | compile s |")
    print("|---|---|---|---|---|---|---|")
    for path in paths:
        with open(path) as f:
            report = json.load(f)
        name = os.path.basename(path).removesuffix(".json")
        for program, r in report["programs"].items():
            ratio = "" if r["compiled_over_model_flops"] is None else f"{r['compiled_over_model_flops']:.2f}"
            print(f"| {name} | {program} | {r['calls_per_step']:.2f} | {r['peak_bytes'] / GIB:.1f} | {ratio} | "
                  f"{r.get('collective_bytes', float('nan')) / GIB:.1f} | {r['compile_s']:.0f} |")


if __name__ == "__main__":
    args = sys.argv[1:]
    if args and args[0] == "--programs":
        per_program(args[1:])
    else:
        summary(args)
