"""Request-log records: the format the server writes and the monitor reads, and the server's sink."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from components.core.request_log import RequestLogWriter, encode, read_window
from serving.request_sink import RequestLogSink
from serving.requests import Schema, columns_from_rows

MODEL = "unit-model"


def _window(root: Path) -> tuple[datetime, datetime]:
    now = datetime.now(UTC)
    return now - timedelta(minutes=5), now + timedelta(minutes=5)


def test_encode_writes_json_without_nan_and_accepts_numpy_scalars() -> None:
    line = encode(
        "2026-01-01T00:00:00+00:00",
        "r1",
        MODEL,
        "3",
        {"amount": float("nan"), "count": np.int64(4), "ratio": np.float32(0.5), "channel": None},
        0.25,
        1,
        "e-1",
    )
    record = json.loads(line)  # strict JSON: NaN would not parse in other readers
    assert b"NaN" not in line
    assert record["features"] == {"amount": None, "count": 4, "ratio": 0.5, "channel": None}
    assert (record["probability"], record["label"], record["entity"], record["version"]) == (0.25, 1, "e-1", "3")


def test_writer_round_trips_through_read_window(tmp_path: Path) -> None:
    writer = RequestLogWriter(str(tmp_path), MODEL)
    writer.log([{"amount": 1.0}, {"amount": float("inf")}], [0.1, 0.9], [0, 1], version="7", request_id="a", entities=["x", None])
    assert writer.pending == 2  # below flush_every: buffered, not written
    writer.flush()
    frame = read_window(str(tmp_path), MODEL, *_window(tmp_path))
    assert frame["request_id"].tolist() == ["a", "a"]
    assert frame["f.amount"].iloc[0] == 1.0 and math.isnan(frame["f.amount"].iloc[1])
    assert frame["entity"].tolist()[0] == "x" and frame["label"].tolist() == [0, 1]


def test_lines_land_in_the_partition_of_their_own_time_not_the_flush_time(tmp_path: Path) -> None:
    """A backfill (or a flush just past midnight) must be found by a reader of the rows' own time window."""
    writer = RequestLogWriter(str(tmp_path), MODEL, flush_every=None)
    yesterday = datetime.now(UTC).replace(minute=30, second=0, microsecond=0) - timedelta(days=1, hours=1)
    writer.log([{"amount": 1.0}], [0.2], [0], version="1", request_id="old", now=yesterday)
    writer.log([{"amount": 2.0}], [0.8], [1], version="1", request_id="new")
    assert writer.pending == 2
    writer.flush()
    assert (tmp_path / MODEL / f"date={yesterday:%Y-%m-%d}" / f"hour={yesterday:%H}").is_dir()
    old = read_window(str(tmp_path), MODEL, yesterday - timedelta(minutes=1), yesterday + timedelta(minutes=1))
    assert old["request_id"].tolist() == ["old"]
    assert read_window(str(tmp_path), MODEL, *_window(tmp_path))["request_id"].tolist() == ["new"]


def test_sink_logs_small_requests_inline_and_large_batches_from_its_thread(tmp_path: Path) -> None:
    schema = Schema(("amount",), ("channel",))
    sink = RequestLogSink(str(tmp_path), MODEL, schema.names, schema.numeric, flush_interval_s=3600, inline_rows=4)
    sink.start()
    small = columns_from_rows([{"amount": 2.0, "channel": "web"}], schema)
    sink.submit(small, np.array([0.3]), np.array([0]), "v1", "small")
    assert sink.writer.pending == 1  # encoded on the caller's thread, no hand-off
    rows = [{"amount": float(i), "channel": "pos"} for i in range(150)]
    sink.submit(columns_from_rows(rows, schema), np.linspace(0, 1, 150), np.zeros(150, dtype=np.int64), "v1", "big")
    sink.close()
    frame = read_window(str(tmp_path), MODEL, *_window(tmp_path))
    assert frame["request_id"].value_counts().to_dict() == {"big": 150, "small": 1}
    big = frame[frame["request_id"] == "big"]
    assert big["f.amount"].tolist() == [float(i) for i in range(150)]  # every row, in order, once


def test_sink_drops_and_counts_rows_beyond_its_bound(tmp_path: Path) -> None:
    schema = Schema(("amount",), ())
    sink = RequestLogSink(str(tmp_path), MODEL, schema.names, schema.numeric, flush_interval_s=3600, max_pending=3)
    sink.start()
    dropped = sink._dropped._value.get()
    for i in range(5):
        sink.submit(columns_from_rows([{"amount": float(i)}], schema), np.array([0.5]), np.array([1]), "v1", f"r{i}")
    assert sink._dropped._value.get() - dropped == 2
    sink.close()
    assert len(read_window(str(tmp_path), MODEL, *_window(tmp_path))) == 3


def test_sink_rejects_a_bad_sample_rate(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="sample rate"):
        RequestLogSink(str(tmp_path), MODEL, ["amount"], ["amount"], sample_rate=1.5)


def test_a_record_that_cannot_be_encoded_is_counted_and_never_fails_the_request(tmp_path: Path, monkeypatch) -> None:
    schema = Schema(("amount",), ())
    sink = RequestLogSink(str(tmp_path), MODEL, schema.names, schema.numeric, flush_interval_s=3600)
    sink.start()
    errors = sink._errors._value.get()

    def broken(*args, **kwargs):
        raise TypeError("unserialisable")

    monkeypatch.setattr(sink, "_encode", broken)
    sink.submit(columns_from_rows([{"amount": 1.0}], schema), np.array([0.5]), np.array([1]), "v1", "r")  # no raise
    assert sink._errors._value.get() - errors == 1 and sink.writer.pending == 0
    sink.close()
