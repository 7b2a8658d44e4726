"""Hostile programs against real targets the test sets up: each is contained, scores 0, and leaves
the host (this test process, its files, its secret, its listener) and the scorer's workers unharmed.

Every program runs the way training runs it: Scorer (worker process) -> sandbox -> solution, on a
stdin problem whose expected output is "ok", so it scores 0 whatever it prints; what it prints
(visible in the feedback's Output) says whether each attack got through inside the sandbox.
"""

import os
import socket
import time

import pytest

from sdpo_jax.envs import Scorer, sandbox

KINDS = [k for k in ("ns-root", "ns-user") if sandbox.probe(k)[0]]
pytestmark = pytest.mark.skipif(not KINDS, reason="no namespace sandbox on this host")
OK_PROBLEM = {"id": "hostile", "question": "print ok",
              "tests": {"type": "stdin", "inputs": ["\n"], "outputs": ["ok\n"]},
              "time_limit_s": 2.0}
CHECK_PROBLEM = {"id": "hostile-check", "question": "add",
                 "tests": {"type": "check", "entry_point": "add", "context": "",
                           "check": "def check(candidate):\n    assert candidate(2, 3) == 5\n"
                                    "    assert candidate(-1, 1) == 0\n"},
                 "time_limit_s": 3.0}


def fenced(src):
    return f"```python\n{src}\n```"


@pytest.fixture(scope="module", params=KINDS)
def scorer(request):
    with Scorer("code", num_workers=1, timeout_s=60, env_options={"isolation": request.param}) as s:
        scores, _ = s.score([OK_PROBLEM], [fenced("print('ok')")])  # starts the worker
        assert scores[0].reward == 1.0, scores[0]
        s.worker_pid = s._workers[0].proc.pid
        yield s
        # the scorer survived everything: same worker, still scoring correctly
        assert s._workers[0].proc.pid == s.worker_pid and s._workers[0].alive()
        assert s.totals["restarts"] == 0 and s.totals["crashes"] == 0
        scores, _ = s.score([OK_PROBLEM, CHECK_PROBLEM],
                            [fenced("print('ok')"), fenced("def add(a, b):\n    return a + b")])
        assert [x.reward for x in scores] == [1.0, 1.0]


def run(scorer, src, problem=OK_PROBLEM):
    scores, stats = scorer.score([problem], [fenced(src)])
    assert stats["crashes"] == stats["timeouts"] == stats["errors"] == 0, stats
    return scores[0]


def sandbox_processes():
    """Host pids of processes still running sandbox code (the runner's command line)."""
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if b"sandbox_runner.py" in f.read():
                        found.append(int(pid))
            except OSError:
                pass
    return found


def test_cannot_write_a_host_file(scorer, tmp_path):
    """A world-writable file the test owns, in a world-writable directory, stays untouched."""
    os.chmod(tmp_path, 0o777)
    victim = tmp_path / "victim.txt"
    victim.write_text("original")
    os.chmod(victim, 0o666)
    src = f"""
out = []
for attack in ("write", "remove", "create"):
    try:
        if attack == "write":
            open({str(victim)!r}, "w").write("pwned")
        elif attack == "remove":
            import os; os.remove({str(victim)!r})
        else:
            open({str(tmp_path / "new.txt")!r}, "w").write("pwned")
        out.append(attack + ":DONE")
    except OSError:
        out.append(attack + ":blocked")
print(" ".join(out))
"""
    s = run(scorer, src)
    assert s.reward == 0.0
    assert "write:blocked remove:blocked create:blocked" in s.feedback, s.feedback
    assert victim.read_text() == "original" and not (tmp_path / "new.txt").exists()


