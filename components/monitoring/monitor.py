"""The monitor: served traffic of a time window against the champion's training profile, then a decision.

read the request logs of the window -> drift (components/monitoring/drift.py) against the champion bundle's
reference profile -> live ROC-AUC and calibration where delayed labels have arrived (live.py) -> HTML report,
Metrics, Prometheus gauges (outputs.py) -> when drift crosses the alert threshold and no retraining was started
within the cooldown, start the training pipeline through the trigger the caller gives (pipelines/trigger.py:
run_local here, a KFP run on a cluster).

The cooldown lives in the state store (`<state>/monitoring/<service>/cooldown.json`). A trigger is claimed
there *before* the training starts, so a monitor that crashes or is rerun mid-trigger cannot start a second
retraining in a loop; the run id is added once the trigger returns.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.core import storage
from components.core.paths import log_root, monitor_home
from components.core.settings import Settings
from components.monitoring.drift import DriftSummary, compare
from components.monitoring.live import join_labels, live_performance, read_labels
from components.monitoring.outputs import report_html, write_prometheus
from components.monitoring.records import Analysis, Champion, Decision, MonitorConfig, MonitorError, Trigger

log = logging.getLogger(__name__)

HISTORY = 20  # trigger records kept in the cooldown file


# ---------------------------------------------------------------- inputs


def champion_reference(settings: Settings, model_name: str) -> Champion:
    """The champion's profile and signature from the registry; the bundle's digests are checked first."""
    from components.core import bundle as bundle_lib
    from components.core import tracking

    client = tracking.configure(settings)
    version = tracking.alias_version(client, model_name, "champion")
    if version is None:
        raise MonitorError(
            f"model {model_name!r} has no 'champion' in the MLflow registry at {settings.mlflow_tracking_uri}: "
            "deploy a model first (`make demo`)"
        )
    with tempfile.TemporaryDirectory(prefix="champion-") as tmp:
        local = Path(tracking.download_bundle(client, version, tmp))
        bundle_lib.verify(local)
        profile = json.loads((local / bundle_lib.PROFILE).read_text())
        signature = json.loads((local / bundle_lib.SIGNATURE).read_text())
        digest = bundle_lib.bundle_digest(local)
    return Champion(version=str(version.version), profile=profile, signature=signature, digest=digest)


# ---------------------------------------------------------------- analysis


def analyse(config: MonitorConfig, settings: Settings, now: datetime | None = None, champion: Champion | None = None) -> Analysis:
    """Drift of the window's traffic against the champion profile, plus live performance where labels exist."""
    from components.core.request_log import read_window

    end = now or datetime.now(UTC)
    start = end - timedelta(hours=config.window_hours)
    champion = champion or champion_reference(settings, config.model_name)
    service = config.log_name
    logs = read_window(log_root(settings), service, start, end)
    numeric = list(champion.profile.get("numeric", {}))
    categorical = list(champion.profile.get("categorical", {}))
    features = pd.DataFrame(
        {n: logs[f"f.{n}"] if f"f.{n}" in logs.columns else pd.Series([None] * len(logs), dtype=object) for n in [*numeric, *categorical]}
    )
    versions = {str(k): int(v) for k, v in logs["version"].value_counts().items()} if len(logs) else {}
    # The score distribution belongs to one model: compare only the champion's own answers when it has any.
    own = logs["version"].astype(str).isin(champion.served_versions) if len(logs) else None
    scored = logs[own] if own is not None and own.any() else logs
    probabilities = scored["probability"].to_numpy(dtype=np.float64) if len(scored) else None
    summary = compare(features, probabilities, champion.profile, config.thresholds)
    analysis = Analysis(
        model_name=config.model_name,
        service=service,
        champion_version=champion.version,
        start=start,
        end=end,
        summary=summary,
        versions=versions,
    )
    if config.labels_uri:
        joined = join_labels(logs, labels_for_join(read_labels(config.labels_uri), champion, settings))
        analysis.labeled = len(joined)
        if len(joined):
            analysis.performance, analysis.calibration = live_performance(joined)
    return analysis


def labels_for_join(labels: pd.DataFrame, champion: Champion, settings: Settings) -> pd.DataFrame:
    """Labels keyed by a personal entity key are joined on its keyed hash, which is all the request logs hold
    (components/core/privacy.py); the clear keys of the labels file are never written anywhere."""
    from components.core import privacy
    from components.core.spec import load_spec

    dataset = champion.signature.get("lineage", {}).get("dataset")
    if not dataset:
        return labels
    try:
        spec = load_spec(str(dataset))
    except Exception as err:  # the spec is not readable here: join on the keys as given
        log.warning("labels joined on their keys as given: cannot read dataset spec %r: %s", dataset, err)
        return labels
    if not spec.hashed_entity:
        return labels
    rule = privacy.rule_for(spec, settings.pii_hash_key)
    assert rule.key is not None  # rule_for raises without a key when the entity is personal
    return labels.assign(entity=privacy.hash_values(rule.key, labels["entity"]))


