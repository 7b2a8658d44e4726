"""The sandbox's host side, in the environment's worker process: which isolation this host allows
(`detect_kind`, probed once per process and logged), and `run_job`, which starts the launcher
(`launcher.py`, as a script, under `unshare` in the namespace kinds), hands it the job, the
runner's source, the limits and the scrubbed environment as JSON on stdin, and reads back only its
JSON answer.  The threat model and the kinds are in the package's docstring (`__init__.py`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys

from sdpo_jax.envs.sandbox.confine import kill_uid, killpg

log = logging.getLogger("sdpo_jax.envs.sandbox")

KINDS = ("ns-root", "ns-user", "setuid", "none")
DESCRIPTIONS = {
    "ns-root": "pidns+netns+mountns+ipcns+chroot+setuid",
    "ns-user": "userns+pidns+netns+mountns+ipcns+chroot",
    "setuid": "setuid-only",
    "none": "none",
}
UID_BASE = 1_500_000_000  # per-worker uids: UID_BASE + 2 * slot (solution), + 1 (judge)
DEFAULT_LIMITS = {
    "memory_mb": 1024,  # RLIMIT_AS per process (the official harness: 1 GB)
    "nproc": 32,  # RLIMIT_NPROC for the sandbox uid
    "nofile": 64,
    "fsize_mb": 16,
    "work_mb": 64,  # size of the tmpfs /work
    "stdout_bytes": 8 * 1024 * 1024,
    "stderr_bytes": 1024 * 1024,
}
SCRUBBED_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "HOME": "/work",
    "TMPDIR": "/work",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}
_HERE = os.path.dirname(os.path.abspath(__file__))
_RUNNER_PATH = os.path.join(_HERE, "runner.py")  # its source goes to the launcher in the job
_LAUNCHER_PATH = os.path.join(_HERE, "launcher.py")  # run as a script: python -I -S <file>


class SandboxUnavailable(RuntimeError):
    """The host offers no isolation and the user did not opt into running code without it."""


# ======================================================================================
# Host side (the environment's worker process)
# ======================================================================================

_DETECTED: dict = {}


def _host_python() -> str:
    return os.path.realpath(sys.executable)


def _slot_uid() -> int:
    return UID_BASE + 2 * (os.getpid() % 1_000_000)


def _launcher_cmd(kind: str) -> list:
    launch = [_host_python(), "-I", "-S", _LAUNCHER_PATH, "launch"]
    ns = ["--pid", "--net", "--mount", "--ipc", "--uts", "--fork", "--kill-child"]
    if kind == "ns-root":
        return ["unshare", *ns, "--", *launch]
    if kind == "ns-user":
        return ["unshare", "--user", "--map-root-user", *ns, "--", *launch]
    return launch


def _ro_paths(python: str, sys_path: list) -> list:
    paths = ["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc/ld.so.cache",
             "/etc/localtime", os.path.realpath(sys.base_prefix), os.path.dirname(python)]
    paths += [os.path.realpath(p) for p in sys_path]
    return [p for p in dict.fromkeys(paths) if os.path.lexists(p)]


def _site_packages() -> list:
    import sysconfig
    paths = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    return sorted(p for p in paths if os.path.isdir(p))


_PRCTL = None


def _die_with_parent() -> None:
    """preexec_fn: the launcher goes when the worker that started it goes (PR_SET_PDEATHSIG =
    SIGKILL); with unshare --kill-child the whole sandbox follows.  prctl is resolved in the parent
    (`run_job`), so the forked child only makes the call."""
    _PRCTL(1, int(signal.SIGKILL), 0, 0, 0)


def run_job(job: dict, *, isolation: str | None = None, timeout_s: float | None = None,
            limits: dict | None = None, site_packages: bool = True,
            python: str | None = None) -> dict:
    """Run one sandbox job and return the launcher's JSON answer.

    job: {"mode": "stdio" | "functional" | "check", "code": str, "tests": [{"input", "output"}],
          "fn_name", "context", "check", "entry_point", "time_limit_s", "total_time_s"}.
    Returns {"results": [{"status": pass|wrong|error|timeout|skipped, "output", "error", ...}],
             "isolation": kind} or {"setup_error": str, ...}; never raises for the job's behaviour.
    """
    kind = isolation or detect_kind()
    if kind not in KINDS:
        raise ValueError(f"sandbox isolation must be one of {KINDS}, got {kind!r}")
    python = os.path.realpath(python) if python else _host_python()
    sys_path = _site_packages() if site_packages else []
    uid = _slot_uid()
    lim = {**DEFAULT_LIMITS, **(limits or {})}
    with open(_RUNNER_PATH, encoding="utf-8") as f:
        runner_source = f.read()
    full = dict(job)
    full["sandbox"] = {"kind": kind, "uid": uid, "python": python, "sys_path": sys_path,
                       "ro_paths": _ro_paths(python, sys_path), "runner_source": runner_source,
                       "limits": lim, "env": dict(SCRUBBED_ENV)}
    if timeout_s is None:
        n = max(1, len(job.get("tests") or [None]))
        per = float(job.get("time_limit_s", 6.0)) + 1.0
        timeout_s = min(float(job.get("total_time_s", n * per)), n * per) + 10.0
    global _PRCTL
    if _PRCTL is None:
        import ctypes
        _PRCTL = ctypes.CDLL(None, use_errno=True).prctl
    proc = subprocess.Popen(_launcher_cmd(kind), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True, cwd="/",
                            env={"PATH": SCRUBBED_ENV["PATH"], "LANG": "C.UTF-8"},
                            close_fds=True, preexec_fn=_die_with_parent)
    try:
        out, err = proc.communicate(json.dumps(full).encode("utf-8"), timeout=timeout_s)
    except subprocess.TimeoutExpired:
        killpg(proc.pid)
        proc.communicate()
        return {"setup_error": f"the sandbox did not finish within {timeout_s:.0f} s",
                "host_timeout": True, "isolation": kind}
    finally:
        if kind == "setuid":
            kill_uid(uid)
            kill_uid(uid + 1)
    try:
        answer = json.loads(out.decode("utf-8"))
        if not isinstance(answer, dict):
            raise ValueError("not an object")
    except (ValueError, UnicodeDecodeError):
        return {"setup_error": f"the sandbox launcher failed (exit {proc.returncode}): "
                               f"{err.decode('utf-8', 'replace')[-1500:]}", "isolation": kind}
    answer["isolation"] = kind
    return answer


def detect_kind(refresh: bool = False) -> str:
    """The strongest isolation kind this host allows, probed by running a tiny program in it
    (once per process; `SDPO_SANDBOX_ISOLATION` forces a kind)."""
    forced = os.environ.get("SDPO_SANDBOX_ISOLATION")
    if forced:
        if forced not in KINDS:
            raise ValueError(f"SDPO_SANDBOX_ISOLATION must be one of {KINDS}, got {forced!r}")
        return forced
    if "kind" in _DETECTED and not refresh:
        return _DETECTED["kind"]
    candidates = []
    if sys.platform.startswith("linux"):
        root = os.geteuid() == 0
        if shutil.which("unshare"):
            candidates.append("ns-root" if root else "ns-user")
        if root:
            candidates.append("setuid")
    kind, why = "none", []
    for cand in candidates:
        ok, detail = probe(cand)
        if ok:
            kind = cand
            break
        why.append(f"{cand}: {detail}")
    _DETECTED["kind"] = kind
    level = logging.INFO if kind.startswith("ns-") else logging.WARNING
    log.log(level, "code sandbox isolation: %s%s", DESCRIPTIONS[kind],
            f" (not available: {'; '.join(why)})" if why else "")
    return kind


def detect_isolation(refresh: bool = False) -> str:
    """What this host allows, e.g. "pidns+netns+mountns+ipcns+chroot+setuid", "setuid-only",
    "none" (logged once)."""
    return DESCRIPTIONS[detect_kind(refresh)]


def probe(kind: str) -> tuple:
    """Run `print(input())` in `kind`; (works?, detail)."""
    job = {"mode": "stdio", "code": "print(input())", "time_limit_s": 5.0,
           "tests": [{"input": "sandbox-ok\n", "output": "sandbox-ok"}]}
    try:
        answer = run_job(job, isolation=kind, timeout_s=20.0, site_packages=False)
    except OSError as e:
        return False, str(e)
    results = answer.get("results") or []
    if results and results[0].get("status") == "pass":
        return True, ""
    return False, (answer.get("setup_error") or str(results))[:300]
