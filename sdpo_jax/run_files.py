"""The run directory's files on a local disk or in a bucket (`gs://...`), through `etils.epath`.

Orbax writes the checkpoints; everything else a run writes (metrics.jsonl, TensorBoard events, samples.jsonl,
evals.jsonl, config.json, the plot, the Hugging Face export) goes through `epath.Path`, which reaches GCS with
`gcsfs` (requirements.txt). GCS objects cannot be appended to, so `AppendFile` on a bucket keeps the object's
bytes in memory (starting from what it already holds, so a resumed run continues it) and rewrites the whole
object on each write; on a local disk it appends and flushes. The files written this way are small (kB to a
few MB), so rewriting them per logged step costs little beside a training step.
"""

from __future__ import annotations

import io
import os
import tempfile
from typing import Callable

from etils import epath


def is_remote(path) -> bool:
    """A bucket path (gs://, s3://, ...): anything with a URI scheme."""
    return "://" in os.fspath(path)


def run_path(path) -> epath.Path:
    """`path` as an epath.Path (local paths made absolute, bucket paths kept as they are)."""
    path = os.fspath(path)
    return epath.Path(path if is_remote(path) else os.path.abspath(path))


class AppendFile:
    """A file the run appends bytes or text to (UTF-8), visible after each `write`."""

    def __init__(self, path):
        self.path = run_path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._remote = is_remote(self.path)
        self._held = self.path.read_bytes() if self._remote and self.path.exists() else b""
        self._file = None if self._remote else open(self.path, "ab")

    def write(self, data: bytes | str) -> None:
        data = data.encode() if isinstance(data, str) else data
        if self._remote:
            self._held += data
            self.path.write_bytes(self._held)
        else:
            self._file.write(data)
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def append_text(path, text: str) -> None:
    """Append `text` to the file at `path` (made when missing)."""
    handle = AppendFile(path)
    try:
        handle.write(text)
    finally:
        handle.close()


def write_figure(fig, path, *, dpi: int) -> None:
    """Save a matplotlib figure as PNG at `path` (its folder made when missing)."""
    image = io.BytesIO()
    fig.savefig(image, format="png", dpi=dpi)
    out = run_path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(image.getvalue())


def write_text(path, text: str) -> None:
    """Write `text` to the file at `path` (its folder made when missing)."""
    out = run_path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)


def write_through_local(out_dir, save: Callable[[str], object]) -> None:
    """Run `save(directory)` (a writer that only knows local paths, e.g. a tokenizer's save_pretrained)
    into `out_dir`: directly when local, else into a temporary directory whose files are then copied."""
    out = run_path(out_dir)
    if not is_remote(out):
        save(os.fspath(out))
        return
    with tempfile.TemporaryDirectory() as local:
        save(local)
        for root, _, names in os.walk(local):
            target = out / os.path.relpath(root, local) if root != local else out
            target.mkdir(parents=True, exist_ok=True)
            for name in names:
                (target / name).write_bytes(epath.Path(root, name).read_bytes())
