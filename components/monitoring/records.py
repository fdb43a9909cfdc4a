"""What the monitor works on and hands out: its config, the champion's reference, a window's analysis, the
decision, the trigger's type and the monitor's error.

They live apart from the analysis (monitor.py) because the live-performance (live.py) and output (outputs.py)
modules use them too, and monitor.py uses those modules: one module below all three keeps the imports one way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pandas as pd

from components.core.paths import service_name
from components.monitoring.drift import DriftSummary, Thresholds

# Training arguments -> an id of the run it started. The monitor is given one (pipelines/trigger.py builds
# them: run_local on this machine, a KFP run on a cluster); it never imports the pipelines itself.
Trigger = Callable[[dict[str, Any]], str]


class MonitorError(RuntimeError):
    """The monitor cannot do its job (no champion, unreadable labels, ...); the message says why."""


@dataclass(frozen=True)
class MonitorConfig:
    model_name: str  # the registry name, e.g. transactions_classifier
    window_hours: float = 24.0
    cooldown_hours: float = 24.0
    thresholds: Thresholds = field(default_factory=Thresholds)
    labels_uri: str = ""  # delayed labels: CSV/Parquet/JSONL with entity, label, ts
    service: str = ""  # the name the server logs under; default: the deployed service name

    @property
    def log_name(self) -> str:
        if self.service:
            return self.service

        return service_name(self.model_name)


@dataclass
class Champion:
    version: str
    profile: dict[str, Any]
    signature: dict[str, Any]
    digest: str = ""  # the bundle's sha256 (of its manifest)

    @property
    def served_versions(self) -> set[str]:
        """What the server logs as `version` for this bundle: the registry version, or (serving/model.py) the
        lineage's model_version, else the first 12 characters of its inputs fingerprint."""
        lineage = self.signature.get("lineage", {})
        served = lineage.get("model_version") or str(lineage.get("inputs_fingerprint", ""))[:12] or self.digest[:12]
        return {self.version, str(served)} - {""}


@dataclass
class Decision:
    action: str  # retrain | cooldown | no_drift | insufficient_data
    reason: str
    last_trigger: str | None = None

    @property
    def retrain(self) -> bool:
        return self.action == "retrain"


@dataclass
class Analysis:
    model_name: str
    service: str
    champion_version: str
    start: datetime
    end: datetime
    summary: DriftSummary
    versions: dict[str, int]  # rows per served version in the window
    performance: pd.DataFrame | None = None  # per time bucket: rows, positives, roc_auc, brier, ece
    calibration: pd.DataFrame | None = None  # per score bin: mean predicted, observed rate, rows
    labeled: int = 0
