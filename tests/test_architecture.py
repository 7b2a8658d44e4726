"""The package's structure: no import cycle, imports at the top, short files, the config read only at set-up."""

import ast
import pathlib

import pytest

from sdpo_jax import config as config_lib
from sdpo_jax import setup

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "sdpo_jax"
# Entry points may import late (to report config errors before jax starts) and read the config; `cli` is
# the part the command lines share.
ENTRY_POINTS = {"sdpo_jax.main", "sdpo_jax.ttt.__main__", "sdpo_jax.cli", "sdpo_jax.tools.aot", "sdpo_jax.tools.check_hf",
                "sdpo_jax.tools.prepare_lcb", "sdpo_jax.tools.trace_crossings"}
# Modules that read the config: the schema, set-up, and the entry points.
READS_CONFIG = {"sdpo_jax.config", "sdpo_jax.setup"} | ENTRY_POINTS
# A subprocess script, run by path outside the package (its late import is explained in the file).
LATE_IMPORT_SCRIPTS = {"sdpo_jax.envs.sandbox.launcher"}


def _modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = ast.parse(path.read_text(), str(path))
    return out


def _imported(node: ast.AST, module: str) -> list[str]:
    """The sdpo_jax modules an import statement names (a `from pkg import name` names pkg.name when that
    is a module of the package, else pkg)."""
    names = []
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module:
        base = node.module
        names = [f"{base}.{a.name}" for a in node.names] + [base]
    return [n for n in names if n.startswith("sdpo_jax")]


def test_no_import_cycle_between_the_package_modules():
    """The graph of module-level imports between sdpo_jax modules has no cycle (sharding is a leaf of models)."""
    modules = _modules()
    graph = {}
    for name, tree in modules.items():
        targets = set()
        for node in tree.body:
            for target in _imported(node, name):
                while target not in modules and "." in target:
                    target = target.rsplit(".", 1)[0]
                if target in modules and target != name and not name.startswith(target + "."):
                    targets.add(target)
        graph[name] = targets
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in graph[node]:
            if state.get(nxt) == "open":
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in graph:
        if node not in state:
            visit(node)


def test_package_modules_are_imported_at_the_top_only():
    """Outside entry points no function or class body imports an sdpo_jax module, and no module defines a
    module-level __getattr__ (no lazy indirection to the package's own modules)."""
    bad = []
    for name, tree in _modules().items():
        assert not any(isinstance(n, ast.FunctionDef) and n.name == "__getattr__" for n in tree.body), name
        if name in ENTRY_POINTS or name in LATE_IMPORT_SCRIPTS:
            continue
        top = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in top and _imported(node, name):
                bad.append(f"{name}:{node.lineno}")
    assert not bad, f"indented imports of the package's own modules: {bad}"


def test_no_package_file_is_over_600_lines():
    """Every file in sdpo_jax/ has at most 600 lines."""
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 600}
    assert not long, long


def test_only_set_up_and_entry_points_read_the_config():
    """No module other than the schema, set-up and the entry points imports sdpo_jax.config or reads a run
    config group (`cfg.loss`, `cfg.rollout`, ... on a name cfg / config): below set-up the stages take typed
    settings."""
    groups = set(config_lib.base_config().keys()) | {"ttt"}
    bad = []
    for name, tree in _modules().items():
        if name in READS_CONFIG:
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and any(
                    t in ("sdpo_jax.config", "sdpo_jax.config.ConfigDict") or t.startswith("sdpo_jax.config.")
                    for t in _imported(node, name)):
                bad.append(f"{name}:{node.lineno} imports sdpo_jax.config")
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in ("cfg", "config") and node.attr in groups):
                bad.append(f"{name}:{node.lineno} reads {node.value.id}.{node.attr}")
    assert not bad, bad


@pytest.mark.parametrize("family,qk_norm,qkv_bias,placement", [
    ("qwen3", "per_head", False, "pre"), ("qwen2", "none", True, "pre"), ("llama", "none", False, "pre"),
    ("olmo2", "full", False, "post"), ("olmo3", "full", False, "post")])
def test_a_random_init_has_its_familys_norms(family, qk_norm, qkv_bias, placement):
    """A random init (cfg.model.init.model_type) gets its family's q/k norm, qkv bias and norm placement, as a
    loaded checkpoint of that family would (an OLMo 2/3 init has its full q/k norm)."""
    cfg = config_lib.base_config()
    cfg.model.init.model_type = family
    model_cfg = setup.init_model_config(cfg, 512)
    assert (model_cfg.qk_norm, model_cfg.qkv_bias, model_cfg.norm_placement) == (qk_norm, qkv_bias, placement)
