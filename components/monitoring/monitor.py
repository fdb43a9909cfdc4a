"""The monitor: served traffic of a time window against the champion's training profile, then a decision.

read the request logs of the window -> drift (components/monitoring/drift.py) against the champion bundle's
reference profile -> live ROC-AUC and calibration where delayed labels have arrived -> HTML report,
Metrics, Prometheus gauges -> when drift crosses the alert threshold and no retraining was started within
the cooldown, start the training pipeline (run_local here, a KFP run on a cluster).

The cooldown lives in the state store (`<state>/monitoring/<service>/cooldown.json`). A trigger is claimed
there *before* the training starts, so a monitor that crashes or is rerun mid-trigger cannot start a second
retraining in a loop; the run id is added once the trigger returns.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import re
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from components.core import storage
from components.core.paths import log_root, monitor_home, service_name
from components.core.settings import Settings
from components.core.stats import expected_calibration_error
from components.monitoring.drift import DriftSummary, Thresholds, compare

log = logging.getLogger(__name__)

Trigger = Callable[[dict[str, Any]], str]  # training arguments -> an id of the run it started
HISTORY = 20  # trigger records kept in the cooldown file


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


# ---------------------------------------------------------------- inputs


def champion_reference(settings: Settings, model_name: str) -> Champion:
    """The champion's profile and signature from the registry; the bundle's digests are checked first."""
    from components.core import bundle as bundle_lib
    from components.core import tracking

    client = tracking.configure(settings)
    version = tracking.alias_version(client, model_name, "champion")
    if version is None:
        raise MonitorError(f"model {model_name!r} has no 'champion' in the MLflow registry at {settings.mlflow_tracking_uri}: "
                           "deploy a model first (`make demo`)")
    with tempfile.TemporaryDirectory(prefix="champion-") as tmp:
        local = Path(tracking.download_bundle(client, version, tmp))
        bundle_lib.verify(local)
        profile = json.loads((local / bundle_lib.PROFILE).read_text())
        signature = json.loads((local / bundle_lib.SIGNATURE).read_text())
        digest = bundle_lib.bundle_digest(local)
    return Champion(version=str(version.version), profile=profile, signature=signature, digest=digest)


def read_labels(uri: str) -> pd.DataFrame:
    """Delayed labels: entity, label (0/1), ts (when the label became known). CSV, Parquet or JSONL."""
    try:
        data = storage.read_bytes(uri)
    except (FileNotFoundError, OSError) as err:
        raise MonitorError(f"labels file not readable: {uri}: {err}") from err
    if uri.endswith(".parquet"):
        frame = pd.read_parquet(io.BytesIO(data))
    elif uri.endswith((".jsonl", ".json")):
        frame = pd.read_json(io.BytesIO(data), lines=True)
    else:
        frame = pd.read_csv(io.BytesIO(data), dtype={"entity": str})
    missing = {"entity", "label"} - set(frame.columns)
    if missing:
        raise MonitorError(f"labels file {uri} lacks column(s) {sorted(missing)}; expected entity, label, ts")
    labels = pd.to_numeric(frame["label"], errors="coerce")
    if labels.isna().any() or not labels.isin([0, 1]).all():
        raise MonitorError(f"labels file {uri}: label must be 0 or 1 on every row")
    out = pd.DataFrame({"entity": frame["entity"].astype(str), "label": labels.astype(int)})
    out["ts"] = pd.to_datetime(frame["ts"], utc=True) if "ts" in frame.columns else pd.NaT
    return out


def join_labels(logs: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """Logged predictions that have a label: the latest label per entity wins (labels get corrected)."""
    if logs.empty or "entity" not in logs.columns:
        return pd.DataFrame(columns=["ts", "probability", "label_true"])
    served = logs[logs["entity"].notna()][["ts", "entity", "probability"]].copy()
    served["entity"] = served["entity"].astype(str)
    latest = labels.sort_values("ts", kind="stable").drop_duplicates("entity", keep="last")
    joined = served.merge(latest[["entity", "label"]].rename(columns={"label": "label_true"}), on="entity", how="inner")
    return joined.sort_values("ts", kind="stable").reset_index(drop=True)


def live_performance(joined: pd.DataFrame, buckets: int = 8) -> tuple[pd.DataFrame, pd.DataFrame]:
    """ROC-AUC, Brier and calibration error per time bucket, and one reliability table for the window."""
    from sklearn.metrics import roc_auc_score

    y = joined["label_true"].to_numpy(dtype=int)
    p = joined["probability"].to_numpy(dtype=np.float64)
    codes = pd.cut(joined["ts"].astype("int64"), bins=max(1, min(buckets, len(joined))), labels=False) if len(joined) else []
    rows = []
    for b in sorted(set(codes)):
        mask = np.asarray(codes) == b
        yb, pb = y[mask], p[mask]
        auc = float(roc_auc_score(yb, pb)) if len(set(yb.tolist())) == 2 else float("nan")
        rows.append({"from": joined["ts"][mask].min(), "to": joined["ts"][mask].max(), "rows": int(mask.sum()),
                     "positives": int(yb.sum()), "roc_auc": auc, "brier": float(np.mean((pb - yb) ** 2)), "ece": expected_calibration_error(yb, pb)})
    perf = pd.DataFrame(rows)
    idx = np.minimum((p * 10).astype(int), 9)
    calib = pd.DataFrame({"bin": idx, "p": p, "y": y}).groupby("bin").agg(predicted=("p", "mean"), observed=("y", "mean"), rows=("y", "size")).reset_index()
    return perf, calib


# ---------------------------------------------------------------- analysis


def analyse(config: MonitorConfig, settings: Settings, now: datetime | None = None, champion: Champion | None = None) -> Analysis:
    """Drift of the window's traffic against the champion profile, plus live performance where labels exist."""
    from components.core.request_log import read_window

    end = now or datetime.now(timezone.utc)
    start = end - timedelta(hours=config.window_hours)
    champion = champion or champion_reference(settings, config.model_name)
    service = config.log_name
    logs = read_window(log_root(settings), service, start, end)
    numeric = list(champion.profile.get("numeric", {}))
    categorical = list(champion.profile.get("categorical", {}))
    features = pd.DataFrame({n: logs[f"f.{n}"] if f"f.{n}" in logs.columns else pd.Series([None] * len(logs), dtype=object)
                             for n in [*numeric, *categorical]})
    versions = {str(k): int(v) for k, v in logs["version"].value_counts().items()} if len(logs) else {}
    # The score distribution belongs to one model: compare only the champion's own answers when it has any.
    own = logs["version"].astype(str).isin(champion.served_versions) if len(logs) else None
    scored = logs[own] if own is not None and own.any() else logs
    probabilities = scored["probability"].to_numpy(dtype=np.float64) if len(scored) else None
    summary = compare(features, probabilities, champion.profile, config.thresholds)
    analysis = Analysis(model_name=config.model_name, service=service, champion_version=champion.version, start=start,
                        end=end, summary=summary, versions=versions)
    if config.labels_uri:
        joined = join_labels(logs, read_labels(config.labels_uri))
        analysis.labeled = len(joined)
        if len(joined):
            analysis.performance, analysis.calibration = live_performance(joined)
    return analysis


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


