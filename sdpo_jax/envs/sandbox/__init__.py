"""A sandbox for model-written code: namespaces, an unprivileged uid, rlimits; judged outside.

Why not just rlimits: a process with the trainer's uid can kill the trainer, read its environment
through /proc, connect to its sockets and write wherever the trainer may; RLIMIT_NPROC does not bind
root.  So, where the host allows it (`detect_isolation()` probes once per process and logs it):

  ns-root  (host root: this CI box, Colab, `sudo` on a TPU VM)
           unshare pid+net+mount+ipc+uts namespaces; a launcher (pid 1 of the new pid namespace)
           builds a fresh read-only root on tmpfs holding only /usr, /lib*, /bin, the Python
           installation and a size-capped tmpfs /work, chroots into it, and starts each solution
           process as a per-worker unprivileged uid with no capabilities (bounding set emptied,
           no_new_privs), a scrubbed environment, rlimits (CPU, address space, file size, open
           files, processes, no core files) and capped stdout/stderr.  No network (an empty net
           namespace: not even the host's 127.0.0.1).  When the launcher exits, the kernel kills
           every process left in the namespace, so orphans and fork storms die with it.
  ns-user  (non-root with unprivileged user namespaces) the same, inside a user namespace; the
           solution keeps the mapped uid but no capabilities, and sees no host file it could write.
  setuid   (root without namespaces) an unprivileged uid, rlimits, a private temporary directory;
           the host's files stay readable, the network reachable.  Weak.
  none     rlimits and a temporary directory only: the code environment refuses it unless the user
           sets `env.unsafe_allow_no_sandbox`.

The trust boundary: expected outputs never enter a solution process.  The launcher (root in the
namespace, non-dumpable, another uid) compares outputs itself and writes one JSON object to its own
stdout, which no solution process holds; the host reads back only that JSON, never a pickle.  A
HumanEval-style check program runs in a separate non-dumpable judge process (another uid where
possible) whose `candidate` is a proxy to the solution process, so printing what a pass looks like,
exiting early, monkey-patching or tracing the checker cannot produce a pass.

Modules
  host.py      the host side, in the environment's worker process: picks and probes the isolation
               kind (`detect_kind`), starts the launcher and reads back its JSON answer (`run_job`)
  launcher.py  the launcher (`python -I -S launcher.py launch`): runs and judges each test
  confine.py   the launcher's confinement: the read-only root and chroot, dropped privileges, kills
  runner.py    the programs that run inside the sandbox, as the unprivileged user
launcher.py, confine.py and runner.py are stdlib only; the host runs the launcher and reads the
runner's source by path (so all three ship in the wheel as files), and the launcher imports
confine.py from its own folder.
"""

from sdpo_jax.envs.sandbox.host import (
    DEFAULT_LIMITS,
    DESCRIPTIONS,
    KINDS,
    SCRUBBED_ENV,
    UID_BASE,
    SandboxUnavailable,
    detect_isolation,
    detect_kind,
    probe,
    run_job,
)

__all__ = ["DEFAULT_LIMITS", "DESCRIPTIONS", "KINDS", "SCRUBBED_ENV", "UID_BASE", "SandboxUnavailable",
           "detect_isolation", "detect_kind", "probe", "run_job"]