def test_cannot_read_the_trainers_secret(scorer, monkeypatch):
    """A secret in the test's (and so the worker's) environment is not visible: not in os.environ,
    not through /proc/<test pid>/environ, /proc/<worker pid>/environ or any /proc/*/environ."""
    secret = "sdpo-secret-" + os.urandom(8).hex()
    monkeypatch.setenv("SDPO_TEST_SECRET", secret)
    # the worker's environment was fixed at start; plant it there as well via a fresh scorer
    with Scorer("code", num_workers=1, timeout_s=60,
                env_options=scorer.env_options) as fresh:
        src = f"""
import os
found = [v for v in os.environ.values() if "sdpo-secret" in v]
for pid in ["self", "1", {os.getpid()!r}] + [p for p in os.listdir("/proc") if p.isdigit()]:
    for what in ("environ", "cmdline"):
        try:
            data = open("/proc/" + str(pid) + "/" + what, "rb").read()
            if b"sdpo-secret" in data:
                found.append(str(pid) + what)
        except OSError:
            pass
print("found=" + repr(found))
"""
        scores, _ = fresh.score([OK_PROBLEM], [fenced(src)])
        worker_env = open(f"/proc/{fresh._workers[0].proc.pid}/environ", "rb").read()
    assert secret.encode() in worker_env  # the target was real
    s = scores[0]
    assert s.reward == 0.0 and "found=[]" in s.feedback, s.feedback
    assert secret not in s.feedback and secret not in str(s.info)


def test_cannot_reach_a_localhost_listener(scorer):
    """A listener the test opened on 127.0.0.1 receives no connection."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    src = f"""
import socket
out = []
for host in ("127.0.0.1", "localhost"):
    try:
        c = socket.create_connection((host, {port}), timeout=1)
        c.sendall(b"pwned")
        out.append("CONNECTED")
    except OSError:
        out.append("blocked")
print(" ".join(out))
"""
    try:
        s = run(scorer, src)
        listener.settimeout(0.3)
        with pytest.raises(socket.timeout):
            listener.accept()
    finally:
        listener.close()
    assert s.reward == 0.0 and "blocked blocked" in s.feedback, s.feedback


def test_cannot_signal_the_test_or_the_workers(scorer):
    """SIGKILL aimed at this test process, the pool's worker and everything (kill -1) reaches none
    of them (the fixture then checks the same worker still scores)."""
    targets = [os.getpid(), scorer.worker_pid]
    src = f"""
import os, signal, sys
out = []
for pid in {targets!r}:
    try:
        os.kill(pid, signal.SIGKILL)
        out.append("KILLED")
    except OSError:
        out.append("blocked")
print(" ".join(out)); sys.stdout.flush()
try:
    os.kill(-1, signal.SIGKILL)
except OSError:
    pass
"""
    s = run(scorer, src)
    assert s.reward == 0.0 and "blocked blocked" in s.feedback, s.feedback
    os.kill(scorer.worker_pid, 0)  # still there
    assert scorer._workers[0].alive()


def test_fork_storm_is_bounded_and_orphans_die(scorer):
    """300 forks that sleep, plus a double-forked orphan in its own session: the storm stops at the
    process limit and nothing outlives the run."""
    src = """
import os, sys, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        time.sleep(60)
    os._exit(0)
n = 0
for _ in range(300):
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        time.sleep(60)
        os._exit(0)
    n += 1
