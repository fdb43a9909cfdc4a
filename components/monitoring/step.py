"""The monitoring pipeline's steps, called by the @dsl.component bodies in pipelines/ops.py (drift_op, retrain_op).

The retraining trigger is given to retrain_step: the op builds it (pipelines/trigger.py), so nothing here
imports the pipelines it starts.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from components.core import storage
from components.monitoring.drift import DriftSummary, FeatureDrift, Thresholds
from components.monitoring.monitor import analyse, claim_and_trigger, decide, read_cooldown
from components.monitoring.outputs import headline_metrics, report_html, write_prometheus
from components.monitoring.records import MonitorConfig, MonitorError, Trigger

log = logging.getLogger(__name__)


def summary_from_dict(data: dict[str, Any]) -> DriftSummary:
    return DriftSummary(
        rows=int(data["rows"]),
        features=[FeatureDrift(**f) for f in data["features"]],
        prediction=FeatureDrift(**data["prediction"]) if data.get("prediction") else None,
        thresholds=Thresholds(**data["thresholds"]),
        insufficient=bool(data["insufficient"]),
    )


def drift_step(config: MonitorConfig, pushgateway_url: str, report: Any, metrics: Any, drift: Any) -> bool:
    """Analyse the window; write the report, Metrics, gauges and the summary. Returns whether to retrain now."""
    from components.core.settings import get_settings

    settings = get_settings()
    now = datetime.now(UTC)
    analysis = analyse(config, settings, now)
    decision = decide(analysis.summary, read_cooldown(settings, analysis.service), now, config.cooldown_hours)
    storage.write_bytes(report.path, report_html(analysis, decision).encode())
    for key, value in headline_metrics(analysis).items():
        if value == value:  # NaN is not loggable
            metrics.log_metric(key, float(value))
    storage.write_bytes(
        drift.path,
        json.dumps(
            {"service": analysis.service, "champion_version": analysis.champion_version, "summary": analysis.summary.as_dict()}, default=str
        ).encode(),
    )
    prom = write_prometheus(settings, analysis, decision, now, pushgateway_url)
    report.metadata.update({"decision": decision.action, "reason": decision.reason, "drifted": ", ".join(analysis.summary.drifted)})
    drift.metadata.update({"service": analysis.service, "rows": analysis.summary.rows, "prometheus": prom})
    log.info(
        "drift: %s rows, drifted %s; %s: %s", analysis.summary.rows, analysis.summary.drifted or "none", decision.action, decision.reason
    )
    return decision.retrain


def retrain_step(cooldown_hours: float, drift: Any, training_arguments: str, decision_out: Any, trigger: Trigger) -> str:
    """Claim the cooldown and start the training pipeline through `trigger`; writes what was done as Markdown."""
    from components.core.settings import get_settings

    settings = get_settings()
    data = json.loads(storage.read_bytes(drift.path))
    try:
        arguments = json.loads(training_arguments or "{}")
    except ValueError as err:
        raise MonitorError(f"training_arguments must be a JSON object, got {training_arguments!r}: {err}") from err
    if not isinstance(arguments, dict):
        raise MonitorError(f"training_arguments must be a JSON object, got {training_arguments!r}")
    decision = claim_and_trigger(settings, data["service"], summary_from_dict(data["summary"]), cooldown_hours, trigger, arguments)
    text = f"# Retraining: {decision.action}\n\n{decision.reason}\n\nTraining arguments: `{json.dumps(arguments)}`\n"
    storage.write_bytes(decision_out.path, text.encode())
    decision_out.metadata.update({"action": decision.action, "reason": decision.reason})
    log.info("retrain: %s (%s)", decision.action, decision.reason)
    return decision.action
