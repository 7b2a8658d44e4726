"""The environment of the tests that start `python -m sdpo_jax...` jobs in subprocesses: CPU only with a given
number of fake devices, offline, the repository's persistent compilation cache, unbuffered output."""

import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def job_env(devices: int = 1, **extra: str) -> dict:
    env = dict(os.environ)
    env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu",
               HF_HUB_OFFLINE="1", JAX_COMPILATION_CACHE_DIR=os.path.join(REPO, ".jax_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    env.update(extra)
    return env