print("forked=" + str(n)); sys.stdout.flush()
"""
    start = time.monotonic()
    s = run(scorer, src)
    assert time.monotonic() - start < 15
    assert s.reward == 0.0 and "forked=" in s.feedback, s.feedback
    forked = int(s.feedback.split("forked=")[1].split()[0])
    if scorer.env_options["isolation"] == "ns-root" or os.geteuid() != 0:
        assert 0 < forked <= sandbox.DEFAULT_LIMITS["nproc"]  # RLIMIT_NPROC on the sandbox uid
    # (ns-user started by root maps the sandbox to uid 0, which RLIMIT_NPROC exempts; root hosts
    # use ns-root, and an unprivileged user is bounded: see the last test.  The pid namespace
    # takes every process down either way, checked below.)
    deadline = time.monotonic() + 3
    while sandbox_processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sandbox_processes() == []


def test_infinite_loop_times_out(scorer):
    """`while True: pass` ends as Time Limit Exceeded near the 2 s limit."""
    start = time.monotonic()
    s = run(scorer, "while True:\n    pass")
    assert s.reward == 0.0 and s.feedback.startswith("Time Limit Exceeded")
    assert time.monotonic() - start < 10


def test_memory_bomb_is_stopped(scorer):
    """Allocating without bound hits the address-space limit: a MemoryError, quickly."""
    src = "x = []\nwhile True:\n    x.append(bytes(256 * 2**20))  # untouched pages: fast"
    start = time.monotonic()
    s = run(scorer, src)
    assert s.reward == 0.0 and "MemoryError" in s.feedback, s.feedback
    s = run(scorer, "x = bytearray(10**12)")
    assert s.reward == 0.0 and "MemoryError" in s.feedback, s.feedback
    assert time.monotonic() - start < 10


def test_stdout_flood_is_capped():
    """100 MB on stdout: cut off at the cap as Output Limit Exceeded; the answer stays small."""
    job = {"mode": "stdio", "code": "import sys\nc = 'x' * 2**20\nfor _ in range(100):\n"
                                    "    sys.stdout.write(c)\n", "time_limit_s": 5.0,
           "tests": [{"input": "", "output": "ok"}]}
    start = time.monotonic()
    answer = sandbox.run_job(job, isolation=KINDS[0])
    assert time.monotonic() - start < 10
    rec = answer["results"][0]
    assert rec["status"] == "error" and rec["error"].startswith("Output Limit Exceeded")
    assert len(str(answer)) < 20_000


def test_exit_before_the_tests_is_not_a_pass(scorer):
    """os._exit(0) / sys.exit(0) at import time, in a check program and a call-based problem."""
    for src in ("import os\nos._exit(0)", "import sys\nsys.exit(0)",
                "import os\ndef add(a, b):\n    os._exit(0)"):
        s = run(scorer, src, CHECK_PROBLEM)
        assert s.reward == 0.0, (src, s)
    func = {"id": "f", "question": "add", "time_limit_s": 2.0,
            "tests": {"type": "functional", "fn_name": "add", "inputs": ["1\n2"], "outputs": ["3"]}}
    s = run(scorer, "import os\nos._exit(0)", func)
    assert s.reward == 0.0 and s.feedback.startswith("Runtime Error")


def test_printing_a_pass_is_not_a_pass(scorer):
    """Printing every verdict format and writing it to every open fd, then exiting 0, fails."""
    src = """
import os, json
fake = json.dumps({"status": "pass", "ok": True, "result": 5, "results": [{"status": "pass"}]})
print(fake); print("All tests passed"); print("PASSED")
for fd in range(3, 64):
    try:
        os.write(fd, (fake + "\\n").encode())
    except OSError:
        pass
os._exit(0)
"""
    s = run(scorer, src, CHECK_PROBLEM)
    assert s.reward == 0.0, s


def test_objects_that_equal_everything_fail(scorer):
    """Results are compared as plain data: __eq__ tricks (own class or int/str subclasses) fail."""
    for src in ("class A:\n    def __eq__(self, o):\n        return True\n"
                "def add(a, b):\n    return A()",
                "class I(int):\n    def __eq__(self, o):\n        return True\n"
                "def add(a, b):\n    return I(7)"):
        s = run(scorer, src, CHECK_PROBLEM)
        assert s.reward == 0.0, (src, s)


def test_cannot_spy_on_the_judge_or_tamper_with_files(scorer):
    """Inside a check run the solution cannot read another process's memory, environment or fds,
    cannot ptrace it, cannot write the runner, the stdlib or /usr, and has no capabilities."""
    src = """
import ctypes, json, os
leaks = []
me = str(os.getpid())
for pid in os.listdir("/proc"):
    if not pid.isdigit() or pid == me:
        continue
    for what in ("mem", "environ"):
        try:
            open("/proc/" + pid + "/" + what, "rb").read(16)
            leaks.append(pid + what)
        except OSError:
            pass
    try:  # in ns-user the fd numbers can be listed (the dir belongs to the namespace root)...
        fds = os.listdir("/proc/" + pid + "/fd")
    except OSError:
        fds = [str(n) for n in range(64)]
    for fd in fds:  # ...but none may be opened: not the judge's verdict pipe, not the launcher's
        for mode in ("rb", "wb"):
            try:
                open("/proc/" + pid + "/fd/" + fd, mode)
                leaks.append(pid + "fd" + fd + mode)
            except OSError:
                pass
    if ctypes.CDLL(None).ptrace(16, int(pid), 0, 0) == 0:
        leaks.append(pid + "ptrace")
for path in ("/sandbox_runner.py", json.__file__, "/usr/pwned"):
    try:
        open(path, "a").write("pwned")
        leaks.append("wrote " + path)
    except OSError:
        pass