def claim_and_trigger(settings: Settings, service: str, summary: DriftSummary, cooldown_hours: float, trigger: Trigger,
                      training_arguments: dict[str, Any], now: datetime | None = None) -> Decision:
    """Re-check the cooldown, record the trigger, then start the training; returns what was done."""
    now = now or datetime.now(timezone.utc)
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


_RESULT = "MLWF_TRIGGER_RESULT "


def _outside_kfp_runtime(function: str, payload: dict[str, Any]) -> dict[str, Any]:
    """Call `components.monitoring.monitor.<function>(payload)` in a child process without `_KFP_RUNTIME`.

    Inside a pipeline step KFP sets _KFP_RUNTIME=true, which strips kfp.Client and the pipeline DSL from the
    kfp package: neither the training pipeline nor a client can be built there. The child's log goes to ours.
    """
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "_KFP_RUNTIME"}
    code = (f"import json, sys\nfrom components.monitoring.monitor import {function} as start\n"
            f"print({_RESULT!r} + json.dumps(start(json.load(sys.stdin))), flush=True)")
    root = str(Path(__file__).resolve().parent.parent)
    proc = subprocess.run([sys.executable, "-c", code], input=json.dumps(payload), capture_output=True, text=True, env=env, cwd=root)
    results = [line[len(_RESULT):] for line in proc.stdout.splitlines() if line.startswith(_RESULT)]
    # The training's own log (kfp.local prints each step's output on stdout) stays visible in this step's log.
    sys.stderr.write("".join(line for line in proc.stdout.splitlines(keepends=True) if not line.startswith(_RESULT)))
    sys.stderr.write(proc.stderr)
    if proc.returncode != 0 or not results:
        raise MonitorError(f"training trigger {function} exited with code {proc.returncode}: {_error_line(proc.stdout + proc.stderr)}")
    return dict(json.loads(results[-1]))


