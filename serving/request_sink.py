"""Sampled request/response logging, through components.core.request_log (one format for server and monitor).

Small requests (up to `inline_rows` rows, the latency-sensitive traffic) are sampled and encoded to JSON
lines on the request path itself: orjson and a dict per row cost a few microseconds, far less than
handing the work to another thread. A Python thread doing that work would hold the GIL in bursts and the
event loop would wait up to the interpreter's switch interval (5 ms) to get it back: that, not the work,
was the server's p99. Larger batches are encoded column by column (`encode_columns`: one orjson call per
column, then the lines joined; the same bytes as the per-row `encode` at a third of its cost) on the event
loop after the response has gone, one chunk of rows per loop turn, so other requests run between chunks.
Profiling the 1,000-row V1 batch (py-spy) found the old path, a background thread encoding row by row, held
the GIL ~1.5 ms per batch, more than the request itself, and the loop waited for it at every switch: the
server's 1,000-row V1 batches were slower than stock KServe's. Outside an event loop (tests, tools) the
thread encodes instead. The thread flushes every `flush_interval_s` seconds (file appends and S3 puts
release the GIL) so a monitor reading the files sees recent traffic; `close()` encodes whatever is left,
wherever it was queued, and flushes (shutdown).
More than `max_pending` unflushed rows drop new rows and count them (mlwf_request_log_dropped_rows):
logging never holds scoring up.
Personal data (`privacy`, components/core/privacy.py `rule_for(spec, key)`): a personal column is never
logged, and a personal entity key is logged as its keyed hash (the value the feature store and delayed labels
join on), never in clear.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import repeat
from typing import Any

import numpy as np
import orjson

from components.core.privacy import PrivacyRule, hash_values
from components.core.request_log import RequestLogWriter, encode
from serving.observability import metrics
from serving.requests import Batch, rows_for_log

log = logging.getLogger(__name__)

# Rows encoded at a time (~0.15 ms) before other work on the event loop (or the GIL) gets a turn.
_CHUNK = 256


@dataclass(frozen=True)
class _Item:
    batch: Batch
    probabilities: np.ndarray
    labels: np.ndarray
    version: str
    request_id: str
    at: datetime


class RequestLogSink:
    def __init__(
        self,
        root: str,
        model: str,
        features: Sequence[str],
        numeric: Sequence[str],
        sample_rate: float = 1.0,
        flush_interval_s: float = 2.0,
        max_pending: int = 100_000,
        inline_rows: int = 16,
        privacy: PrivacyRule | None = None,
    ) -> None:
        if not 0.0 <= sample_rate <= 1.0:
            raise ValueError(f"request log sample rate must be within [0, 1], got {sample_rate}")
        if flush_interval_s <= 0:
            raise ValueError(f"request log flush interval must be positive, got {flush_interval_s}")
        self.root = root
        self.model = model
        drop = privacy.drop if privacy is not None else frozenset()
        self.features = [f for f in features if f not in drop]  # a personal column is never logged
        self.numeric = [f for f in numeric if f not in drop]
        # The entity key is personal: log its keyed hash (the sink only sees entity keys, so that is the one to hash).
        self.entity_key: bytes | None = privacy.key if privacy is not None and privacy.hashed else None
        if privacy is not None and privacy.hashed and privacy.key is None:
            raise ValueError("request log: the entity key is personal and the privacy rule has no hash key")
        self.sample_rate = sample_rate
        self.flush_interval_s = flush_interval_s
        self.inline_rows = inline_rows
        # Sampling happens here, before rows are built; flushing only from the thread (no I/O on the loop).
        self.writer = RequestLogWriter(root=root, model=model, sample_rate=1.0, flush_every=None)
        self._queued: deque[_Item] = deque()
        self._queued_rows = 0
        self._blob_rows = 0  # rows appended as multi-line blocks since the last flush (under _count_lock)
        self._loop_work: deque[list[Any]] = deque()  # [item, rows kept, next position], encoded on the event loop
        self._loop_scheduled = False
        self._in_step = False
        self._count_lock = threading.Lock()
        self._max_pending = max_pending
        self._wake = threading.Event()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._rng = random.Random()
        self._next_error_log = 0.0
        self._dropped = metrics().request_log_dropped.labels(model)
        self._errors = metrics().request_log_errors.labels(model)

    @property
    def enabled(self) -> bool:
        return self.sample_rate > 0.0

    def start(self) -> None:
        if self.enabled and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="request-log", daemon=True)
            self._thread.start()

    def submit(self, batch: Batch, probabilities: np.ndarray, labels: np.ndarray, version: str, request_id: str) -> None:
        if self._thread is None:
            return
        n = batch.rows
        if self.writer.pending + self._blob_rows + self._queued_rows + n > self._max_pending:
            self._dropped.inc(n)
            return
        at = datetime.now(UTC)
        if n <= self.inline_rows:
            try:
                lines = self._encode(batch, probabilities, labels, version, request_id, at.isoformat(), self._sample(n))
            except Exception:  # the request was answered; a record that cannot be logged must not turn it into a 500
                self._errors.inc()
                log.exception("request log: could not record request %s", request_id)
                return
            self.writer.append(lines, at)
        else:
            with self._count_lock:
                self._queued_rows += n
            item = _Item(batch, probabilities, labels, version, request_id, at)
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self._queued.append(item)  # no event loop here: the thread encodes it (deque appends are atomic)
                return
            self._loop_work.append([item, self._sample(n), 0])
            if not self._loop_scheduled:
                self._loop_scheduled = True
                loop.call_soon(self._loop_step, loop)

    def close(self, timeout: float = 10.0) -> None:
        """Encode what is left and flush. Safe to call again (the server's stop and its exit both call it)."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop = True
            self._wake.set()
            thread.join(timeout)
        if not self._in_step:  # a signal handler may call this in the middle of a loop step: the exit call finishes
            while self._loop_work:
                self._encode_step()
        self._encode_queued(yield_gil=False)
        self._flush()

    def _loop_step(self, loop: asyncio.AbstractEventLoop) -> None:
        """One chunk of the oldest batch on the event loop, then a turn for everything else."""
        self._in_step = True
        try:
            if self._loop_work:
                self._encode_step()
        finally:
            self._in_step = False
        if self._loop_work:
            loop.call_soon(self._loop_step, loop)
        else:
            self._loop_scheduled = False

    def _encode_step(self) -> None:
        entry = self._loop_work[0]
        item, keep, start = entry
        try:
            self._append_block(item, keep[start : start + _CHUNK])
        except Exception:  # the request was answered; a record that cannot be logged is counted and skipped
            self._errors.inc()
            log.exception("request log: could not record request %s", item.request_id)
            start = len(keep)
        entry[2] = start + _CHUNK
        if entry[2] >= len(keep):
            self._loop_work.popleft()
            with self._count_lock:
                self._queued_rows -= item.batch.rows

    def _append_block(self, item: _Item, rows: list[int]) -> None:
        if not rows:
            return
        head = (item.at.isoformat(), item.request_id, self.model, item.version)
        block = encode_columns(item.batch, item.probabilities, item.labels, self.features, self.numeric, head, rows, self.entity_key)
        self.writer.append([block], item.at)  # one block of lines: the writer ends it with a newline
        with self._count_lock:
            self._blob_rows += len(rows)

    def _sample(self, n: int) -> list[int]:
        if self.sample_rate >= 1.0:
            return list(range(n))
        return [i for i in range(n) if self._rng.random() < self.sample_rate]

    def _encode(
        self,
        batch: Batch,
        probabilities: np.ndarray,
        labels: np.ndarray,
        version: str,
        request_id: str,
        ts: str,
        keep: list[int],
        rows: list[dict[str, Any]] | None = None,
    ) -> list[bytes]:
        if not keep:
            return []
        rows = rows if rows is not None else rows_for_log(batch, self.features, self.numeric)
        entities = batch.entities
        if entities is not None and self.entity_key is not None:
            entities = hash_values(self.entity_key, entities)
        probs, labs = probabilities.tolist(), labels.tolist()
        return [encode(ts, request_id, self.model, version, rows[i], probs[i], labs[i], entities[i] if entities else None) for i in keep]

    def _run(self) -> None:
        next_flush = time.monotonic() + self.flush_interval_s
        while not self._stop:
            self._wake.wait(max(0.0, min(0.05, next_flush - time.monotonic())))
            self._encode_queued(yield_gil=True)
            if time.monotonic() >= next_flush:
                self._flush()
                next_flush = time.monotonic() + self.flush_interval_s

    def _encode_queued(self, yield_gil: bool) -> None:
        while self._queued:
            item = self._queued.popleft()
            try:
                keep = self._sample(item.batch.rows)
                for start in range(0, len(keep), _CHUNK):
                    self._append_block(item, keep[start : start + _CHUNK])
                    if yield_gil:
                        time.sleep(0)  # let the event loop run between chunks
            except Exception:  # a bad record must not stop the logger thread
                self._errors.inc()
                log.exception("request log: could not record request %s", item.request_id)
            finally:
                with self._count_lock:
                    self._queued_rows -= item.batch.rows

    def _flush(self) -> None:
        with self._count_lock:
            self._blob_rows = 0  # lines appended from here on are counted against the next flush
        try:
            self.writer.flush()
        except Exception as err:  # e.g. a read-only or unreachable log root: count it, keep serving
            self._errors.inc()
            now = time.monotonic()
            if now >= self._next_error_log:  # one line a minute, not one per flush
                self._next_error_log = now + 60.0
                log.error("request log: flush to %s failed: %s", self.root, err)


def encode_columns(
    batch: Batch,
    probabilities: np.ndarray,
    labels: np.ndarray,
    features: Sequence[str],
    numeric: Sequence[str],
    head: tuple[str, str, str, str],
    rows: list[int],
    entity_key: bytes | None = None,
) -> bytes:
    """The request-log lines of `rows`, joined by newlines: byte for byte what `encode` writes for each row.

    Every row's line is the same JSON object with other values, so each column is serialised once (orjson
    writes a float64 array's NaN as null, like `encode`) and split into tokens, and the lines are joined from
    the tokens. `head` is (ts, request_id, model, version), the same for the whole batch. With `entity_key`
    the entity keys are written as their keyed hash (components/core/privacy.py), as `encode`'s callers do.
    """
    ts, request_id, model, version = head
    if not rows:
        return b""
    take: Callable[[Any], Any]
    if rows[-1] - rows[0] + 1 == len(rows):  # ascending and contiguous (every row kept): slices, no per-row work
        cut = slice(rows[0], rows[-1] + 1)

        def take(column: Any) -> Any:
            return column[cut]
    else:
        pick = np.asarray(rows)

        def take(column: Any) -> Any:
            return column[pick] if isinstance(column, np.ndarray) else [column[i] for i in rows]

    numeric_set = set(numeric)
    prefix = orjson.dumps({"ts": ts, "request_id": request_id, "model": model, "version": version})[:-1]
    parts: list[Any] = [repeat(prefix + b',"features":{')]
    for j, name in enumerate(features):
        column = batch.columns[name]
        parts.append(repeat((b"," if j else b"") + orjson.dumps(name) + b":"))
        if name in numeric_set:
            parts.append(_number_tokens(take(np.asarray(column, dtype=np.float64))))
        else:
            parts.append(_value_tokens(take(column)))
    parts += [
        repeat(b'},"probability":'),
        _number_tokens(take(probabilities)),
        repeat(b',"label":'),
        _number_tokens(take(labels)),
        repeat(b',"entity":'),
    ]
    if batch.entities is None:
        parts.append(repeat(b"null}"))
    else:
        keys = take(batch.entities)
        if entity_key is not None:
            keys = hash_values(entity_key, keys)
        parts.append([token + b"}" for token in _value_tokens(keys)])
    return b"\n".join(map(b"".join, zip(*parts)))


def _number_tokens(values: np.ndarray) -> list[bytes]:
    return orjson.dumps(values, option=orjson.OPT_SERIALIZE_NUMPY)[1:-1].split(b",")


def _value_tokens(values: Sequence[Any]) -> list[bytes]:
    distinct = {v: orjson.dumps(v) for v in set(values)}
    return list(map(distinct.__getitem__, values))
