"""How the launcher confines model-written code: the sandbox's file system and its processes' rights.

  setup_namespace_root  (ns-root / ns-user) a fresh read-only root on tmpfs holding only the bound
                        host paths, /dev's harmless devices, /proc, the runner and a size-capped
                        tmpfs /work; then chroot into it
  setup_plain           (setuid / none) a private temporary directory on the host
  drop_privileges       every sandboxed process, between fork and exec: rlimits, the capability
                        bounding set emptied, securebits locked, the sandbox uid, no_new_privs
  killpg, kill_uid      kill what is left (kill_uid: setuid mode, which has no pid namespace)

Stdlib only, like the launcher (`launcher.py`), which imports this file from its own folder when it
runs as a script; the host side (`host.py`) uses killpg / kill_uid.
"""

import ctypes
import math
import os
import resource
import signal

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 1024, 2048, 1 << 21
PR_SET_DUMPABLE, PR_CAPBSET_DROP, PR_SET_SECUREBITS, PR_SET_NO_NEW_PRIVS = 4, 24, 28, 38
# NOROOT, NOROOT_LOCKED, KEEP_CAPS_LOCKED, NO_CAP_AMBIENT_RAISE(+LOCKED)
SECUREBITS = (1 << 0) | (1 << 1) | (1 << 5) | (1 << 6) | (1 << 7)
# the runner's file name in the sandbox root (or the private directory): what `ps` shows for every
# sandboxed process, and where hostile code would try to overwrite the runner (read-only there)
RUNNER_NAME = "sandbox_runner.py"
_libc = None


def c_library():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def _mount(src, target, fstype, flags, data=None):
    enc = lambda s: s.encode() if s is not None else None  # noqa: E731
    if c_library().mount(enc(src), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {src} -> {target} ({fstype}): {os.strerror(err)}")


def _locked_flags(path):
    """Mount flags a remount must keep (in a user namespace they are locked)."""
    f = os.statvfs(path).f_flag
    flags = 0
    for st, ms in ((os.ST_NOSUID, MS_NOSUID), (os.ST_NODEV, MS_NODEV), (os.ST_NOEXEC, MS_NOEXEC),
                   (os.ST_NOATIME, MS_NOATIME), (os.ST_NODIRATIME, MS_NODIRATIME),
                   (getattr(os, "ST_RELATIME", 4096), MS_RELATIME)):
        if f & st:
            flags |= ms
    return flags


def _bind_ro(src, dst):
    if os.path.isdir(src):
        os.makedirs(dst, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        open(dst, "a").close()
    _mount(src, dst, None, MS_BIND | MS_REC)
    mounts = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if point == dst or point.startswith(dst.rstrip("/") + "/"):
                mounts.append(point)
    for point in mounts:
        try:
            _mount(None, point, None,
                   MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | _locked_flags(point))
        except OSError:
            if point == dst:
                raise


ROOT_MOUNT_CANDIDATES = ("/tmp", "/mnt", "/var/tmp", "/opt", "/srv", "/media", "/home")


def root_mount_point(ro_paths, candidates=ROOT_MOUNT_CANDIDATES):
    """Where to mount the sandbox root's tmpfs: an existing directory that holds none of the paths
    still to be bound (the mount hides what was there, e.g. a checkout or venv under /tmp)."""
    def shadows(point):
        return any(p == point or p.startswith(point + "/") for p in ro_paths)

    for point in candidates:
        if os.path.isdir(point) and not os.path.islink(point) and not shadows(point):
            return point
    raise OSError(f"no directory among {candidates} can hold the sandbox root without hiding one of "
                  f"the paths it must bind ({ro_paths})")


def setup_namespace_root(sb):
    """Build the read-only root on tmpfs and chroot into it.  Returns (runner path, work dir)."""
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    base = root_mount_point(sb["ro_paths"])
    _mount("sdpo-sandbox", base, "tmpfs", MS_NOSUID | MS_NODEV, "size=16m,mode=755")
    for path in sb["ro_paths"]:
        target = base + path
        if os.path.islink(path) and os.path.dirname(path) == "/":
            os.symlink(os.readlink(path), target)  # merged-usr links: /lib -> usr/lib
        elif not os.path.exists(target) or os.path.isdir(path):
            _bind_ro(path, target)
    os.makedirs(base + "/dev", exist_ok=True)
    for dev in ("null", "zero", "full", "random", "urandom"):
        open(base + "/dev/" + dev, "a").close()
        _mount("/dev/" + dev, base + "/dev/" + dev, None, MS_BIND)
    os.makedirs(base + "/proc", exist_ok=True)
    _mount("proc", base + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    runner = base + "/" + RUNNER_NAME
    with open(runner, "w", encoding="utf-8") as f:
        f.write(sb["runner_source"])
    os.chmod(runner, 0o444)
    os.makedirs(base + "/work", exist_ok=True)
    os.symlink("/work", base + "/tmp") if not os.path.lexists(base + "/tmp") else None
    owner = 0 if sb["kind"] == "ns-user" else sb["uid"]
    lim = sb["limits"]
    _mount("sdpo-work", base + "/work", "tmpfs", MS_NOSUID | MS_NODEV,
           f"size={int(lim['work_mb'])}m,nr_inodes=4096,mode=700,uid={owner},gid={owner}")
    _mount(None, base, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    os.chroot(base)
    os.chdir("/work")
    return "/" + RUNNER_NAME, "/work"


def setup_plain(sb):
    """setuid / none: a private temporary directory on the host."""
    import tempfile
    base = tempfile.mkdtemp(prefix="sdpo-sandbox-")
    os.chmod(base, 0o711)
    runner = os.path.join(base, RUNNER_NAME)
    with open(runner, "w", encoding="utf-8") as f:
        f.write(sb["runner_source"])
    os.chmod(runner, 0o444)
    work = os.path.join(base, "work")
    os.mkdir(work, 0o700)
    if sb["kind"] == "setuid":
        os.chown(work, sb["uid"], sb["uid"])
    return runner, work, base


def drop_privileges(sb, uid, cpu_s):
    """preexec_fn of every sandboxed process (runs in the forked child, before exec)."""
    lim, kind = sb["limits"], sb["kind"]
    os.setsid()
    mem = int(lim["memory_mb"]) * 1024 * 1024
    cpu = int(math.ceil(cpu_s))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(lim["fsize_mb"]) << 20,) * 2)
    resource.setrlimit(resource.RLIMIT_NOFILE, (int(lim["nofile"]),) * 2)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if kind != "none":  # in "none" the uid is the trainer's: its count includes the trainer
        resource.setrlimit(resource.RLIMIT_NPROC, (int(lim["nproc"]),) * 2)
    if kind in ("ns-root", "ns-user", "setuid"):
        libc = c_library()
        for cap in range(64):
            if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 and ctypes.get_errno() == 22:
                break  # EINVAL: past the last capability
        if libc.prctl(PR_SET_SECUREBITS, SECUREBITS, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "PR_SET_SECUREBITS failed")
        if kind != "ns-user":
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
    if c_library().prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS failed")


def killpg(pgid):
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def kill_uid(uid):
    """Kill every process of `uid` (setuid mode: there is no pid namespace to tear down)."""
    if os.geteuid() != 0:
        return
    pid = os.fork()
    if pid == 0:  # child: become `uid`, so kill(-1) reaches exactly that uid's processes
        try:
            os.setgid(uid)
            os.setuid(uid)
            for _ in range(3):
                try:
                    os.kill(-1, signal.SIGKILL)
                except ProcessLookupError:
                    break
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