# ---------------------------------------------------------------- cooldown and trigger


def _cooldown_path(settings: Settings, service: str) -> str:
    return storage.join(monitor_home(settings, service), "cooldown.json")


def read_cooldown(settings: Settings, service: str) -> dict[str, Any]:
    path = _cooldown_path(settings, service)
    if not storage.exists(path):
        return {"triggers": []}
    try:
        return json.loads(storage.read_bytes(path))
    except ValueError as err:
        raise MonitorError(f"cooldown state {path} is not valid JSON ({err}); fix or delete it") from err


def decide(summary: DriftSummary, state: dict[str, Any], now: datetime, cooldown_hours: float) -> Decision:
    """Retrain only on an alert, with enough rows, and when the last trigger is older than the cooldown."""
    if summary.insufficient:
        return Decision("insufficient_data", f"{summary.rows} rows in the window, fewer than {summary.thresholds.min_rows}")
    if not summary.alert:
        return Decision("no_drift", "no feature nor the prediction distribution crossed the alert threshold")
    what = ", ".join(summary.drifted + (["prediction"] if summary.prediction_drifted else []))
    last = state.get("last_trigger")
    if last:
        since = now - datetime.fromisoformat(last)
        if since < timedelta(hours=cooldown_hours):
            left = timedelta(hours=cooldown_hours) - since
            return Decision("cooldown", f"drift in {what}, but retraining was started {since} ago; cooldown ends in {left}", last)
    return Decision("retrain", f"drift in {what}", last)


def claim_and_trigger(
    settings: Settings,
    service: str,
    summary: DriftSummary,
    cooldown_hours: float,
    trigger: Trigger,
    training_arguments: dict[str, Any],
    now: datetime | None = None,
) -> Decision:
    """Re-check the cooldown, record the trigger, then start the training; returns what was done."""
    now = now or datetime.now(UTC)
    state = read_cooldown(settings, service)
    decision = decide(summary, state, now, cooldown_hours)
    if not decision.retrain:
        return decision
    record = {"ts": now.isoformat(), "drifted": summary.drifted, "prediction_drifted": summary.prediction_drifted, "run": None}
    state = {**state, "last_trigger": now.isoformat(), "triggers": [*state.get("triggers", []), record][-HISTORY:]}
    path = _cooldown_path(settings, service)
    storage.write_bytes(path, json.dumps(state, indent=2).encode())  # claimed before the (long) training starts
    try:
        run = trigger(training_arguments)
    except Exception as err:
        record["error"] = f"{type(err).__name__}: {err}"[:500]
        storage.write_bytes(path, json.dumps(state, indent=2).encode())
        raise MonitorError(f"retraining trigger failed (the cooldown still holds, so it is not retried in a loop): {err}") from err
    record["run"] = run
    storage.write_bytes(path, json.dumps(state, indent=2).encode())
    decision.reason += f"; started training run {run}"
    return decision


# ---------------------------------------------------------------- one monitoring run


@dataclass
class MonitorResult:
    analysis: Analysis
    decision: Decision
    report_path: str
    prometheus_path: str


def run_monitor(
    config: MonitorConfig,
    settings: Settings,
    trigger: Trigger | None,
    training_arguments: dict[str, Any],
    now: datetime | None = None,
    report_path: str = "",
    pushgateway_url: str = "",
) -> MonitorResult:
    """Analyse, decide, trigger (when a trigger is given), and write the report and the gauges."""
    now = now or datetime.now(UTC)
    analysis = analyse(config, settings, now)
    if trigger is None:
        decision = decide(analysis.summary, read_cooldown(settings, analysis.service), now, config.cooldown_hours)
    else:
        decision = claim_and_trigger(settings, analysis.service, analysis.summary, config.cooldown_hours, trigger, training_arguments, now)
    report_path = report_path or storage.join(monitor_home(settings, analysis.service), "reports", f"drift-{now:%Y%m%dT%H%M%S}.html")
    storage.write_bytes(report_path, report_html(analysis, decision).encode())
    prom = write_prometheus(settings, analysis, decision, now, pushgateway_url)
    log.info(
        "monitor %s: %d rows, drifted %s, decision %s (%s)",
        analysis.service,
        analysis.summary.rows,
        analysis.summary.drifted or "none",
        decision.action,
        decision.reason,
    )
    return MonitorResult(analysis=analysis, decision=decision, report_path=report_path, prometheus_path=prom)