_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?[A-Z]\w*(?:Error|Exception|Failed|Failure)\b:?\s*(.*)$")


def _error_line(output: str) -> str:
    """The most telling line of a failed child's output: the innermost step's exception (DeployError: ...,
    ValidationFailed: ...) rather than whatever was printed last (a separator, the outer traceback)."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    exceptions = [line for line in lines if _EXCEPTION_LINE.match(line) and "finished with status" not in line]
    if exceptions:
        return exceptions[0]
    useful = [line for line in lines if line.strip("-=* ")]
    return useful[-1] if useful else "no output"


def _start_local_training(arguments: dict[str, Any]) -> dict[str, Any]:
    from pipelines.local import run_local

    run = run_local(arguments)
    return {"run": run.run_dir.name, "version": run.output("train-op", "version"), "deployed": run.ran("deploy-op")}


def _start_kfp_training(payload: dict[str, Any]) -> dict[str, Any]:
    from pipelines.cli import compile_package, kfp_client

    with tempfile.TemporaryDirectory(prefix="training-package-") as tmp:
        package = payload["package"]
        path = storage.local_copy(package, tmp) if package else compile_package(str(Path(tmp) / "training.yaml"))
        client = kfp_client(payload["host"], payload["namespace"])
        run = client.create_run_from_pipeline_package(path, arguments=payload["arguments"], experiment_name=payload["experiment"],
                                                      run_name=f"retrain-drift-{datetime.now(timezone.utc):%Y%m%d-%H%M}",
                                                      namespace=payload["namespace"])
    return {"run": str(run.run_id)}


def local_trigger(arguments: dict[str, Any]) -> str:
    """Run the training pipeline on this machine (kfp.local); returns the run directory and what came of it."""
    out = _outside_kfp_runtime("_start_local_training", arguments)
    return f"local:{out['run']} (version {out['version']}, {'deployed' if out['deployed'] else 'not deployed: gate failed'})"


def kfp_trigger(host: str, namespace: str, package: str = "", experiment: str = "mlwf") -> Trigger:
    """A trigger that creates a run of the training package on Kubeflow Pipelines.

    Without a package the training pipeline is compiled here, from the code installed in this image and with
    the configured components image: the retraining runs the code the monitor was built with.
    """

    def start(arguments: dict[str, Any]) -> str:
        payload = {"host": host, "namespace": namespace, "package": package, "experiment": experiment, "arguments": arguments}
        return str(_outside_kfp_runtime("_start_kfp_training", payload)["run"])

    return start


# ---------------------------------------------------------------- outputs


def headline_metrics(analysis: Analysis) -> dict[str, float]:
    s = analysis.summary
    out = {"rows": float(s.rows), "features_drifted": float(len(s.drifted)), "alert": float(s.alert),
           "max_psi": max((f.psi for f in s.features), default=0.0)}
    if s.prediction:
        out["prediction_psi"] = s.prediction.psi
    for f in s.features:
        out[f"psi.{f.feature}"] = f.psi
        if f.ks_d is not None:
            out[f"ks_d.{f.feature}"] = f.ks_d
    if analysis.performance is not None and len(analysis.performance):
        perf = analysis.performance
        out["labeled_rows"] = float(analysis.labeled)
        last_auc = perf["roc_auc"].dropna()
        if len(last_auc):
            out["live_roc_auc_latest"] = float(last_auc.iloc[-1])
        out["live_ece"] = float(np.average(perf["ece"], weights=perf["rows"]))
    return out


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")


def prometheus_text(analysis: Analysis, decision: Decision | None, now: datetime) -> str:
    """Gauges in the Prometheus text format (node-exporter textfile collector or a Pushgateway)."""
    s, model = analysis.summary, _label(analysis.service)
    lines = []

    def gauge(name: str, help_text: str, samples: list[tuple[dict[str, str], float]]) -> None:
        lines.extend([f"# HELP {name} {help_text}", f"# TYPE {name} gauge"])
        for labels, value in samples:
            text = ",".join(f'{k}="{_label(v)}"' for k, v in {"model": model, **labels}.items())
            lines.append(f"{name}{{{text}}} {value:.6g}")

    gauge("mlwf_drift_psi", "Population Stability Index of a feature against the champion's training profile",
          [({"feature": f.feature, "kind": f.kind}, f.psi) for f in s.features] + ([({"feature": "prediction", "kind": "prediction"}, s.prediction.psi)] if s.prediction else []))
    gauge("mlwf_drift_ks_statistic", "Kolmogorov-Smirnov D at the profile's bin edges",
          [({"feature": f.feature}, f.ks_d) for f in [*s.features, *([s.prediction] if s.prediction else [])] if f.ks_d is not None])
    gauge("mlwf_drift_ks_critical", "KS critical value (sample-size aware, with the configured floor)",
          [({"feature": f.feature}, f.ks_critical) for f in [*s.features, *([s.prediction] if s.prediction else [])] if f.ks_critical is not None])
    gauge("mlwf_drift_features_drifted", "Features at the alert level", [({}, float(len(s.drifted)))])
    gauge("mlwf_drift_alert", "1 when drift crossed the alert threshold in the last window", [({}, float(s.alert))])
    gauge("mlwf_drift_psi_alert_threshold", "The PSI alert threshold the monitor used", [({}, s.thresholds.psi_alert)])
    gauge("mlwf_monitor_window_rows", "Served rows in the monitored window", [({}, float(s.rows))])
    gauge("mlwf_monitor_last_run_timestamp_seconds", "When the monitor last finished", [({}, now.timestamp())])
    if decision is not None:
        gauge("mlwf_monitor_retrain_triggered", "1 when this run started a retraining", [({}, float(decision.retrain))])
    if analysis.performance is not None and len(analysis.performance):
        metrics = headline_metrics(analysis)
        if "live_roc_auc_latest" in metrics:
            gauge("mlwf_live_roc_auc", "ROC-AUC of served predictions with delayed labels (latest bucket)", [({}, metrics["live_roc_auc_latest"])])
        gauge("mlwf_live_ece", "Expected calibration error of served predictions with delayed labels", [({}, metrics["live_ece"])])
        gauge("mlwf_live_labeled_rows", "Served predictions joined to a delayed label", [({}, float(analysis.labeled))])
    return "\n".join(lines) + "\n"


def write_prometheus(settings: Settings, analysis: Analysis, decision: Decision | None, now: datetime, pushgateway_url: str = "") -> str:
    """Write the gauges where a textfile collector reads them; also push them when a Pushgateway is given."""
    text = prometheus_text(analysis, decision, now)
    path = storage.join(settings.state_dir, "monitoring", "metrics", f"mlwf_drift_{analysis.service}.prom")
    storage.write_bytes(path, text.encode())
    if pushgateway_url:
        import requests

        url = f"{pushgateway_url.rstrip('/')}/metrics/job/mlwf-monitor/model/{analysis.service}"
        response = requests.put(url, data=text.encode(), headers={"Content-Type": "text/plain; version=0.0.4"}, timeout=10)
        if response.status_code >= 300:
            raise MonitorError(f"Pushgateway {url} answered HTTP {response.status_code}: {response.text[:200]}")
    return path


def _png(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode()


def _plots(analysis: Analysis) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    s = analysis.summary
    panels = [*s.features, *([s.prediction] if s.prediction else [])]
    cols = 3
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3 * rows), squeeze=False)
    for ax, f in zip(axes.ravel(), panels):
        x = np.arange(len(f.bins))
        ax.bar(x - 0.2, f.reference, 0.4, label="training")
        ax.bar(x + 0.2, f.current, 0.4, label="served", color="tab:red" if f.level == "alert" else "tab:orange" if f.level == "warn" else "tab:green")
        ax.set_xticks(x, [b[:12] for b in f.bins], rotation=60, fontsize=7)
        ax.set_title(f"{f.feature}: PSI {f.psi:.3f} ({f.level})", fontsize=9)
    for ax in axes.ravel()[len(panels):]:
        ax.axis("off")
    axes.ravel()[0].legend(fontsize=7)
    fig.tight_layout()
    out.append(("Reference vs served distributions (frozen training bins)", _png(fig)))
    plt.close(fig)
    if analysis.performance is not None and len(analysis.performance):
        perf, calib = analysis.performance, analysis.calibration
        assert calib is not None  # computed together with the performance table
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.5))
        a1.plot(perf["to"], perf["roc_auc"], marker="o", label="ROC-AUC")
        a1.plot(perf["to"], perf["brier"], marker="s", label="Brier")
        a1.set_ylim(0, 1)
        a1.legend(fontsize=8)
        a1.set_title("Live performance over time (delayed labels)", fontsize=9)
        a1.tick_params(axis="x", labelrotation=30, labelsize=7)
        a2.plot([0, 1], [0, 1], ls="--", color="grey")
        a2.plot(calib["predicted"], calib["observed"], marker="o")
        a2.set_xlabel("mean predicted")
        a2.set_ylabel("observed positive rate")
        a2.set_title("Calibration (window)", fontsize=9)
        fig.tight_layout()
        out.append(("Live ROC-AUC and calibration", _png(fig)))
        plt.close(fig)
    return out


def report_html(analysis: Analysis, decision: Decision | None) -> str:
    s = analysis.summary
    verdict = "INSUFFICIENT DATA" if s.insufficient else ("DRIFT ALERT" if s.alert else "no drift alert")
    rows = []
    for f in [*s.features, *([s.prediction] if s.prediction else [])]:
        ks = f"{f.ks_d:.3f} / {f.ks_critical:.3f}" if f.ks_d is not None and f.ks_critical is not None else "-"
        rows.append(f"<tr class='{f.level}'><td>{html.escape(f.feature)}</td><td>{f.kind}</td><td>{f.rows}</td><td>{f.psi:.4f}</td><td>{ks}</td>"
                    f"<td>{f.null_reference:.3f} → {f.null_current:.3f}</td><td>{f.unseen_fraction:.2%}</td><td>{f.level}</td>"
                    f"<td>{html.escape('; '.join(f.reasons))}</td></tr>")
    decided = f"<p><b>Decision:</b> {html.escape(decision.action)}: {html.escape(decision.reason)}</p>" if decision else ""
    perf = ""
    if analysis.performance is not None and len(analysis.performance):
        perf = f"<h2>Live performance ({analysis.labeled} labeled predictions)</h2>" + analysis.performance.to_html(index=False, float_format=lambda v: f"{v:.4f}")
    elif analysis.labeled == 0:
        perf = "<p>No delayed labels joined to this window's predictions.</p>"
    plots = "".join(f"<h2>{html.escape(title)}</h2><img alt='{html.escape(title)}' src='data:image/png;base64,{png}'>" for title, png in _plots(analysis))
    th = s.thresholds
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Drift {html.escape(analysis.service)}</title>
<style>body{{font-family:sans-serif;margin:1.5em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 8px;font-size:13px}}
tr.alert{{background:#fdd}}tr.warn{{background:#ffe9c6}}</style></head><body>
<h1>{html.escape(analysis.model_name)} (champion v{html.escape(analysis.champion_version)}): {verdict}</h1>
<p>Window {analysis.start:%Y-%m-%d %H:%M} → {analysis.end:%Y-%m-%d %H:%M} UTC, {s.rows} served rows; versions served: {html.escape(json.dumps(analysis.versions))}.</p>
<p>Thresholds: PSI warn {th.psi_warn}, alert {th.psi_alert}; KS alpha {th.ks_alpha} with D floor {th.ks_min_d}; null-fraction change {th.null_delta}; at least {th.min_rows} rows.</p>
{decided}
<table><tr><th>feature</th><th>kind</th><th>rows</th><th>PSI</th><th>KS D / critical</th><th>null fraction</th><th>unseen</th><th>level</th><th>why</th></tr>{''.join(rows)}</table>
{perf}{plots}</body></html>"""


