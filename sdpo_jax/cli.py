"""What the command lines (`sdpo_jax.main`, `sdpo_jax.ttt`) share: read and validate the config before
anything heavy (one `error:` line and exit code 2 on a bad field), start `jax.distributed` on multi-process
launches, then validate what depends on the device count. Imports nothing heavy at module level, so an entry
point can call `sdpo_jax.skip_tpu_backend_on_a_cpu_host()` before JAX is imported."""

from __future__ import annotations

import os
import sys
from typing import Any, Callable


def validated_config(config_flag, default_path: str, validate: Callable[..., None]) -> Any:
    """The config of `--config` checked by `validate(cfg)` and, after `jax.distributed` starts, by
    `validate(cfg, num_devices=...)`; an int exit code (2) after printing one `error:` line instead."""
    from absl import flags
    from absl import logging as absl_logging

    from sdpo_jax import config as config_lib

    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax / grain INFO lines drown the progress
    if not flags.FLAGS["config"].present and not os.path.exists(default_path):
        print(f"error: no --config given and the default {default_path} does not exist (configs/ ships with the "
              f"repository, not the wheel): pass --config=PATH/TO/configs/{os.path.basename(default_path)}",
              file=sys.stderr)
        return 2
    cfg = config_flag.value
    try:
        validate(cfg)  # schema, types, ranges, paths: before jax starts
    except config_lib.ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    import jax

    from sdpo_jax import sharding

    sharding.maybe_initialize_distributed()  # a multi-host slice: every host runs this same command
    try:
        validate(cfg, num_devices=jax.device_count())
    except config_lib.ConfigError as err:
        if jax.process_index() == 0:
            print(f"error: {err}", file=sys.stderr)
        return 2
    return cfg
