"""The Colab notebook `launch/colab_demo.ipynb`, executed cell by cell in a real Jupyter kernel (nbclient) in
its CPU mode (SDPO_COLAB_CPU=1): a tiny random Qwen3 written by transformers, the generated math set, the
math environment with its feedback options (cfg.env.options), 2 SDPO steps through `setup.train_from_config`, and the plot cell. The kernel is this venv's python,
registered under a private kernelspec in tmp_path so a fresh clone with only requirements-test.txt works."""
import json
import math
import os
import sys

import nbclient
import nbformat

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, "launch", "colab_demo.ipynb")
KERNEL_NAME = "sdpo-jax-test-venv"


def _kernel_env(monkeypatch, tmp_path):
    """A kernelspec for sys.executable and the environment the kernel inherits (CPU mode, offline hub)."""
    spec_dir = tmp_path / "jupyter" / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "sdpo_jax test venv", "language": "python"}))
    pythonpath = os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p)
    for key, value in {
        "JUPYTER_PATH": str(tmp_path / "jupyter"), "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
        "IPYTHONDIR": str(tmp_path / "ipython"), "SDPO_COLAB_CPU": "1", "HF_HUB_OFFLINE": "1",
        "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
        "JAX_COMPILATION_CACHE_DIR": os.path.join(REPO, ".jax_cache"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "TOKENIZERS_PARALLELISM": "false",
        "TRANSFORMERS_VERBOSITY": "error", "PYTHONPATH": pythonpath,
    }.items():
        monkeypatch.setenv(key, value)


def test_committed_notebook_is_clean_and_has_the_cpu_flag():
    """Invariant: the committed notebook carries no outputs or execution counts, and its first code cell
    reads the SDPO_COLAB_CPU flag that the executing test sets."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    assert code_cells and 'os.environ.get("SDPO_COLAB_CPU", "0") == "1"' in code_cells[0].source
    for i, cell in enumerate(code_cells):
        assert cell.outputs == [] and cell.execution_count is None, f"code cell {i} holds outputs"


def test_notebook_runs_end_to_end_in_cpu_mode(monkeypatch, tmp_path):
    """Invariant: with SDPO_COLAB_CPU=1 every cell of the notebook executes without error in a fresh kernel,
    the run loads the tiny Hugging Face checkpoint the notebook wrote, scores with the math env whose feedback
    options (cfg.env.options) reach every score call, logs a finite loss for each of its 2 SDPO steps and
    held-out accuracy at the start and the end, and the plot cell writes a PNG."""
    _kernel_env(monkeypatch, tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name=KERNEL_NAME, timeout=300, startup_timeout=120,
                                     resources={"metadata": {"path": str(work)}})
    client.execute()  # raises CellExecutionError (with the cell's traceback) on any failing cell

    run_dir = work / "runs" / "colab_math"
    config = json.loads((run_dir / "config.json").read_text())
    assert config["model"]["path"] == str(work / "tiny_qwen3")
    assert config["env"]["name"] == "math" and config["train"]["steps"] == 2
    assert config["env"]["options"] == {"feedback": True, "correctness_feedback": True}
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = {r["step"]: r for r in rows if "loss" in r}
    assert sorted(steps) == [1, 2]
    for row in steps.values():
        assert math.isfinite(row["loss"]) and math.isfinite(row["grad_norm"]), row
        # the options reached the scoring workers: 8 random tokens hold no boxed answer, so every sample
        # gets format / truncation feedback (with the math env's default options it would get none)
        assert row["feedback_available_fraction"] == 1.0, row
    assert rows[-1]["generations"] == 2 * 2 * 4
    evals = [r for r in rows if "eval/accuracy" in r]
    assert [r["generations"] for r in evals] == [0, 16]
    png = run_dir / "colab_curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    last_outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs][-3:]
    assert any("image/png" in o.get("data", {}) for o in last_outputs), "the plot cell displayed no image"