# ---------------------------------------------------------------- one monitoring run


@dataclass
class MonitorResult:
    analysis: Analysis
    decision: Decision
    report_path: str
    prometheus_path: str


def run_monitor(config: MonitorConfig, settings: Settings, trigger: Trigger | None, training_arguments: dict[str, Any],
                now: datetime | None = None, report_path: str = "", pushgateway_url: str = "") -> MonitorResult:
    """Analyse, decide, trigger (when a trigger is given), and write the report and the gauges."""
    now = now or datetime.now(timezone.utc)
    analysis = analyse(config, settings, now)
    if trigger is None:
        decision = decide(analysis.summary, read_cooldown(settings, analysis.service), now, config.cooldown_hours)
    else:
        decision = claim_and_trigger(settings, analysis.service, analysis.summary, config.cooldown_hours, trigger, training_arguments, now)
    report_path = report_path or storage.join(monitor_home(settings, analysis.service), "reports", f"drift-{now:%Y%m%dT%H%M%S}.html")
    storage.write_bytes(report_path, report_html(analysis, decision).encode())
    prom = write_prometheus(settings, analysis, decision, now, pushgateway_url)
    log.info("monitor %s: %d rows, drifted %s, decision %s (%s)", analysis.service, analysis.summary.rows,
             analysis.summary.drifted or "none", decision.action, decision.reason)
    return MonitorResult(analysis=analysis, decision=decision, report_path=report_path, prometheus_path=prom)


