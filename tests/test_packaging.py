"""pyproject.toml builds an installable wheel of `sdpo_jax`: every module, the files the package reads
or runs by path at run time, and requirements.txt's pins as its dependencies.

The wheel is built from a copy of the files the build reads (pyproject.toml, README.md, requirements.txt,
sdpo_jax/) in tmp_path, so the checkout gets no build/ or *.egg-info, and a file the build needs but the
copy lacks fails here too. `pip wheel --no-deps --no-build-isolation` uses this venv's setuptools (pinned in
requirements-test.txt); nothing is downloaded."""
import configparser
import email.parser
import os
import shutil
import subprocess
import sys
import zipfile

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Files the package opens or executes by path (not only imports): the sandbox reads the runner's source
# and starts the launcher as a script with `python -I -S <file>`, which imports confine.py from its folder.
RUN_TIME_FILES = ("sdpo_jax/envs/sandbox/runner.py", "sdpo_jax/envs/sandbox/launcher.py",
                  "sdpo_jax/envs/sandbox/confine.py")


def _package_files() -> set[str]:
    """Every file under sdpo_jax/ that belongs in the wheel (Python caches left out), '/'-separated."""
    out = set()
    for folder, dirs, files in os.walk(os.path.join(REPO, "sdpo_jax")):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in files:
            if not name.endswith((".pyc", ".pyo")):
                out.add(os.path.relpath(os.path.join(folder, name), REPO).replace(os.sep, "/"))
    return out


def _pins() -> list[Requirement]:
    """requirements.txt's requirement lines (comments and blank lines skipped)."""
    with open(os.path.join(REPO, "requirements.txt")) as f:
        lines = [line.split("#", 1)[0].strip() for line in f]
    return [Requirement(line) for line in lines if line]


def _key(req: Requirement) -> tuple:
    return canonicalize_name(req.name), str(req.specifier), tuple(sorted(req.extras)), str(req.marker or "")


def _build_wheel(tmp_path) -> str:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "requirements.txt"):
        shutil.copy(os.path.join(REPO, name), src / name)
    shutil.copytree(os.path.join(REPO, "sdpo_jax"), src / "sdpo_jax",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path / "wheels"
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                           "--no-cache-dir", "-q", "-w", str(out), "."],
                          cwd=src, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    wheels = sorted(os.listdir(out))
    assert len(wheels) == 1 and wheels[0].startswith("sdpo_jax-") and wheels[0].endswith("-py3-none-any.whl"), wheels
    return str(out / wheels[0])


def test_wheel_holds_the_package_and_requirements_pins(tmp_path):
    """Invariant: the wheel built from pyproject.toml holds every file under sdpo_jax/ (all subpackages and
    the sandbox files read or run by path) and nothing outside sdpo_jax/ but its metadata (configs/, tests/,
    bench/ stay out); its Requires-Dist equals requirements.txt's pins (same names, versions, order) and it
    requires Python >= 3.11; it declares the console script `sdpo-jax` = `sdpo_jax.main:entry` (the main job);
    unpacked on its own, away from the checkout, `sdpo_jax` imports from it, the script's target is callable,
    and the sandbox finds its runner file there."""
    wheel = _build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        dist_info = {n.split("/", 1)[0] for n in names if ".dist-info/" in n}
        assert len(dist_info) == 1, dist_info
        dist_info = dist_info.pop()
        metadata = email.parser.Parser().parsestr(zf.read(f"{dist_info}/METADATA").decode())
        entry_points = configparser.ConfigParser()
        entry_points.read_string(zf.read(f"{dist_info}/entry_points.txt").decode())
        site = tmp_path / "site"
        zf.extractall(site)

    package = {n for n in names if ".dist-info/" not in n}
    expected = _package_files()
    assert set(RUN_TIME_FILES) <= expected
    assert expected - package == set(), f"missing from the wheel: {sorted(expected - package)}"
    assert package - expected == set(), f"in the wheel but not under sdpo_jax/: {sorted(package - expected)}"

    assert metadata["Name"] == "sdpo_jax" and metadata["Requires-Python"] == ">=3.11"
    requires = [Requirement(r) for r in metadata.get_all("Requires-Dist") or []]
    assert [_key(r) for r in requires] == [_key(r) for r in _pins()]
    assert any(canonicalize_name(r.name) == "jax" for r in requires)  # the pins were read, not an empty file

    assert dict(entry_points["console_scripts"]) == {"sdpo-jax": "sdpo_jax.main:entry"}
    probe = ("import os, sdpo_jax, sdpo_jax.envs.sandbox.host as sb, sdpo_jax.main; "
             "print(os.path.dirname(os.path.dirname(sdpo_jax.__file__))); "
             "print(os.path.isfile(sb._RUNNER_PATH) and os.path.isfile(sb._LAUNCHER_PATH)); "
             "print(callable(sdpo_jax.main.entry))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=dict(env, PYTHONPATH=str(site)),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == [str(site), "True", "True"], proc.stdout
