"""`python -m sdpo_jax.ttt --config=configs/ttt_demo.py [--config.ttt.seeds=3 ...]`: test-time SDPO and its
baselines (`sdpo_jax.ttt.methods`) on the config's hard questions.

Order of business, as `sdpo_jax.main`: parse and validate the whole config (clear errors before anything
heavy), start `jax.distributed` on multi-process launches (every host runs this same command), validate
what depends on the device count, then `setup.run_ttt`. Logs come from process 0 only. A project error
(`cli.PROJECT_ERRORS`) ends the run with one `error:` line on stderr and exit code 2.
"""

from __future__ import annotations

import os
import sys

from absl import app

import sdpo_jax
from sdpo_jax import cli

sdpo_jax.skip_tpu_backend_on_a_cpu_host()  # before jax is imported (the config file may import it)

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                               "configs", "ttt_demo.py")
_CONFIG = cli.define_config_flags(
    "TTT config file (configs/ttt_*.py; default configs/ttt_demo.py); override fields with --config.a.b=v.")


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    return cli.exit_code(_run)


def _run() -> int:
    from sdpo_jax import config as config_lib

    cfg = cli.validated_config(_CONFIG, config_lib.validate_ttt)
    if cfg is None:  # --print_config
        return 0
    import jax

    from sdpo_jax import setup

    setup.run_ttt(cfg, log=lambda *args: print(*args, flush=True) if jax.process_index() == 0 else None)
    return 0


def entry() -> None:
    app.run(lambda argv: sys.exit(main(argv)), flags_parser=cli.flags_parser(_DEFAULT_CONFIG, __doc__))


if __name__ == "__main__":
    entry()