# ---------------------------------------------------------------- pipeline steps (pipelines/ops.py)


def summary_from_dict(data: dict[str, Any]) -> DriftSummary:
    from components.monitoring.drift import FeatureDrift

    return DriftSummary(rows=int(data["rows"]), features=[FeatureDrift(**f) for f in data["features"]],
                        prediction=FeatureDrift(**data["prediction"]) if data.get("prediction") else None,
                        thresholds=Thresholds(**data["thresholds"]), insufficient=bool(data["insufficient"]))


def drift_step(config: MonitorConfig, pushgateway_url: str, report: Any, metrics: Any, drift: Any) -> bool:
    """Analyse the window; write the report, Metrics, gauges and the summary. Returns whether to retrain now."""
    from components.core.settings import get_settings

    settings = get_settings()
    now = datetime.now(timezone.utc)
    analysis = analyse(config, settings, now)
    decision = decide(analysis.summary, read_cooldown(settings, analysis.service), now, config.cooldown_hours)
    storage.write_bytes(report.path, report_html(analysis, decision).encode())
    for key, value in headline_metrics(analysis).items():
        if value == value:  # NaN is not loggable
            metrics.log_metric(key, float(value))
    storage.write_bytes(drift.path, json.dumps({"service": analysis.service, "champion_version": analysis.champion_version,
                                                "summary": analysis.summary.as_dict()}, default=str).encode())
    prom = write_prometheus(settings, analysis, decision, now, pushgateway_url)
    report.metadata.update({"decision": decision.action, "reason": decision.reason, "drifted": ", ".join(analysis.summary.drifted)})
    drift.metadata.update({"service": analysis.service, "rows": analysis.summary.rows, "prometheus": prom})
    log.info("drift: %s rows, drifted %s; %s: %s", analysis.summary.rows, analysis.summary.drifted or "none", decision.action, decision.reason)
    return decision.retrain


