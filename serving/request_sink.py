"""Sampled request/response logging off the request path, through components.request_log.RequestLogWriter.

The request path only appends a reference to a bounded deque (no lock, no wake-up: a queue's notify per
request costs a thread switch); a background thread wakes every `poll_s`, samples rows, turns them into
log records for the writer, and flushes every `flush_interval_s` seconds so a monitor reading the files
sees recent traffic. `close()` drains what is pending and flushes (on shutdown). A full deque drops rows
and counts them (mlwf_request_log_dropped_rows): logging never holds scoring up.
"""

from __future__ import annotations

import logging
from collections import deque
import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from components.request_log import RequestLogWriter
from serving.observability import metrics
from serving.requests import Batch, rows_for_log

log = logging.getLogger(__name__)

# Rows handed to the writer at a time (it buffers and appends; chunks keep each call short).
_CHUNK = 64


@dataclass(frozen=True)
class _Item:
    batch: Batch
    probabilities: np.ndarray
    labels: np.ndarray
    version: str
    request_id: str


class RequestLogSink:
    def __init__(self, root: str, model: str, features: Sequence[str], numeric: Sequence[str], sample_rate: float = 1.0,
                 flush_interval_s: float = 2.0, max_pending: int = 10_000, poll_s: float = 0.05) -> None:
        if not 0.0 <= sample_rate <= 1.0:
            raise ValueError(f"request log sample rate must be within [0, 1], got {sample_rate}")
        if flush_interval_s <= 0:
            raise ValueError(f"request log flush interval must be positive, got {flush_interval_s}")
        self.root = root
        self.model = model
        self.features = list(features)
        self.numeric = list(numeric)
        self.sample_rate = sample_rate
        self.flush_interval_s = flush_interval_s
        # Sampling happens here, before rows are built, so the writer logs every row it is given.
        self.writer = RequestLogWriter(root=root, model=model, sample_rate=1.0)
        self._pending: deque[_Item] = deque()
        self._max_pending = max_pending
        self._poll_s = min(poll_s, flush_interval_s)
        self._stop = threading.Event()
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
        if len(self._pending) >= self._max_pending:
            self._dropped.inc(batch.rows)
            return
        self._pending.append(_Item(batch, probabilities, labels, version, request_id))  # atomic under the GIL

    def close(self, timeout: float = 10.0) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        thread.join(timeout)
        self._drain()
        self._flush()

    def _run(self) -> None:
        next_flush = time.monotonic() + self.flush_interval_s
        while not self._stop.wait(self._poll_s):
            self._drain()
            if time.monotonic() >= next_flush:
                self._flush()
                next_flush = time.monotonic() + self.flush_interval_s

    def _drain(self) -> None:
        while self._pending:
            item = self._pending.popleft()
            try:
                self._write(item)
            except Exception:  # a bad record must not stop the logger thread
                log.exception("request log: could not record request %s", item.request_id)

    def _write(self, item: _Item) -> None:
        n = item.batch.rows
        if self.sample_rate >= 1.0:
            keep = list(range(n))
        else:
            keep = [i for i in range(n) if self._rng.random() < self.sample_rate]
        if not keep:
            return
        rows = rows_for_log(item.batch, self.features, self.numeric)
        entities = item.batch.entities
        for start in range(0, len(keep), _CHUNK):
            part = keep[start:start + _CHUNK]
            self.writer.log(
                [rows[i] for i in part],
                [float(item.probabilities[i]) for i in part],
                [int(item.labels[i]) for i in part],
                version=item.version,
                request_id=item.request_id,
                entities=[entities[i] for i in part] if entities else None,
            )

    def _flush(self) -> None:
        try:
            self.writer.flush()
        except Exception as err:  # e.g. a read-only or unreachable log root: count it, keep serving
            self._errors.inc()
            now = time.monotonic()
            if now >= self._next_error_log:  # one line a minute, not one per flush
                self._next_error_log = now + 60.0
                log.error("request log: flush to %s failed: %s", self.root, err)
