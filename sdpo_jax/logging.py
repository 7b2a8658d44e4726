"""Run logging: console progress with ETA, a JSONL metrics file, TensorBoard events (pure Python),
optional Weights & Biases, the end-of-run PNG plot, and sample logs (samples.jsonl + TensorBoard text,
`samples.sample_records`). Only process 0 writes (the caller decides). The run directory may be local or a
bucket (gs://): files go through `run_files`."""

from __future__ import annotations

import json
import math
import os
import struct
import sys
import time
from typing import Any

import jax

from sdpo_jax.run_files import AppendFile, is_remote, run_path, write_figure
from sdpo_jax.samples import markdown

# ---------------------------------------------------------------------------------------------------
# TensorBoard event files without TensorFlow: TFRecord framing + hand-encoded Event/Summary protobufs.

_CRC32C_TABLE = []
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
    _CRC32C_TABLE.append(_c)


def log0(*args) -> None:
    """print on process 0 only (flushed)."""
    if jax.process_index() == 0:
        print(*args, flush=True)


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _field_bytes(number: int, payload: bytes) -> bytes:
    return _varint((number << 3) | 2) + _varint(len(payload)) + payload


def _text_value(tag: str, text: str) -> bytes:
    """A Summary.Value for TensorBoard's text plugin: tag (1), metadata (9: plugin_data.plugin_name "text"),
    tensor (8: a scalar DT_STRING TensorProto: dtype 7, an empty tensor_shape, string_val (8))."""
    metadata = _field_bytes(1, _field_bytes(1, b"text"))
    tensor = _varint((1 << 3) | 0) + _varint(7) + _field_bytes(2, b"") + _field_bytes(8, text.encode())
    return _field_bytes(1, tag.encode()) + _field_bytes(9, metadata) + _field_bytes(8, tensor)


def _event(wall_time: float, step: int, *, file_version: str | None = None,
           scalars: dict[str, float] | None = None, texts: dict[str, str] | None = None) -> bytes:
    out = struct.pack("<B", (1 << 3) | 1) + struct.pack("<d", wall_time)  # field 1: double wall_time
    out += _varint((2 << 3) | 0) + _varint(step)  # field 2: int64 step
    if file_version is not None:
        out += _field_bytes(3, file_version.encode())
    if scalars:
        summary = b""
        for tag, value in scalars.items():
            one = _field_bytes(1, tag.encode()) + struct.pack("<B", (2 << 3) | 5) + struct.pack("<f", value)
            summary += _field_bytes(1, one)
        out += _field_bytes(5, summary)
    if texts:
        out += _field_bytes(5, b"".join(_field_bytes(1, _text_value(tag, text)) for tag, text in texts.items()))
    return out


