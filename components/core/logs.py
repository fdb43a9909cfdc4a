"""How a pipeline step logs: one format, the chattiest libraries turned down, metrics onto a KFP artifact."""

from __future__ import annotations

import logging
from typing import Any, Protocol


class MetricsArtifact(Protocol):
    """What a step needs of a KFP Metrics artifact (kfp.dsl.Metrics, or a test's stand-in with the same method)."""

    def log_metric(self, metric: str, value: float) -> None: ...


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    for noisy in ("feast", "great_expectations", "alembic", "urllib3", "kserve.trace"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def log_metrics(artifact: MetricsArtifact, values: dict[str, Any]) -> None:
    for key, value in values.items():
        artifact.log_metric(key, float(value))


class Artifact(Protocol):
    """What a step needs of a KFP artifact (Dataset, Model, HTML, Markdown...): where to write, and metadata."""

    path: str
    uri: str
    metadata: dict[str, Any]
