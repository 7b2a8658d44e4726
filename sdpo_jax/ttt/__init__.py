"""Test-time SDPO (paper §5, docs/ALGORITHM.md §7) and its best-of-k and multi-turn baselines.

    python -m sdpo_jax.ttt --config=configs/ttt_demo.py       (ttt/__main__.py: the command line)

`sdpo_jax.ttt.methods` holds the comparison over typed settings (`TTTSettings`, `TTTRun`); `setup.build_ttt`
builds a `TTTRun` from a config and `setup.run_ttt` runs the whole comparison. This file imports nothing,
so the command line can keep JAX off a TPU backend on a CPU host before JAX is imported.
"""
