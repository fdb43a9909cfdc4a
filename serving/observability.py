"""Prometheus metrics and structured (JSON) logs of the model server.

Metrics live in prometheus_client's default registry, so KServe's own `/metrics` route exposes them beside
its latency histograms. They are created on first use (nothing happens at import time) and once per
process, because a registry refuses a metric name twice.

With several worker processes (`--workers N`) each process keeps its samples in files under
PROMETHEUS_MULTIPROC_DIR (prometheus_client's multiprocess mode, chosen when it is first imported) and
`/metrics` answers with the sum over every process's files (`multiprocess_exposition`): KServe's own
`/metrics` would show only the worker that happened to answer.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

_LOCK = threading.Lock()
_METRICS: Metrics | None = None

# Latency buckets from 0.25 ms: the server answers a single row in well under a millisecond.
LATENCY_BUCKETS = (0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


@dataclass(frozen=True)
class Metrics:
    requests: Any  # Counter: model, version, protocol, status_class
    errors: Any  # Counter: model, version, protocol, code
    latency: Any  # Histogram: model, version, protocol
    rows: Any  # Counter: model, version (rows scored)
    lookups: Any  # Counter: model, result (found, unknown)
    request_log_dropped: Any  # Counter: model
    request_log_errors: Any  # Counter: model


def metrics() -> Metrics:
    global _METRICS
    with _LOCK:
        if _METRICS is None:
            from prometheus_client import Counter, Histogram

            labels = ["model", "version", "protocol"]
            _METRICS = Metrics(
                requests=Counter("mlwf_inference_requests", "Inference requests answered", [*labels, "status_class"]),
                errors=Counter("mlwf_inference_errors", "Inference requests answered with an error", [*labels, "code"]),
                latency=Histogram("mlwf_inference_latency_seconds", "Time from request to response", labels, buckets=LATENCY_BUCKETS),
                rows=Counter("mlwf_inference_rows", "Rows scored", ["model", "version"]),
                lookups=Counter("mlwf_online_lookups", "Entity keys looked up in the online store", ["model", "result"]),
                request_log_dropped=Counter("mlwf_request_log_dropped_rows", "Request-log rows dropped (queue full)", ["model"]),
                request_log_errors=Counter("mlwf_request_log_write_errors", "Request-log records or flushes that failed", ["model"]),
            )
        return _METRICS


class RequestMetrics:
    """Pre-bound label children for one model version: the hot path does no label lookups."""

    def __init__(self, model: str, version: str) -> None:
        m = metrics()
        self.model, self.version, self._m = model, version, m
        self._ok = {p: m.requests.labels(model, version, p, "2xx") for p in ("v1", "v2", "grpc")}
        self._latency = {p: m.latency.labels(model, version, p) for p in ("v1", "v2", "grpc")}
        self._rows = m.rows.labels(model, version)

    def success(self, protocol: str, seconds: float, rows: int) -> None:
        self._ok[protocol].inc()
        self._latency[protocol].observe(seconds)
        self._rows.inc(rows)

    def failure(self, protocol: str, seconds: float, code: int) -> None:
        m = self._m
        m.requests.labels(self.model, self.version, protocol, f"{code // 100}xx").inc()
        m.errors.labels(self.model, self.version, protocol, str(code)).inc()
        self._latency[protocol].observe(seconds)


# ---------------------------------------------------------------- several processes

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Every name prometheus_client (and Feast, which exports both of the upper-case ones when it is imported) reads.
_PROMETHEUS_DIR_NAMES = (MULTIPROC_ENV, "PROMETHEUS_MULTIPROCESS_DIR", "prometheus_multiproc_dir")
# The directory this server chose at start-up, in an environment variable of our own so the worker processes
# inherit it and no library can move it: `import feast` (the online store opens after start-up) sets
# PROMETHEUS_MULTIPROC_DIR to a directory of its own, and reading that name at request time served an empty page.
_CHOSEN_ENV = "MLWF_SERVING_METRICS_DIR"


def prepare_multiprocess_metrics(workers: int) -> str | None:
    """Choose where this server's samples live; call before prometheus_client is imported (`python -m serving`).

    One process keeps them in memory: a PROMETHEUS_MULTIPROC_DIR it inherited (a parent that imported Feast
    exports one to every child) is dropped, or two local servers started by one process would read each
    other's counters and a canary would be judged on its stable's answers. Several processes share files:
    a directory given in PROMETHEUS_MULTIPROC_DIR (KServe's way) is emptied of old samples (prometheus_client's
    rule: a restarted server must not add the last run's counts); otherwise a fresh temporary one is made and
    returned, for the caller to remove at exit.
    """
    given = os.environ.get(MULTIPROC_ENV, "").strip()
    for name in _PROMETHEUS_DIR_NAMES:
        os.environ.pop(name, None)
    os.environ.pop(_CHOSEN_ENV, None)
    created = None
    if workers > 1:
        if given:
            os.makedirs(given, exist_ok=True)
            for name in os.listdir(given):
                if name.endswith(".db"):
                    os.unlink(os.path.join(given, name))
        else:
            given = created = tempfile.mkdtemp(prefix="mlwf-metrics-")
        os.environ[MULTIPROC_ENV] = os.environ[_CHOSEN_ENV] = given
    import prometheus_client.values  # noqa: F401  # its value class (memory or files) is fixed now, not by a later import

    return created


def multiprocess_dir() -> str | None:
    """The directory whose files `/metrics` sums, or None when this server is one process."""
    return os.environ.get(_CHOSEN_ENV) or None


def multiprocess_exposition(accept: str | None) -> tuple[bytes, str]:
    """Every process's samples, summed (counters, histograms) as prometheus_client's collector does."""
    from prometheus_client import CollectorRegistry, exposition
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    encoder, content_type = exposition.choose_encoder(accept or "")
    return encoder(registry), content_type


# ---------------------------------------------------------------- logs

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "taskName", "color_message"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, any `extra=` fields, and the exception if any."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_json_logging(level: str = "INFO") -> None:
    """Route every logger (ours, KServe's, uvicorn's) through one JSON handler on stderr.

    KServe configures its own text format only when its logger has no handler in reach, so a root handler
    installed first wins; uvicorn's loggers are told to propagate to it.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level)
    logging.captureWarnings(True)  # library warnings become JSON lines too
    for name in ("kserve", "kserve.trace", "uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers = []
        logger.propagate = True
