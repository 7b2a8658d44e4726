"""sdpo_jax: Self-Distillation Policy Optimization (Hübotter et al., 2026) in JAX."""

__version__ = "0.1.0"


def skip_tpu_backend_on_a_cpu_host() -> None:
    """On a host with neither TPU chips nor a GPU but with `libtpu` installed (the ahead-of-time compiler
    of requirements-tpu-aot.txt), set JAX_PLATFORMS=cpu unless it is set: JAX would otherwise start its
    TPU backend, which prints libtpu's start-up errors before falling back to the CPU. Call before jax is
    imported (the entry points `main` and `ttt` do); anywhere else it changes nothing."""
    import glob
    import importlib.util
    import os

    if "JAX_PLATFORMS" in os.environ or importlib.util.find_spec("libtpu") is None:
        return
    vendors = set()
    for path in glob.glob("/sys/bus/pci/devices/*/vendor"):
        try:
            with open(path) as f:
                vendors.add(f.read().strip())
        except OSError:
            continue
    accelerators = {"0x1ae0", "0x10de", "0x1002"}  # Google TPU, NVIDIA, AMD (JAX's own PCI checks)
    if not vendors & accelerators and not glob.glob("/dev/nvidia*") and not glob.glob("/dev/accel*"):
        os.environ["JAX_PLATFORMS"] = "cpu"