def retrain_step(cooldown_hours: float, drift: Any, training_arguments: str, kfp_host: str, kfp_namespace: str,
                 training_package: str, decision_out: Any) -> str:
    """Claim the cooldown and start the training pipeline; writes what was done as Markdown."""
    from components.core.settings import get_settings

    settings = get_settings()
    data = json.loads(storage.read_bytes(drift.path))
    try:
        arguments = json.loads(training_arguments or "{}")
    except ValueError as err:
        raise MonitorError(f"training_arguments must be a JSON object, got {training_arguments!r}: {err}") from err
    if not isinstance(arguments, dict):
        raise MonitorError(f"training_arguments must be a JSON object, got {training_arguments!r}")
    trigger = local_trigger if settings.is_local else kfp_trigger(kfp_host, kfp_namespace, training_package)
    decision = claim_and_trigger(settings, data["service"], summary_from_dict(data["summary"]), cooldown_hours, trigger, arguments)
    text = f"# Retraining: {decision.action}\n\n{decision.reason}\n\nTraining arguments: `{json.dumps(arguments)}`\n"
    storage.write_bytes(decision_out.path, text.encode())
    decision_out.metadata.update({"action": decision.action, "reason": decision.reason})
    log.info("retrain: %s (%s)", decision.action, decision.reason)
    return decision.action
