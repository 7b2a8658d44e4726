"""The main job: `python -m sdpo_jax.main --config=configs/<experiment>.py [--config.a.b=value ...]` (installed:
`sdpo-jax --config=...`).

Order of business: parse and validate the whole config (clear errors before anything heavy), start
`jax.distributed` on multi-process launches (this is its only caller), validate what depends on the
device count, then hand over to `sdpo_jax.setup` (which builds the run and runs `train.loop`). Logs come from process 0 only.
A project error (`cli.PROJECT_ERRORS`) ends the run with one `error:` line on stderr and exit code 2.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

import sdpo_jax
from sdpo_jax import cli

sdpo_jax.skip_tpu_backend_on_a_cpu_host()  # before jax is imported (the config file may import it)

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "demo.py")

_CONFIG = cli.define_config_flags(
    "Experiment config file (configs/*.py; default configs/demo.py); override fields with --config.a.b=v.")
_EXPORT_HF_ONLY = flags.DEFINE_string(
    "export_hf", None, "Export the latest checkpoint of the run in --config.run_dir as a Hugging Face "
    "directory at this path, then exit (no training).")


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    return cli.exit_code(_run)


def _run() -> int:
    from sdpo_jax import config as config_lib

    cfg = cli.validated_config(_CONFIG, config_lib.validate)
    if cfg is None:  # --print_config
        return 0
    from sdpo_jax import setup

    if _EXPORT_HF_ONLY.value:
        setup.export_hf_from_run(cfg, _EXPORT_HF_ONLY.value)
        return 0
    return setup.train_from_config(cfg)


def entry() -> None:
    """The `sdpo-jax` console script and `python -m sdpo_jax.main`."""
    app.run(lambda argv: sys.exit(main(argv)), flags_parser=cli.flags_parser(_DEFAULT_CONFIG, __doc__))


if __name__ == "__main__":
    entry()
