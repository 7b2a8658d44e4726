"""Run logging: JSONL rows, TensorBoard event framing, the end-of-run plot."""
import os

import pytest

from sdpo_jax.logging import (MetricsLogger, crc32c, plot_curves, read_jsonl, read_tensorboard_events,
                              read_tensorboard_scalars)
from sdpo_jax.run_files import AppendFile


def _event_class():
    """tensorflow.Event with the Summary / SummaryMetadata / TensorProto fields TensorBoard's text plugin
    reads, built from their field numbers with protobuf (an independent decoder of our hand encoding)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    f = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(name="sdpo_test_event.proto", package="t")

    def message(name, *fields):
        msg = file.message_type.add(name=name)
        for field_name, number, kind, type_name, repeated in fields:
            msg.field.add(name=field_name, number=number, type=kind, type_name=type_name,
                          label=f.LABEL_REPEATED if repeated else f.LABEL_OPTIONAL)

    message("PluginData", ("plugin_name", 1, f.TYPE_STRING, None, False))
    message("SummaryMetadata", ("plugin_data", 1, f.TYPE_MESSAGE, ".t.PluginData", False))
    message("TensorShape")
    message("Tensor", ("dtype", 1, f.TYPE_INT32, None, False),
            ("tensor_shape", 2, f.TYPE_MESSAGE, ".t.TensorShape", False), ("string_val", 8, f.TYPE_BYTES, None, True))
    message("Value", ("tag", 1, f.TYPE_STRING, None, False), ("simple_value", 2, f.TYPE_FLOAT, None, False),
            ("tensor", 8, f.TYPE_MESSAGE, ".t.Tensor", False),
            ("metadata", 9, f.TYPE_MESSAGE, ".t.SummaryMetadata", False))
    message("Summary", ("value", 1, f.TYPE_MESSAGE, ".t.Value", True))
    message("Event", ("wall_time", 1, f.TYPE_DOUBLE, None, False), ("step", 2, f.TYPE_INT64, None, False),
            ("file_version", 3, f.TYPE_STRING, None, False), ("summary", 5, f.TYPE_MESSAGE, ".t.Summary", False))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("t.Event"))


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


def test_sample_text_summaries_decode_as_tensorboard_text(tmp_path):
    """Invariant: log_samples writes samples.jsonl lines and one text event per step that protobuf decodes
    as TensorBoard's text plugin reads it (plugin "text", a scalar DT_STRING tensor holding the records),
    beside the scalar events, which still decode."""
    logger = MetricsLogger(str(tmp_path), total_steps=2, tensorboard=True, progress_bar=False)
    logger.log(1, {"reward": 0.5})
    record = {"step": 1, "row": 0, "group_id": 0, "prompt": "p", "completion": "ans 7", "reward": 0.0,
              "feedback": "wrong", "teacher_prompt": "tp", "teacher_context": "feedback", "self_distilled": True}
    logger.log_samples(1, [record, dict(record, row=3, completion="ans 9")])
    logger.close()
    assert [r["completion"] for r in read_jsonl(os.path.join(tmp_path, "samples.jsonl"))] == ["ans 7", "ans 9"]
    (event_file,) = os.listdir(tmp_path / "tensorboard")
    path = str(tmp_path / "tensorboard" / event_file)
    data, pos, events = open(path, "rb").read(), 0, []
    while pos < len(data):
        length = int.from_bytes(data[pos:pos + 8], "little")
        events.append(_event_class().FromString(data[pos + 12:pos + 12 + length]))
        pos += 16 + length
    assert events[0].file_version == "brain.Event:2"
    assert events[1].step == 1 and events[1].summary.value[0].simple_value == 0.5
    (text,) = events[2].summary.value
    assert (text.tag, text.metadata.plugin_data.plugin_name, text.tensor.dtype) == ("samples", "text", 7)
    assert len(text.tensor.tensor_shape.ListFields()) == 0  # a scalar: no dims
    assert "ans 7" in text.tensor.string_val[0].decode() and "ans 9" in text.tensor.string_val[0].decode()
    assert [(step, texts) for step, _, texts in read_tensorboard_events(path) if texts] == [
        (1, {"samples": text.tensor.string_val[0].decode()})]


def test_append_file_on_a_bucket_continues_what_it_holds(tmp_path):
    """Invariant: on a gs:// path (mocked onto a local directory) AppendFile rewrites the object with all
    bytes so far after each write, and a second AppendFile (a resumed run) continues the object."""
    from etils.epath import testing as epath_testing

    def local(original, path, *args, **kwargs):
        return original(os.fspath(path).replace("gs://bucket", str(tmp_path)), *args, **kwargs)

    with epath_testing.mock_epath(open=local, exists=local, makedirs=local, mkdir=local, isdir=local):
        first = AppendFile("gs://bucket/run/metrics.jsonl")
        first.write("a\n")
        assert (tmp_path / "run" / "metrics.jsonl").read_text() == "a\n"
        first.write(b"b\n")
        first.close()
        resumed = AppendFile("gs://bucket/run/metrics.jsonl")
        resumed.write("c\n")
        resumed.close()
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == "a\nb\nc\n"
