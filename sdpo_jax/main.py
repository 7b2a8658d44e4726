"""The main job: `python -m sdpo_jax.main --config=configs/<experiment>.py [--config.a.b=value ...]`.

Order of business: parse and validate the whole config (clear errors before anything heavy), start
`jax.distributed` on multi-process launches (this is its only caller), validate what depends on the
device count, then hand over to `sdpo_jax.setup` (which builds the run and runs `train.loop`). Logs come from process 0 only.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags
from ml_collections import config_flags

import sdpo_jax

sdpo_jax.skip_tpu_backend_on_a_cpu_host()  # before jax is imported (the config file may import it)

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "demo.py")

_CONFIG = config_flags.DEFINE_config_file(
    "config", _DEFAULT_CONFIG, "Experiment config file (configs/*.py); override fields with --config.a.b=v.",
    lock_config=True)
_EXPORT_HF_ONLY = flags.DEFINE_string(
    "export_hf", None, "Export the latest checkpoint of the run in --config.run_dir as a Hugging Face "
    "directory at this path, then exit (no training).")


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from sdpo_jax import cli
    from sdpo_jax import config as config_lib

    cfg = cli.validated_config(_CONFIG, _DEFAULT_CONFIG, config_lib.validate)
    if isinstance(cfg, int):
        return cfg
    from sdpo_jax import setup

    if _EXPORT_HF_ONLY.value:
        setup.export_hf_from_run(cfg, _EXPORT_HF_ONLY.value)
        return 0
    return setup.train_from_config(cfg)


def entry() -> None:
    app.run(lambda argv: sys.exit(main(argv) or 0))


if __name__ == "__main__":
    entry()
