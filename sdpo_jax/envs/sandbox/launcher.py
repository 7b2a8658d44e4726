"""The sandbox launcher: `python -I -S launcher.py launch`, job JSON on stdin, one JSON answer on
stdout.  In the namespace modes it is pid 1 of a fresh pid namespace, root there, and non-dumpable;
it builds the read-only root and starts every solution process unprivileged (both in `confine.py`),
compares outputs with the expected ones (which never reach a solution process), and kills everything
left after each test.  Stdlib only: it runs before and after chroot.
"""

import json
import os
import select
import signal
import sys
import time

if __package__:  # imported as sdpo_jax.envs.sandbox.launcher
    from sdpo_jax.envs.sandbox import confine
else:
    # Run by path as `python -I -S launcher.py`: -I leaves this file's folder off sys.path and -S
    # leaves out site-packages (so `sdpo_jax` itself is not importable): import the sibling file by
    # its folder, then take the folder off sys.path again, before any solution runs, so no later
    # import can find a module there (inside the chroot that path may lie in the solution's /work).
    # No bytecode written: a script never wrote any, and this process may be another user's root.
    sys.dont_write_bytecode = True
    _HERE = os.path.dirname(os.path.abspath(__file__))
    sys.path.append(_HERE)
    try:
        import confine
    finally:
        sys.path.remove(_HERE)


class _Launcher:
    def __init__(self, job):
        self.job, self.sb = job, job["sandbox"]
        self.kind = self.sb["kind"]
        self.lim = self.sb["limits"]
        self.base = None
        if self.kind in ("ns-root", "ns-user"):
            self.runner, self.work = confine.setup_namespace_root(self.sb)
        else:
            self.runner, self.work, self.base = confine.setup_plain(self.sb)
        self.uid = self.sb["uid"]

    # -- processes --
    def spawn(self, role, fds, *, stdin=None, cpu_s, judge=False):
        """fork + exec `python -I -S runner role fds...` as the sandbox uid, with `fds` kept,
        `stdin` (an fd, or /dev/null) as fd 0 and fresh pipes as fds 1 and 2."""
        uid = self.uid + 1 if judge else self.uid
        argv = [self.sb["python"], "-I", "-S", self.runner, role, *map(str, fds)]
        env = dict(self.sb["env"])
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        devnull = os.open(os.devnull, os.O_RDONLY) if stdin is None else None
        pid = os.fork()
        if pid == 0:  # child: only async-signal-safe work and the exec
            try:
                os.dup2(devnull if stdin is None else stdin, 0)
                os.dup2(out_w, 1)
                os.dup2(err_w, 2)
                keep = sorted(set(fds))
                low = 3
                for fd in keep:
                    os.closerange(low, fd)
                    os.set_inheritable(fd, True)
                    low = fd + 1
                os.closerange(low, 1 << 16)
                os.chdir("/" if judge else self.work)
                confine.drop_privileges(self.sb, uid, cpu_s)
                os.execve(argv[0], argv, env)
            except BaseException as e:  # noqa: BLE001
                try:
                    os.write(2, f"sandbox: could not start the program: {e!r}".encode())
                finally:
                    os._exit(127)
        for fd in (out_w, err_w) + ((devnull,) if devnull is not None else ()):
            os.close(fd)
        return _Proc(pid, out_r, err_r)

    def blob(self, obj):
        fd = os.memfd_create("sdpo-blob", 0)
        data = json.dumps(obj).encode("utf-8")
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.lseek(fd, 0, os.SEEK_SET)
        return fd

    def text_blob(self, text):
        fd = os.memfd_create("sdpo-stdin", 0)
        data = text.encode("utf-8")
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.lseek(fd, 0, os.SEEK_SET)
        return fd

    def kill_all(self, procs):
        if os.getpid() == 1:  # pid 1 of our own namespace: this reaches only sandbox processes
            try:
                os.kill(-1, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for p in procs:
            confine.killpg(p.pid)
            p.kill()
        if self.kind == "setuid":
            confine.kill_uid(self.uid)
            confine.kill_uid(self.uid + 1)
        for p in procs:
            p.wait(5.0)
            p.close()
        if os.getpid() == 1:  # reap the orphans re-parented to us
            end = time.monotonic() + 1.0
            while time.monotonic() < end:
                try:
                    pid, _ = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid == 0:
                    time.sleep(0.002)

    def run(self):
        mode = self.job["mode"]
        if mode == "stdio":
            return self.run_stdio()
        if mode == "functional":
            return self.run_functional()
        if mode == "check":
            return self.run_check()
        raise ValueError(f"unknown sandbox mode {mode!r}")

    def run_stdio(self):
        job, lim = self.job, self.lim
        limit = float(job.get("time_limit_s", 6.0))
        budget_end = time.monotonic() + float(job.get("total_time_s", 1e9))
        code_fd = self.blob({"code": job["code"], "sys_path": self.sb["sys_path"]})
        results, stop = [], False
        for test in job["tests"]:
            if stop or time.monotonic() > budget_end:
                results.append({"status": "skipped"})
                continue
            in_fd = self.text_blob(test["input"])
            err_r, err_w = os.pipe()
            os.lseek(code_fd, 0, os.SEEK_SET)
            start = time.monotonic()
            p = self.spawn("stdio", [code_fd, err_w], stdin=in_fd, cpu_s=limit + 1)
            os.close(err_w)
            os.close(in_fd)
            out_fd, stderr_fd = p.stdout_fd, p.stderr_fd
            pump = _Pump({out_fd: lim["stdout_bytes"], stderr_fd: lim["stderr_bytes"],
                          err_r: 64 * 1024})
            exited = pump.until(lambda: p.poll() is not None, start + limit + 1.0)
            elapsed = time.monotonic() - start
            pump.drain(0.05)
            self.kill_all([p])
            os.close(err_r)
            rec = {"time_s": round(elapsed, 4),
                   "output": pump.text(out_fd, 1024), "stderr": pump.text(stderr_fd, 1024)}
            err = pump.json(err_r)
            if pump.over is not None:
                rec.update(status="error", error="Output Limit Exceeded: the program wrote more "
                           f"than {pump.caps[pump.over]} bytes")
            elif not exited or _cpu_killed(p.returncode, elapsed, limit):
                rec["status"] = "timeout"
                stop = True  # every later test would cost the full limit too
            elif err and err.get("error"):
                rec.update(status="error", error=str(err["error"])[:4000])
            elif p.returncode != 0:
                rec.update(status="error", error=_exit_text(p.returncode))
            else:
                full = pump.buf[out_fd].decode("utf-8", "replace")
                rec["status"] = "pass" if _stdio_equal(full, test["output"]) else "wrong"
            results.append(rec)
        os.close(code_fd)
        return results

    def run_functional(self):
        job, lim = self.job, self.lim
        limit = float(job.get("time_limit_s", 6.0))
        total = float(job.get("total_time_s", 1e9))
        tests = job["tests"]
        code_fd = self.blob({"code": job["code"], "fn_name": job["fn_name"],
                             "tests_args": [t["args"] for t in tests],
                             "sys_path": self.sb["sys_path"]})
        resp_r, resp_w = os.pipe()
        cpu = min(total, limit * len(tests)) + 1
        p = self.spawn("functional", [code_fd, resp_w], cpu_s=cpu)
        os.close(resp_w)
        os.close(code_fd)
        pump = _Pump({p.stdout_fd: lim["stdout_bytes"], p.stderr_fd: lim["stderr_bytes"],
                      resp_r: 64 * 1024 * 1024})
        results, start_all, stop = [], time.monotonic(), None
        for test in tests:
            if stop is not None or time.monotonic() - start_all > total:
                results.append({"status": "skipped"})
                continue
            start = time.monotonic()
            got = pump.until(lambda: pump.has_line(resp_r), start + limit + 1.0,
                             give_up=lambda: p.poll() is not None and not pump.open)
            elapsed = time.monotonic() - start
            rec = {"time_s": round(elapsed, 4)}
            if pump.over is not None and pump.over != resp_r:
                rec.update(status="error", error="Output Limit Exceeded: the program wrote more "
                           f"than {pump.caps[pump.over]} bytes")
                stop = "ole"
            elif not got and p.poll() is None:
                rec["status"] = "timeout"
                stop = "timeout"
            elif not got:
                rec.update(status="error", error="the program exited before returning a result ("
                           + _exit_text(p.returncode) + ")")
                stop = "exit"
            else:
                try:
                    answer = json.loads(pump.pop_line(resp_r))
                except ValueError:
                    answer = {"ok": False, "error": "unreadable result"}
                if answer.get("ok"):
                    result = answer.get("result")
                    rec["output"] = json.dumps(result)[:1024]
                    rec["status"] = "pass" if _json_equal(result, test["output"]) else "wrong"
                else:
                    rec.update(status="error", error=str(answer.get("error"))[:4000])
            results.append(rec)
        self.kill_all([p])
        os.close(resp_r)
        return results

    def run_check(self):
        job, lim, sb = self.job, self.lim, self.sb
        limit = float(job.get("time_limit_s", 3.0))
        req_r, req_w = os.pipe()
        resp_r, resp_w = os.pipe()
        verdict_r, verdict_w = os.pipe()
        judge_fd = self.blob({"context": job.get("context", ""), "check": job["check"],
                              "entry_point": job["entry_point"], "time_limit_s": limit,
                              "check_fn": job.get("check_fn", "check"), "sys_path": sb["sys_path"]})
        cand_fd = self.blob({"code": job["code"], "context": job.get("context", ""),
                             "entry_point": job["entry_point"], "sys_path": sb["sys_path"]})
        start = time.monotonic()
        judge = self.spawn("judge", [judge_fd, req_w, resp_r, verdict_w], cpu_s=limit + 1,
                           judge=True)
        for fd in (judge_fd, req_w, resp_r, verdict_w):
            os.close(fd)
        jpump = _Pump({verdict_r: 1024 * 1024, judge.stdout_fd: lim["stdout_bytes"],
                       judge.stderr_fd: lim["stderr_bytes"]})
        deadline = start + limit + 2.0
        ready = jpump.until(lambda: len(jpump.buf[verdict_r]) >= 1, deadline,
                            give_up=lambda: judge.poll() is not None and not jpump.open)
        procs = [judge]
        if ready:  # the judge is non-dumpable now: start the solution
            cand = self.spawn("candidate", [cand_fd, req_r, resp_w], cpu_s=limit + 1)
            procs.append(cand)
            jpump.add(cand.stdout_fd, lim["stdout_bytes"])
            jpump.add(cand.stderr_fd, lim["stderr_bytes"])
        for fd in (cand_fd, req_r, resp_w):
            os.close(fd)
        done = ready and jpump.until(lambda: verdict_r not in jpump.open, deadline)
        elapsed = time.monotonic() - start
        self.kill_all(procs)
        os.close(verdict_r)
        raw = bytes(jpump.buf[verdict_r][1:])
        rec = {"time_s": round(elapsed, 4)}
        if jpump.over is not None and jpump.over != verdict_r:
            rec.update(status="error", error="Output Limit Exceeded: the program wrote more than "
                       f"{jpump.caps[jpump.over]} bytes")
        elif not done and elapsed >= limit:
            rec["status"] = "timeout"
        else:
            try:
                verdict = json.loads(raw.decode("utf-8"))
            except ValueError:
                verdict = {"status": "error", "error": "the checker did not report a verdict "
                           f"({_exit_text(judge.returncode)})"}
            rec.update({k: verdict.get(k) for k in ("status", "error", "input", "output",
                                                     "failed_check", "message", "calls")})
            if rec["status"] not in ("pass", "wrong", "error", "timeout"):
                rec["status"] = "error"
        return [rec]


class _Proc:
    """A child started by `spawn`: pid, the read ends of its stdout / stderr, its exit code."""

    def __init__(self, pid, stdout_fd, stderr_fd):
        self.pid, self.stdout_fd, self.stderr_fd, self.returncode = pid, stdout_fd, stderr_fd, None

    def poll(self):
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere
                self.returncode = -signal.SIGKILL
                return self.returncode
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout):
        end = time.monotonic() + timeout
        while self.poll() is None and time.monotonic() < end:
            time.sleep(0.001)
        return self.returncode

    def kill(self):
        if self.returncode is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def close(self):
        for fd in (self.stdout_fd, self.stderr_fd):
            try:
                os.close(fd)
            except OSError:
                pass


class _Pump:
    """Reads several non-blocking pipes at once, each up to a cap."""

    def __init__(self, caps):
        self.caps, self.buf, self.open, self.over = {}, {}, set(), None
        for fd, cap in caps.items():
            self.add(fd, cap)

    def add(self, fd, cap):
        os.set_blocking(fd, False)
        self.caps[fd], self.buf[fd] = int(cap), bytearray()
        self.open.add(fd)

    def step(self, timeout):
        if not self.open:
            time.sleep(min(max(timeout, 0.0), 0.005))
            return
        ready, _, _ = select.select(list(self.open), [], [], max(timeout, 0.0))
        for fd in ready:
            try:
                chunk = os.read(fd, 1 << 16)
            except BlockingIOError:
                continue
            except OSError:
                chunk = b""
            if not chunk:
                self.open.discard(fd)
                continue
            self.buf[fd] += chunk
            if len(self.buf[fd]) > self.caps[fd] and self.over is None:
                self.over = fd

    def until(self, cond, deadline, give_up=None):
        while True:
            if cond():
                return True
            if self.over is not None:
                return False
            if give_up is not None and give_up():
                self.drain(0.02)
                return cond()
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.step(min(left, 0.02))

    def drain(self, seconds):
        end = time.monotonic() + seconds
        while self.open and self.over is None and time.monotonic() < end:
            self.step(0.005)

    def has_line(self, fd):
        return b"\n" in self.buf[fd]

    def pop_line(self, fd):
        data = self.buf[fd]
        i = data.index(b"\n")
        line = bytes(data[:i])
        del data[: i + 1]
        return line.decode("utf-8", "replace")

    def text(self, fd, n):
        return bytes(self.buf[fd][: n + 1]).decode("utf-8", "replace")

    def json(self, fd):
        try:
            return json.loads(bytes(self.buf[fd]).decode("utf-8"))
        except ValueError:
            return None


def _exit_text(rc):
    if rc is None:
        return "still running"
    if rc < 0:
        try:
            return f"killed by signal {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exit code {rc}"


def _cpu_killed(rc, elapsed, limit):
    return rc == -signal.SIGXCPU or (rc == -signal.SIGKILL and elapsed >= 0.9 * limit)


def _stdio_equal(output, expected):
    """Whitespace-token equality (the official harness: strip, newlines as spaces, drop a trailing
    '-' from the expected text), then LiveCodeBench's per-token decimal comparison."""
    import decimal
    exp = expected.strip()
    if exp.endswith("-"):
        exp = exp[: exp.rfind("-")].rstrip()
    a, b = output.split(), exp.split()
    if a == b:
        return True
    if len(a) != len(b):
        return False
    try:
        return all(decimal.Decimal(x) == decimal.Decimal(y) for x, y in zip(a, b))
    except (decimal.InvalidOperation, ValueError):
        return False


def _json_equal(result, expected):
    try:
        return bool(result == expected)
    except Exception:  # noqa: BLE001 - plain JSON never raises, but be safe
        return False


def _launcher_main():
    confine.c_library().prctl(confine.PR_SET_DUMPABLE, 0, 0, 0, 0)
    out, launcher = {}, None
    try:
        job = json.loads(sys.stdin.buffer.read().decode("utf-8"))
        launcher = _Launcher(job)
        out["results"] = launcher.run()
    except Exception as e:  # noqa: BLE001 - reported to the host as JSON
        out["setup_error"] = f"{type(e).__name__}: {e}"[:2000]
    finally:
        if launcher is not None and launcher.base:
            import shutil
            shutil.rmtree(launcher.base, ignore_errors=True)
    sys.stdout.write(json.dumps(out))
    sys.stdout.flush()


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "launch":
    _launcher_main()