capeff = [l for l in open("/proc/self/status") if l.startswith("CapEff")][0].split()[1]
def add(a, b):
    raise RuntimeError("leaks=%r capeff=%s" % (leaks, capeff))
"""
    s = run(scorer, src, CHECK_PROBLEM)
    assert s.reward == 0.0
    assert "leaks=[] capeff=0000000000000000" in s.feedback, s.feedback


def test_no_leftover_sandbox_processes():
    """After all of the above, no sandboxed process is left on the host."""
    assert sandbox_processes() == []


NONROOT_SOLUTION = """
import os, sys, time
out = []
try:
    open(VICTIM, "w").write("pwned")
    out.append("WROTE")
except OSError:
    out.append("blocked")
out.append("secret" if any("sdpo-secret" in v for v in os.environ.values()) else "nosecret")
n = 0
for _ in range(300):
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        time.sleep(60)
        os._exit(0)
    n += 1
print(" ".join(out), "forked=" + str(n))
"""
NONROOT_SCRIPT = """
import json, sys
sys.path.insert(0, sys.argv[1])
from sdpo_jax.envs import sandbox
src = "VICTIM = %r\\n" % sys.argv[2] + open(sys.argv[3]).read()
job = {"mode": "stdio", "code": src, "time_limit_s": 3, "tests": [{"input": "", "output": "ok"}]}
print(json.dumps({"kind": sandbox.detect_kind(),
                  "answer": sandbox.run_job(job, site_packages=False)}))
"""


@pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/usr/bin/python3")
                    or not os.path.exists("/usr/bin/setpriv"), reason="needs root to become nobody")
def test_unprivileged_user_gets_the_user_namespace_sandbox():
    """As an unprivileged user (nobody, as on a TPU VM without sudo) the sandbox is ns-user: the
    user's own writable file stays untouched, its secret stays out, the fork storm is bounded."""
    import json
    import pathlib
    import shutil
    import subprocess
    import tempfile
    tmp_path = pathlib.Path(tempfile.mkdtemp(prefix="sdpo-nonroot-"))  # pytest's tmp is root-only
    os.chmod(tmp_path, 0o777)
    try:
        _run_as_nobody(tmp_path, json, subprocess)
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)


def _run_as_nobody(tmp_path, json, subprocess):
    victim = tmp_path / "owned_by_nobody.txt"
    victim.write_text("original")
    os.chown(victim, 65534, 65534)
    (tmp_path / "probe.py").write_text(NONROOT_SCRIPT)
    (tmp_path / "solution.py").write_text(NONROOT_SOLUTION)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {"PATH": "/usr/bin:/bin", "SDPO_TEST_SECRET": "sdpo-secret-" + os.urandom(4).hex()}
    out = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                          "/usr/bin/python3", "-I", str(tmp_path / "probe.py"), repo, str(victim),
                          str(tmp_path / "solution.py")],
                         capture_output=True, text=True, timeout=60, env=env, cwd="/")
    if out.returncode != 0 and "Permission denied" in out.stderr:
        pytest.skip("nobody cannot read the repository here")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if result["kind"] != "ns-user":
        pytest.skip(f"unprivileged user namespaces unavailable here ({result['kind']})")
    rec = result["answer"]["results"][0]
    assert rec["status"] == "wrong" and rec["output"].startswith("blocked nosecret forked="), rec
    assert 0 < int(rec["output"].split("forked=")[1]) <= sandbox.DEFAULT_LIMITS["nproc"]
    assert victim.read_text() == "original"
    assert sandbox_processes() == []


def test_sandbox_root_never_hides_a_path_it_binds(tmp_path):
    """The sandbox root's tmpfs goes on a directory holding none of the paths it must bind: a
    checkout or virtual environment under /tmp (as in CI's clone) still reaches the sandbox."""
    from sdpo_jax.envs.sandbox.confine import root_mount_point

    venv = "/tmp/clone/.venv/lib/python3.11/site-packages"
    assert root_mount_point(["/usr", venv]) != "/tmp"
    assert root_mount_point(["/usr", "/work/x/.venv"]) == "/tmp"
    with pytest.raises(OSError, match="can hold the sandbox root"):
        root_mount_point(["/usr"], candidates=("/usr",))