class TensorBoardWriter:
    """Appends scalar and text summaries to an `events.out.tfevents.*` file that TensorBoard reads."""

    def __init__(self, log_dir: str):
        name = f"events.out.tfevents.{int(time.time())}.{os.uname().nodename}.sdpo_jax"
        self.path = os.fspath(run_path(log_dir) / name)
        self._file = AppendFile(self.path)
        self._write(_event(time.time(), 0, file_version="brain.Event:2"))

    def _write(self, record: bytes) -> None:
        header = struct.pack("<Q", len(record))
        self._file.write(header + struct.pack("<I", _masked_crc(header)) + record
                         + struct.pack("<I", _masked_crc(record)))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        finite = {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        if finite:
            self._write(_event(time.time(), step, scalars=finite))

    def text(self, step: int, tag: str, text: str) -> None:
        self._write(_event(time.time(), step, texts={tag: text}))

    def close(self) -> None:
        self._file.close()


def read_tensorboard_scalars(path: str) -> list[tuple[int, dict[str, float]]]:
    """Parse our own event files back (used by tests; checks the framing CRCs too)."""
    return [(step, scalars) for step, scalars, _ in read_tensorboard_events(path) if scalars]


def read_tensorboard_texts(path: str) -> list[tuple[int, dict[str, str]]]:
    """The text summaries of our own event files: (step, {tag: text}) (used by tests)."""
    return [(step, texts) for step, _, texts in read_tensorboard_events(path) if texts]


def read_tensorboard_events(path: str) -> list[tuple[int, dict[str, float], dict[str, str]]]:
    """(step, scalars, texts) per summary event of our own event files (checks the framing CRCs too)."""
    records = []
    data = run_path(path).read_bytes()
    pos = 0
    while pos < len(data):
        (length,) = struct.unpack_from("<Q", data, pos)
        (hcrc,) = struct.unpack_from("<I", data, pos + 8)
        if hcrc != _masked_crc(data[pos:pos + 8]):
            raise ValueError(f"{path}: bad header CRC at byte {pos}")
        record = data[pos + 12:pos + 12 + length]
        (dcrc,) = struct.unpack_from("<I", data, pos + 12 + length)
        if dcrc != _masked_crc(record):
            raise ValueError(f"{path}: bad data CRC at byte {pos}")
        records.append(record)
        pos += 16 + length
    out = []
    for record in records:
        step, scalars, texts = 0, {}, {}
        i = 0
        while i < len(record):
            key, i = _read_varint(record, i)
            number, wire = key >> 3, key & 7
            if wire == 1:
                i += 8
            elif wire == 0:
                value, i = _read_varint(record, i)
                if number == 2:
                    step = value
            elif wire == 2:
                size, i = _read_varint(record, i)
                payload = record[i:i + size]
                i += size
                if number == 5:
                    scalars.update(_parse_summary(payload))
                    texts.update(_parse_texts(payload))
        if scalars or texts:
            out.append((step, scalars, texts))
    return out


def _read_varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, i


def _fields(buf: bytes) -> list[tuple[int, bytes | int]]:
    """(field number, payload) of a protobuf message's length-delimited and varint fields (fixed-width skipped)."""
    out, i = [], 0
    while i < len(buf):
        key, i = _read_varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _read_varint(buf, i)
            out.append((number, value))
        elif wire == 2:
            size, i = _read_varint(buf, i)
            out.append((number, buf[i:i + size]))
            i += size
        else:
            i += 8 if wire == 1 else 4
    return out


def _parse_texts(payload: bytes) -> dict[str, str]:
    """{tag: text} of a Summary's text-plugin values (a tensor's string_val)."""
    out = {}
    for _, value in _fields(payload):
        fields = dict(_fields(value))
        if 8 in fields:
            strings = [v for n, v in _fields(fields[8]) if n == 8]
            out[fields[1].decode()] = strings[0].decode() if strings else ""
    return out


def _parse_summary(payload: bytes) -> dict[str, float]:
    out, i = {}, 0
    while i < len(payload):
        _, i = _read_varint(payload, i)
        size, i = _read_varint(payload, i)
        value_msg, i = payload[i:i + size], i + size
        j, tag, number = 0, "", None
        while j < len(value_msg):
            key, j = _read_varint(value_msg, j)
            if key >> 3 == 1:
                n, j = _read_varint(value_msg, j)
                tag, j = value_msg[j:j + n].decode(), j + n
            elif key & 7 == 5:
                (number,) = struct.unpack_from("<f", value_msg, j)
                j += 4
            else:
                break
        if number is not None:
            out[tag] = number
    return out


# ---------------------------------------------------------------------------------------------------


class MetricsLogger:
    """Fans one metrics dict per step out to the console, JSONL, TensorBoard and (optionally) W&B."""

    def __init__(self, run_dir: str, *, total_steps: int, enabled: bool = True, tensorboard: bool = True,
                 wandb_project: str | None = None, config: dict | None = None, progress_bar: bool = True,
                 keys_on_console: tuple[str, ...] = ("reward", "eval/accuracy", "loss", "response_length")):
        self.enabled = enabled
        self.total_steps = total_steps
        self.keys_on_console = keys_on_console
        self.progress_bar = progress_bar and enabled
        self._start = time.time()
        self._first_step: int | None = None
        self._jsonl = self._tb = self._wandb = self._samples = None  # samples.jsonl opens at its first log
        if not enabled:
            return
        self.jsonl_path = os.fspath(run_path(run_dir) / "metrics.jsonl")
        self._jsonl = AppendFile(self.jsonl_path)
        self.samples_path = os.fspath(run_path(run_dir) / "samples.jsonl")
        if tensorboard:
            self._tb = TensorBoardWriter(os.fspath(run_path(run_dir) / "tensorboard"))
        if wandb_project:
            try:
                import wandb  # optional
            except ImportError:
                print("logging: wandb is not installed; skipping Weights & Biases", file=sys.stderr)
            else:
                self._wandb = wandb.init(project=wandb_project, config=config,
                                         dir=None if is_remote(run_dir) else run_dir)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        clean = {k: _plain(v) for k, v in metrics.items()}
        self._jsonl.write(json.dumps({"step": step, **clean}) + "\n")
        if self._tb:
            self._tb.scalars(step, clean)
        if self._wandb:
            self._wandb.log(clean, step=step)
        if self.progress_bar:
            self._console(step, clean)

    def log_samples(self, step: int, records: list[dict]) -> None:
        """One JSON line per record in samples.jsonl, and the step's records as TensorBoard text ("samples")."""
        if not self.enabled or not records:
            return
        if self._samples is None:
            self._samples = AppendFile(self.samples_path)
        self._samples.write("".join(json.dumps(r) + "\n" for r in records))
        if self._tb:
            self._tb.text(step, "samples", markdown(records))

    def _console(self, step: int, metrics: dict[str, Any]) -> None:
        if self._first_step is None:
            self._first_step, self._start = step, time.time()
        done = step  # steps are logged 1-based: step k = k generation batches done
        frac = min(done / max(self.total_steps, 1), 1.0)
        per_step = (time.time() - self._start) / max(done - self._first_step + 1, 1)
        eta = per_step * max(self.total_steps - done, 0)
        bar = "#" * int(24 * frac) + "-" * (24 - int(24 * frac))
        shown = " ".join(f"{k}={metrics[k]:.4g}" for k in self.keys_on_console
                         if isinstance(metrics.get(k), (int, float)))
        print(f"[{bar}] {done}/{self.total_steps} eta {eta:5.0f}s {shown}", flush=True)

    def close(self) -> None:
        for handle in (self._jsonl, self._tb, self._samples):
            if handle:
                handle.close()
        if self._wandb:
            self._wandb.finish()


def _plain(value: Any) -> Any:
    try:
        import numpy as np

        if isinstance(value, np.ndarray) or hasattr(value, "__array__"):
            value = np.asarray(value)
            return value.item() if value.size == 1 else value.tolist()
    except ImportError:
        pass
    return value


def read_jsonl(path: str) -> list[dict]:
    return [json.loads(line) for line in run_path(path).read_text().splitlines() if line.strip()]


def plot_curves(runs: dict[str, list[dict]], out_png: str, *, title: str = "SDPO") -> str:
    """Reward and evaluation accuracy against the number of generations, one line per run name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, rows in runs.items():
        train = [r for r in rows if "reward" in r and "generations" in r]
        evals = [r for r in rows if "eval/accuracy" in r and "generations" in r]
        if train:
            axes[0].plot([r["generations"] for r in train], [r["reward"] for r in train], label=name, alpha=0.8)
        if evals:
            axes[1].plot([r["generations"] for r in evals], [r["eval/accuracy"] for r in evals],
                         marker="o", label=name)
    axes[0].set(title="training reward", xlabel="generations", ylabel="mean reward")
    axes[1].set(title="evaluation accuracy (pass@1)", xlabel="generations", ylabel="accuracy")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    write_figure(fig, out_png, dpi=100)
    plt.close(fig)
    return out_png
