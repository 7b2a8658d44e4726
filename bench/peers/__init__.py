"""The benchmarks' peers, each run alone in its own process (never in the process that imports JAX)."""

import os
import subprocess
import sys

PEERS_DIR = os.path.dirname(os.path.abspath(__file__))


def run_peer(script: str, *arguments: str) -> str:
    """Run `bench/peers/<script>` with `arguments` in its own Python process; its stdout (RuntimeError with the
    end of its stderr when it fails)."""
    path = os.path.join(PEERS_DIR, script)
    proc = subprocess.run([sys.executable, path, *arguments], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{path} {arguments[0] if arguments else ''} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout
