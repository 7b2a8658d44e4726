"""launch/tpu.sh: dry-run commands, quoting, fail-fast checks, idempotence (fake gcloud), remote script.

No network and no real gcloud: every call gets a PATH of its own, either without gcloud or with a
tiny fake `gcloud` that logs its argv and answers `describe` as told.
"""

import ast
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "launch", "tpu.sh")
BASH = shutil.which("bash")
LOC = ["--project=proj-1", "--zone=us-central2-b"]
TRICKY = ["--config.rollout.prompt_buckets=(128, 256)", "--config.run_name=it's a \"test\"",
          "--config.model.path=$HOME/m;rm -rf x", "--config.logging.note=", "--config.seed=3"]
_TOOLS = ("dirname", "basename", "sed", "cat", "sleep", "du", "cut", "tar", "git", "gzip")


def _bin_dir(tmp_path, gcloud_exists=None):
    """A PATH folder with the few tools the script uses; a fake gcloud only when gcloud_exists is set."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for tool in _TOOLS:
        if shutil.which(tool) and not (bin_dir / tool).exists():
            (bin_dir / tool).symlink_to(shutil.which(tool))
    if gcloud_exists is not None:
        fake = bin_dir / "gcloud"
        fake.write_text(f"""#!{BASH}
{{ printf '%s\\x1f' "$@"; printf '\\n'; }} >> "$GCLOUD_LOG"
case " $* " in
  *" create "*) : > "$GCLOUD_LOG.created" ;;
  *" describe "*)
    [ "$FAKE_EXISTS" = 1 ] || [ -e "$GCLOUD_LOG.created" ] || {{ echo "ERROR: (gcloud) NOT_FOUND" >&2; exit 1; }}
    case "$*" in *state.state*) echo ACTIVE ;; *) echo "$3" ;; esac ;;
  *" config get-value project "*) echo "$FAKE_PROJECT" ;;
esac
exit 0
""")
        fake.chmod(0o755)
    return str(bin_dir)


def _run(args, tmp_path, *, gcloud_exists=None, env_extra=None, timeout=30):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDSDK_")}
    env.update(PATH=_bin_dir(tmp_path, gcloud_exists), HOME=str(tmp_path), TMPDIR=str(tmp_path),
               GCLOUD_LOG=str(tmp_path / "gcloud.log"), FAKE_EXISTS="1" if gcloud_exists else "0",
               FAKE_PROJECT="")
    env.update(env_extra or {})
    return subprocess.run([BASH, SCRIPT, *args], capture_output=True, text=True, env=env, timeout=timeout,
                          cwd=str(tmp_path))


def _gcloud_lines(stdout):
    """The printed gcloud commands, each parsed back into an argv the way a shell would."""
    return [shlex.split(line) for line in stdout.splitlines() if line.startswith("gcloud ")]


def _fake_calls(tmp_path):
    log = tmp_path / "gcloud.log"
    if not log.exists():
        return []
    return [line.split("\x1f")[:-1] for line in log.read_text().splitlines()]


def _remote_command(argv):
    (command,) = [a for a in argv if a.startswith("--command=")]
    return command[len("--command="):]


def _main_argv(remote_script):
    """The `python -m sdpo_jax.main ...` words of the run script, as the remote shell splits them."""
    words = shlex.split(remote_script)
    start = words.index(".venv/bin/python")
    return words[start:words.index(">", start)]


def test_dry_run_create_prints_tpu_vm_create(tmp_path):
    """Dry-run create prints one pasteable tpu-vm create with zone, project, accelerator, runtime; --spot adds --spot."""
    out = _run(["--dry-run", *LOC, "create"], tmp_path)
    assert out.returncode == 0, out.stderr
    assert _gcloud_lines(out.stdout) == [[
        "gcloud", "compute", "tpus", "tpu-vm", "create", "sdpo-jax", "--zone=us-central2-b", "--project=proj-1",
        "--accelerator-type=v4-8", "--version=tpu-ubuntu2204-base"]]
    spot = _run(["--dry-run", *LOC, "--name=my-tpu", "--accelerator", "v6e-8", "--spot", "create"], tmp_path)
    (argv,) = _gcloud_lines(spot.stdout)
    assert argv[5] == "my-tpu" and argv[-1] == "--spot"
    assert "--accelerator-type=v6e-8" in argv and "--version=v2-alpha-tpuv6e" in argv
    assert not _fake_calls(tmp_path)


def test_dry_run_create_queued_resource_with_spot(tmp_path):
    """--queued creates a queued resource (node id = name, --runtime-version) and passes --spot through."""
    out = _run(["--dry-run", *LOC, "create", "--queued", "--spot", "--accelerator=v5litepod-16",
                "--version=v2-alpha-tpuv5-lite"], tmp_path)
    assert out.returncode == 0, out.stderr
    assert _gcloud_lines(out.stdout) == [[
        "gcloud", "compute", "tpus", "queued-resources", "create", "sdpo-jax", "--zone=us-central2-b",
        "--project=proj-1", "--node-id=sdpo-jax", "--accelerator-type=v5litepod-16",
        "--runtime-version=v2-alpha-tpuv5-lite", "--spot"]]


def test_dry_run_run_quotes_overrides_for_both_shells(tmp_path):
    """The run command goes to every worker (--worker=all), and the overrides (spaces, parens, quotes, $, ;)
    come back word for word after the local and the remote shell split them; then worker 0's log streams."""
    out = _run(["--dry-run", *LOC, "run", "--config=configs/demo_grpo.py", "--bucket=gs://my-bkt",
                "--env=HF_TOKEN=a b'c", "--", *TRICKY], tmp_path)
    assert out.returncode == 0, out.stderr
    run_argv, logs_argv = _gcloud_lines(out.stdout)
    assert run_argv[:9] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "sdpo-jax", "--zone=us-central2-b",
                            "--project=proj-1", "--worker=all"]
    script = _remote_command(run_argv)
    assert _main_argv(script) == [".venv/bin/python", "-m", "sdpo_jax.main", "--config=configs/demo_grpo.py",
                                  "--config.run_dir=/mnt/gcs/my-bkt/runs/demo_grpo", *TRICKY]
    assert "gcsfuse" in script and "export HF_TOKEN='a b'\\''c';" in script
    assert "--worker=0" in logs_argv and "tail" in _remote_command(logs_argv)


def test_user_run_dir_wins_and_no_follow_skips_logs(tmp_path):
    """An explicit --config.run_dir is not overridden by the bucket default; --no-follow prints no log command."""
    out = _run(["--dry-run", *LOC, "--bucket=b", "--no-follow", "run", "--",
                "--config.run_dir=/mnt/gcs/b/elsewhere"], tmp_path)
    (run_argv,) = _gcloud_lines(out.stdout)
    main_argv = _main_argv(_remote_command(run_argv))
    assert [a for a in main_argv if a.startswith("--config.run_dir")] == ["--config.run_dir=/mnt/gcs/b/elsewhere"]


def test_dry_run_setup_installs_on_all_workers(tmp_path):
    """setup copies the checkout to all workers (scp --worker=all), then installs in a venv on all of them;
    --bucket adds gcsfuse, --git clones instead of copying."""
    out = _run(["--dry-run", *LOC, "setup"], tmp_path)
    assert out.returncode == 0, out.stderr
    scp, ssh = _gcloud_lines(out.stdout)
    assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"] and "--worker=all" in scp
    assert scp[6] == "sdpo-jax:sdpo-jax.tgz"
    script = _remote_command(ssh)
    assert "--worker=all" in ssh
    assert "pip install -q -r requirements.txt" in script and '"jax[tpu]==' in script
    assert "gcsfuse" not in script
    git = _run(["--dry-run", *LOC, "setup", "--git=https://example.com/me/sdpo_jax.git", "--ref=v1",
                "--bucket=bk"], tmp_path)
    (ssh,) = _gcloud_lines(git.stdout)
    script = _remote_command(ssh)
    assert "git clone https://example.com/me/sdpo_jax.git" in script and "checkout -q v1" in script
    assert "gcsfuse --implicit-dirs --rename-dir-limit=200000" in script and "/mnt/gcs/bk" in script


def test_dry_run_delete(tmp_path):
    """delete prints tpu-vm delete --quiet; with --queued, queued-resources delete --force --quiet."""
    vm = _gcloud_lines(_run(["--dry-run", *LOC, "delete"], tmp_path).stdout)
    assert vm == [["gcloud", "compute", "tpus", "tpu-vm", "delete", "sdpo-jax", "--zone=us-central2-b",
                   "--project=proj-1", "--quiet"]]
    qr = _gcloud_lines(_run(["--dry-run", *LOC, "--queued", "delete"], tmp_path).stdout)
    assert qr == [["gcloud", "compute", "tpus", "queued-resources", "delete", "sdpo-jax", "--zone=us-central2-b",
                   "--project=proj-1", "--force", "--quiet"]]


@pytest.mark.parametrize("given, missing", [(["--zone=z"], ["project"]), (["--project=p"], ["zone"]),
                                            ([], ["project", "zone"])])
def test_missing_project_or_zone_fails_fast(tmp_path, given, missing):
    """Without a project or zone (no flag, env or gcloud config) every command stops at once, printing no
    command and naming what is missing and how to set it."""
    start = time.monotonic()
    out = _run(["--dry-run", *given, "create"], tmp_path)
    assert time.monotonic() - start < 10
    assert out.returncode == 2 and out.stdout == ""
    for what in missing:
        assert f"no GCP {what}: pass --{what}=" in out.stderr
    assert ("CLOUDSDK_CORE_PROJECT" in out.stderr) == ("project" in missing)
    assert ("CLOUDSDK_COMPUTE_ZONE" in out.stderr) == ("zone" in missing)


def test_project_and_zone_from_environment_or_gcloud_config(tmp_path):
    """CLOUDSDK_CORE_PROJECT / CLOUDSDK_COMPUTE_ZONE are used when no flag is given; else gcloud's config."""
    out = _run(["--dry-run", "delete"], tmp_path,
               env_extra={"CLOUDSDK_CORE_PROJECT": "env-proj", "CLOUDSDK_COMPUTE_ZONE": "europe-west4-a"})
    (argv,) = _gcloud_lines(out.stdout)
    assert "--project=env-proj" in argv and "--zone=europe-west4-a" in argv
    out = _run(["--zone=z", "delete"], tmp_path, gcloud_exists=False, env_extra={"FAKE_PROJECT": "cfg-proj"})
    assert out.returncode == 0, out.stderr
    assert ["config", "get-value", "project"] in _fake_calls(tmp_path)
    assert any("--project=cfg-proj" in call for call in _fake_calls(tmp_path))


def test_missing_gcloud_fails_fast_unless_dry_run(tmp_path):
    """With no gcloud on PATH a real run stops at once with install instructions; --dry-run still works."""
    out = _run([*LOC, "create"], tmp_path)
    assert out.returncode == 2 and out.stdout == ""
    assert "gcloud not found on PATH" in out.stderr and "--dry-run" in out.stderr
    assert _run(["--dry-run", *LOC, "create"], tmp_path).returncode == 0


@pytest.mark.parametrize("queued", [False, True])
def test_create_is_idempotent(tmp_path, queued):
    """When describe says the TPU VM / queued resource exists, create does not call create again (a queued
    resource is only waited on until ACTIVE); when it does not exist, create is called exactly once."""
    kind = ["queued-resources"] if queued else ["tpu-vm"]
    flags = [*LOC, "create"] + (["--queued"] if queued else [])
    out = _run(flags, tmp_path, gcloud_exists=True)
    assert out.returncode == 0, out.stderr
    calls = _fake_calls(tmp_path)
    assert [c[:4] for c in calls if "describe" in c] and all("create" not in c for c in calls)
    assert "already exists" in out.stderr
    if queued:
        assert any("--format=value(state.state)" in c for c in calls)

    (tmp_path / "gcloud.log").unlink()
    out = _run(flags, tmp_path, gcloud_exists=False)
    creates = [c for c in _fake_calls(tmp_path) if "create" in c]
    assert out.returncode == 0, out.stderr
    assert len(creates) == 1 and creates[0][:5] == ["compute", "tpus", *kind, "create", "sdpo-jax"]


def test_delete_skips_what_does_not_exist(tmp_path):
    """delete calls delete only when describe finds the TPU VM."""
    out = _run([*LOC, "delete"], tmp_path, gcloud_exists=False)
    assert out.returncode == 0 and "nothing to delete" in out.stderr
    assert all("delete" not in c for c in _fake_calls(tmp_path))
    _run([*LOC, "delete"], tmp_path, gcloud_exists=True)
    assert sum("delete" in c for c in _fake_calls(tmp_path)) == 1


def test_dry_run_prints_exactly_what_runs(tmp_path):
    """The argv the (fake) gcloud receives for run equals the dry-run line parsed by a shell."""
    args = [*LOC, "--bucket=bk", "run", "--no-follow", "--", *TRICKY]
    printed = _gcloud_lines(_run(["--dry-run", *args], tmp_path).stdout)
    out = _run(args, tmp_path, gcloud_exists=True)
    assert out.returncode == 0, out.stderr
    assert [["gcloud", *c] for c in _fake_calls(tmp_path)] == printed


def test_bad_arguments_fail_with_a_clear_message(tmp_path):
    """Unknown options, overrides on a command that takes none, and a missing command are refused."""
    cases = {("--frobnicate=1", "create"): "unknown option --frobnicate",
             ("create", "--", "--config.seed=1"): "only apply to run / up",
             ("create", "delete"): "two commands given",
             ("--config.seed=1", "run"): "unknown option --config.seed",
             ("run", "--env=1BAD"): "expected KEY=VALUE",
             (): "no command given"}
    for args, message in cases.items():
        out = _run(["--dry-run", *LOC, *args], tmp_path)
        assert out.returncode == 2 and message in out.stderr, (args, out.stderr)


def test_remote_run_script_in_a_real_shell(tmp_path):
    """The run script, executed by bash as a worker would, starts main detached with the exact argv, sets
    JAX_NUM_PROCESSES from the metadata worker list, refuses a second run while one is going, and `stop`
    sends SIGTERM to the run's process group."""
    home = tmp_path / "home"
    venv_bin = home / "sdpo-jax" / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    record = tmp_path / "argv.bin"
    fake_python = venv_bin / "python"
    fake_python.write_text(f"#!{BASH}\nprintf '%s\\0' \"$@\" \"NUM=$JAX_NUM_PROCESSES\" \"TOKEN=$HF_TOKEN\" "
                           f"> {shlex.quote(str(record))}.tmp\nmv {shlex.quote(str(record))}.tmp "
                           f"{shlex.quote(str(record))}\nexec sleep 60\n")
    fake_python.chmod(0o755)
    fake_bin = tmp_path / "worker_bin"
    fake_bin.mkdir()
    (fake_bin / "curl").write_text(f"#!{BASH}\necho 'w-0,w-1,w-2,w-3'\n")
    (fake_bin / "curl").chmod(0o755)
    env = dict(os.environ, HOME=str(home), PATH=f"{fake_bin}:{os.environ['PATH']}")

    run_argv = _gcloud_lines(_run(["--dry-run", *LOC, "run", "--env=HF_TOKEN=t k", "--", *TRICKY],
                                  tmp_path).stdout)[0]
    stop_argv, = _gcloud_lines(_run(["--dry-run", *LOC, "stop"], tmp_path).stdout)

    def worker(argv):
        return subprocess.run([BASH, "-c", _remote_command(argv)], cwd=home, env=env, capture_output=True,
                              text=True, timeout=30)

    started = worker(run_argv)
    assert started.returncode == 0, started.stderr
    pid = int((home / "sdpo-jax-run.pid").read_text())
    try:
        for _ in range(100):
            if record.exists():
                break
            time.sleep(0.05)
        words = record.read_bytes().split(b"\0")[:-1]
        assert [w.decode() for w in words] == ["-m", "sdpo_jax.main", "--config=configs/demo.py", *TRICKY,
                                               "NUM=4", "TOKEN=t k"]
        assert os.getpgid(pid) == pid  # its own process group, so stop can signal the whole run
        again = worker(run_argv)
        assert again.returncode == 1 and "a run is still going" in again.stderr
        assert worker(stop_argv).returncode == 0
        for _ in range(100):
            if subprocess.run(["kill", "-0", str(pid)], capture_output=True).returncode:
                break
            time.sleep(0.05)
        else:
            pytest.fail("stop did not end the run")
    finally:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_gpu_recipe_names_every_variable_sharding_reads():
    """launch/gpu_multinode.md names each environment variable that maybe_initialize_distributed reads."""
    tree = ast.parse(open(os.path.join(ROOT, "sdpo_jax", "sharding.py")).read())
    functions = [n for n in tree.body if isinstance(n, ast.FunctionDef)
                 and n.name in ("_is_multi_process_launch", "maybe_initialize_distributed")]
    assert len(functions) == 2
    names = {n.value for f in functions for n in ast.walk(f)
             if isinstance(n, ast.Constant) and isinstance(n.value, str) and re.fullmatch(r"[A-Z][A-Z0-9_]+", n.value)}
    assert {"JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"} <= names
    doc = open(os.path.join(ROOT, "launch", "gpu_multinode.md")).read()
    assert not [n for n in sorted(names) if f"`{n}" not in doc]


def test_gpu_recipe_env_joins_two_processes():
    """The recipe's three variables (coordinator, count, id) make two local CPU processes join one
    jax.distributed system through sharding.maybe_initialize_distributed: 2 processes, ids 0 and 1."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    probe = ("import jax; from sdpo_jax import sharding; "
             "print(sharding.maybe_initialize_distributed(), jax.process_index(), jax.process_count())")
    procs = []
    for process_id in (0, 1):
        env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", XLA_FLAGS="",
                   JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                   JAX_PROCESS_ID=str(process_id))
        procs.append(subprocess.Popen([sys.executable, "-c", probe], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    try:
        outs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    assert sorted(out.split() for out, _ in outs) == [["True", "0", "2"], ["True", "1", "2"]]
