"""Markdown table of `sdpo_jax.tools.aot` JSON reports: per config x topology, per program peak GiB per
device, compiled / model FLOPs and compile time; the run's headroom, FLOPs per RL step and roofline.

    python bench/aot_table.py bench/logs/aot_2026-12-03/*.json
"""
import json
import os
import sys

GIB = 2**30


def main(paths: list[str]) -> None:
    print("| config @ topology | mesh | program | peak GiB/chip | compiled/model FLOPs | collectives GiB | compile s |")
    print("|---|---|---|---|---|---|---|")
    for path in paths:
        with open(path) as f:
            report = json.load(f)
        name = os.path.basename(path).removesuffix(".json")
        mesh = " x ".join(f"{k} {v}" for k, v in report["mesh"].items() if v > 1)
        for program, r in report["programs"].items():
            ratio = "" if r["compiled_over_model_flops"] is None else f"{r['compiled_over_model_flops']:.2f}"
            print(f"| {name} | {mesh} | {program} | {r['peak_bytes'] / GIB:.1f} | {ratio} | "
                  f"{r.get('collective_bytes', float('nan')) / GIB:.1f} | {r['compile_s']:.0f} |")
        run = report["run"]
        print(f"| {name} | {mesh} | **run** | headroom {run['headroom_bytes'] / GIB:.1f} of {run['hbm_bytes'] / GIB:.1f} | "
              f"{run['flops_per_step']:.3g} FLOP/chip per step | roofline {run['roofline_step_s']:.1f} s/step "
              f"(+{run['roofline_eval_s_per_step']:.1f} eval) | padding {100 * run['minibatch_padding_fraction']:.0f} % |")


if __name__ == "__main__":
    main(sys.argv[1:])
