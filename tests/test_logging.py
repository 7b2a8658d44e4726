"""Run logging: JSONL rows, TensorBoard event framing, the end-of-run plot."""
import os

import pytest

from sdpo_jax.logging import MetricsLogger, crc32c, plot_curves, read_jsonl, read_tensorboard_scalars


def test_crc32c_known_value():
    """Invariant: the CRC32C used for TFRecord framing matches the standard check value."""
    assert crc32c(b"123456789") == 0xE3069283


def test_logger_writes_jsonl_and_tensorboard(tmp_path, capsys):
    """Invariant: every logged step lands in metrics.jsonl and as TensorBoard scalars with the same
    values (non-finite values are kept in JSONL, left out of TensorBoard)."""
    logger = MetricsLogger(str(tmp_path), total_steps=3, tensorboard=True)
    logger.log(1, {"reward": 0.25, "loss": 1.5, "eval/accuracy": 0.5})
    logger.log(2, {"reward": 0.5, "loss": float("nan")})
    logger.close()
    rows = read_jsonl(os.path.join(tmp_path, "metrics.jsonl"))
    assert [r["step"] for r in rows] == [1, 2]
    assert rows[0]["eval/accuracy"] == 0.5
    (event_file,) = os.listdir(tmp_path / "tensorboard")
    scalars = read_tensorboard_scalars(str(tmp_path / "tensorboard" / event_file))
    assert scalars[0] == (1, {"reward": 0.25, "loss": 1.5, "eval/accuracy": 0.5})
    assert scalars[1] == (2, {"reward": 0.5})
    assert "2/3" in capsys.readouterr().out  # the progress line


def test_disabled_logger_writes_nothing(tmp_path):
    """Invariant: a non-zero process (enabled=False) creates no files."""
    logger = MetricsLogger(str(tmp_path / "run"), total_steps=1, enabled=False)
    logger.log(1, {"reward": 1.0})
    logger.close()
    assert not os.path.exists(tmp_path / "run")


def test_tensorboard_file_corruption_is_detected(tmp_path):
    """Invariant: the reader checks the framing CRCs (so the writer's CRCs are really computed)."""
    logger = MetricsLogger(str(tmp_path), total_steps=1)
    logger.log(1, {"reward": 1.0})
    logger.close()
    (event_file,) = os.listdir(tmp_path / "tensorboard")
    path = tmp_path / "tensorboard" / event_file
    data = bytearray(path.read_bytes())
    data[-6] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="CRC"):
        read_tensorboard_scalars(str(path))


def test_plot_overlays_runs(tmp_path):
    """Invariant: the plot is a PNG file with both runs drawn."""
    rows = [{"generations": g, "reward": g / 100, "eval/accuracy": g / 200} for g in (0, 64, 128)]
    out = plot_curves({"demo": rows, "demo_grpo": rows[:2]}, str(tmp_path / "c.png"))
    with open(out, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
