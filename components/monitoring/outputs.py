"""What the monitor hands out: headline metrics, Prometheus gauges (a textfile and, optionally, a Pushgateway)
and the HTML drift report with its plots, in the look of the validation and evaluation reports (core/report_style).
"""

from __future__ import annotations

import base64
import io
import json
from datetime import datetime
from typing import Any

import numpy as np

from components.core import paths, storage
from components.core.report_style import Html, banner, esc, join, page, table, tag
from components.core.settings import Settings
from components.monitoring.records import Analysis, Decision, MonitorError


def headline_metrics(analysis: Analysis) -> dict[str, float]:
    s = analysis.summary
    out = {
        "rows": float(s.rows),
        "features_drifted": float(len(s.drifted)),
        "alert": float(s.alert),
        "max_psi": max((f.psi for f in s.features), default=0.0),
    }
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

    gauge(
        "mlwf_drift_psi",
        "Population Stability Index of a feature against the champion's training profile",
        [({"feature": f.feature, "kind": f.kind}, f.psi) for f in s.features]
        + ([({"feature": "prediction", "kind": "prediction"}, s.prediction.psi)] if s.prediction else []),
    )
    gauge(
        "mlwf_drift_ks_statistic",
        "Kolmogorov-Smirnov D at the profile's bin edges",
        [({"feature": f.feature}, f.ks_d) for f in [*s.features, *([s.prediction] if s.prediction else [])] if f.ks_d is not None],
    )
    gauge(
        "mlwf_drift_ks_critical",
        "KS critical value (sample-size aware, with the configured floor)",
        [
            ({"feature": f.feature}, f.ks_critical)
            for f in [*s.features, *([s.prediction] if s.prediction else [])]
            if f.ks_critical is not None
        ],
    )
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
            gauge(
                "mlwf_live_roc_auc",
                "ROC-AUC of served predictions with delayed labels (latest bucket)",
                [({}, metrics["live_roc_auc_latest"])],
            )
        gauge("mlwf_live_ece", "Expected calibration error of served predictions with delayed labels", [({}, metrics["live_ece"])])
        gauge("mlwf_live_labeled_rows", "Served predictions joined to a delayed label", [({}, float(analysis.labeled))])
    return "\n".join(lines) + "\n"


def write_prometheus(settings: Settings, analysis: Analysis, decision: Decision | None, now: datetime, pushgateway_url: str = "") -> str:
    """Write the gauges where a textfile collector reads them; also push them when a Pushgateway is given."""
    text = prometheus_text(analysis, decision, now)
    path = paths.drift_gauges_path(settings.state_dir, analysis.service)
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
        ax.bar(
            x + 0.2,
            f.current,
            0.4,
            label="served",
            color="tab:red" if f.level == "alert" else "tab:orange" if f.level == "warn" else "tab:green",
        )
        ax.set_xticks(x, [b[:12] for b in f.bins], rotation=60, fontsize=7)
        ax.set_title(f"{f.feature}: PSI {f.psi:.3f} ({f.level})", fontsize=9)
    for ax in axes.ravel()[len(panels) :]:
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


# Row colours for a feature's level: alert uses the shared "fail" row; warn is the monitor's own (amber, as the banner).
_LEVEL_ROW = {"alert": "fail", "warn": "warn"}
_WARN_ROW_CSS = Html("<style>tr.warn>td{background:#fff4d6}</style>")


def report_html(analysis: Analysis, decision: Decision | None) -> str:
    s = analysis.summary
    verdict = "INSUFFICIENT DATA" if s.insufficient else ("DRIFT ALERT" if s.alert else "no drift alert")
    status = "warn" if s.insufficient else ("fail" if s.alert else "pass")
    rows, classes = [], []
    for f in [*s.features, *([s.prediction] if s.prediction else [])]:
        ks = f"{f.ks_d:.3f} / {f.ks_critical:.3f}" if f.ks_d is not None and f.ks_critical is not None else "-"
        rows.append(
            [
                f.feature,
                f.kind,
                f.rows,
                f"{f.psi:.4f}",
                ks,
                f"{f.null_reference:.3f} → {f.null_current:.3f}",
                f"{f.unseen_fraction:.2%}",
                f.level,
                "; ".join(f.reasons),
            ]
        )
        classes.append(_LEVEL_ROW.get(f.level, ""))
    features = table(
        ["feature", "kind", "rows", "PSI", "KS D / critical", "null fraction", "unseen", "level", "why"],
        rows,
        classes,
        numeric=[2, 3, 4, 6],
    )
    decided = tag("p", join([tag("b", "Decision:"), f" {decision.action}: {decision.reason}"])) if decision else ""
    perf: Any = ""
    if analysis.performance is not None and len(analysis.performance):
        frame = analysis.performance
        cells = [[f"{v:.4f}" if isinstance(v, float) else str(v) for v in row] for row in frame.itertuples(index=False)]
        perf = join(
            [
                tag("h2", f"Live performance ({analysis.labeled} labeled predictions)"),
                table(list(frame.columns), cells, numeric=range(2, len(frame.columns))),
            ]
        )
    elif analysis.labeled == 0:
        perf = tag("p", "No delayed labels joined to this window's predictions.")
    plots = [
        join([tag("h2", title), Html(f'<img alt="{esc(title)}" src="data:image/png;base64,{png}">')]) for title, png in _plots(analysis)
    ]
    th = s.thresholds
    return page(
        f"Drift {analysis.service}",
        _WARN_ROW_CSS,
        banner(
            status,
            f"{analysis.model_name} (champion v{analysis.champion_version}): {verdict}",
            [
                f"Window {analysis.start:%Y-%m-%d %H:%M} → {analysis.end:%Y-%m-%d %H:%M} UTC, {s.rows} served rows; "
                f"versions served: {json.dumps(analysis.versions)}."
            ],
        ),
        tag(
            "p",
            f"Thresholds: PSI warn {th.psi_warn}, alert {th.psi_alert}; KS alpha {th.ks_alpha} with D floor {th.ks_min_d}; "
            f"null-fraction change {th.null_delta}; at least {th.min_rows} rows.",
        ),
        decided,
        features,
        perf,
        *plots,
    )
