"""Serving request logs: what the model server saw and answered, for the drift monitor and delayed labels.

One JSON object per line (JSONL), one file per server process and hour:
  <root>/<model>/date=YYYY-MM-DD/hour=HH/<writer-id>.jsonl
with fields
  ts (ISO-8601 UTC), request_id, model, version, features {name: value}, probability, label (predicted),
  entity (the entity key when the request gave one, else null)
`root` is a local directory (`<state>/request_logs`) or an s3:// prefix on a cluster. Writers buffer and
append; readers take a time window. Personal data (a `PrivacyRule`, components/core/privacy.py): personal
columns are never written, and a personal entity key is written as its keyed hash. Both live here so that the server and the monitor cannot disagree on
the format.
"""

from __future__ import annotations

import json
import os
import random
import threading
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pandas as pd

from components.core import storage
from components.core.privacy import PrivacyRule, hash_values, redact_row

FIELDS = ("ts", "request_id", "model", "version", "features", "probability", "label", "entity")


def _default(value: Any) -> Any:
    """numpy scalars and anything else orjson does not know: their Python value, else their text."""
    item = getattr(value, "item", None)
    return item() if callable(item) else str(value)


def encode(
    ts: str, request_id: str, model: str, version: str, features: dict[str, Any], probability: float, label: int, entity: str | None
) -> bytes:
    """One request-log line (no newline). NaN and infinities become null: JSON has no NaN."""
    return orjson.dumps(
        {
            "ts": ts,
            "request_id": request_id,
            "model": model,
            "version": version,
            "features": features,
            "probability": probability,
            "label": label,
            "entity": entity,
        },
        default=_default,
        option=orjson.OPT_SERIALIZE_NUMPY,
    )


@dataclass
class RequestLogWriter:
    """Sampled, buffered JSONL writer; thread-safe. `sample_rate` 1.0 logs every row.

    `flush_every` rows trigger a flush from `log`; None leaves flushing to the caller (the model server
    flushes from a background thread so that file or S3 I/O never runs on its event loop).
    """

    root: str
    model: str
    sample_rate: float = 1.0
    flush_every: int | None = 256
    privacy: PrivacyRule | None = None  # what `log` keeps out of the files (callers of `append` encode it themselves)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        # Lines by the hour partition of their own timestamp (not the flush's: a backfill or a flush just past
        # midnight must land where a reader of that time window looks).
        self._buffer: dict[str, list[bytes]] = {}
        self._pending = 0
        self._writer_id = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._rng = random.Random()
        self._file_lock = threading.Lock()

    def log(
        self,
        rows: Iterable[dict[str, Any]],
        probabilities: Iterable[float],
        labels: Iterable[int],
        version: str,
        request_id: str,
        entities: Iterable[str | None] | None = None,
        now: datetime | None = None,
    ) -> None:
        at = now or datetime.now(UTC)
        ts = at.isoformat()
        entity_list = list(entities) if entities is not None else None
        rule = self.privacy
        if rule is not None and not rule.empty:
            rows = (redact_row(rule, r) for r in rows)
            if entity_list is not None and rule.hashed:
                if rule.key is None:
                    raise ValueError("request log: the entity key is personal and the privacy rule has no hash key")
                entity_list = hash_values(rule.key, entity_list)
        lines = []
        for i, (row, p, lab) in enumerate(zip(rows, probabilities, labels)):
            if self.sample_rate < 1.0 and self._rng.random() >= self.sample_rate:
                continue
            lines.append(encode(ts, request_id, self.model, version, row, float(p), int(lab), entity_list[i] if entity_list else None))
        self.append(lines, at)

    def append(self, lines: list[bytes], at: datetime) -> None:
        """Buffer encoded lines (from `encode`) whose timestamp is `at`; cheap enough for an event loop when
        flush_every is None."""
        if not lines:
            return
        utc = at.astimezone(UTC)
        key = f"date={utc:%Y-%m-%d}/hour={utc:%H}"
        with self._lock:
            self._buffer.setdefault(key, []).extend(lines)
            self._pending += len(lines)
            full = self.flush_every is not None and self._pending >= self.flush_every
        if full:
            self.flush()

    @property
    def pending(self) -> int:
        return self._pending

    def flush(self) -> None:
        with self._lock:  # swap under the lock, write outside it: appends never wait for I/O
            parts, self._buffer, self._pending = self._buffer, {}, 0
        for key, lines in sorted(parts.items()):
            self._write(key, lines)

    def _write(self, key: str, lines: list[bytes]) -> None:
        part = f"{key}/{self._writer_id}.jsonl"
        if storage.is_s3(self.root):
            # S3 has no append: each flush is its own object.
            storage.write_bytes(
                storage.join(self.root, self.model, part.replace(".jsonl", f"-{uuid.uuid4().hex[:8]}.jsonl")), b"\n".join(lines) + b"\n"
            )
            return
        path = Path(self.root, self.model, part)
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._file_lock, open(path, "ab") as handle:  # two flushes never interleave their lines
            for line in lines:
                handle.write(line)
                handle.write(b"\n")


def _partitions(root: str, model: str, start: datetime, end: datetime) -> Iterator[str]:
    day = start.date()
    while day <= end.date():
        yield storage.join(root, model, f"date={day:%Y-%m-%d}")
        day += timedelta(days=1)


def read_window(root: str, model: str, start: datetime, end: datetime) -> pd.DataFrame:
    """All logged rows with start <= ts < end, features flattened into columns (`f.<name>`)."""
    records: list[dict[str, Any]] = []
    for part in _partitions(root, model, start, end):
        for text in _read_texts(part):
            for line in text.splitlines():
                if line.strip():
                    records.append(json.loads(line))
    if not records:
        return pd.DataFrame(columns=[*FIELDS])
    frame = pd.DataFrame.from_records(records)
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
    frame = frame[(frame["ts"] >= pd.Timestamp(start)) & (frame["ts"] < pd.Timestamp(end))].reset_index(drop=True)
    features = pd.json_normalize(frame["features"].tolist()).add_prefix("f.")
    return pd.concat([frame.drop(columns=["features"]), features], axis=1)


def _read_texts(prefix: str) -> Iterator[str]:
    if storage.is_s3(prefix):
        from components.core.storage import s3_client, split_s3

        bucket, key = split_s3(prefix)
        client = s3_client()
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key.rstrip("/") + "/"):
            for obj in page.get("Contents", []):
                yield client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read().decode()
        return
    base = Path(prefix)
    if base.exists():
        for path in sorted(base.rglob("*.jsonl")):
            yield path.read_text(encoding="utf-8")
