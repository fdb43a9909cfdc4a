"""Evaluate: score the held-out latest period, compare with thresholds and the current champion, decide.

The decision is data (passed + every reason), returned as a step output that the pipeline branches on
with dsl.If; nothing here decides by returning False quietly.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from components import bundle as bundle_lib
from components import tracking
from components.settings import get_settings
from components.spec import LABEL

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GatePolicy:
    min_roc_auc: float = 0.75
    min_pr_auc: float = 0.0
    max_p99_latency_ms: float = 5.0  # per-row scoring on the CPU: the production latency budget
    max_regression: float = 0.01  # how much ROC-AUC may drop against the champion on the same test set


@dataclass
class Evaluation:
    metrics: dict[str, float]
    passed: bool
    reasons: list[str]
    champion: dict[str, Any] | None = None
    curves: dict[str, Any] = field(default_factory=dict)


def classification_metrics(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, float]:
    from sklearn.metrics import average_precision_score, brier_score_loss, f1_score, precision_score, recall_score, roc_auc_score

    pred = (p >= threshold).astype(int)
    single_class = len(np.unique(y)) < 2
    return {
        "roc_auc": float("nan") if single_class else float(roc_auc_score(y, p)),
        "pr_auc": float("nan") if single_class else float(average_precision_score(y, p)),
        "f1": float(f1_score(y, pred, zero_division=0)),
        "precision": float(precision_score(y, pred, zero_division=0)),
        "recall": float(recall_score(y, pred, zero_division=0)),
        "accuracy": float((pred == y).mean()),
        "brier": float(brier_score_loss(y, p)),
        "ece": expected_calibration_error(y, p),
        "positive_rate": float(y.mean()),
        "rows": float(len(y)),
    }


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            total += mask.mean() * abs(p[mask].mean() - y[mask].mean())
    return float(total)


def score(bundle: bundle_lib.Bundle, test: pd.DataFrame) -> np.ndarray:
    return bundle.predict_proba(bundle_lib.columns_from_frame(test, bundle.feature_names))


def decide(metrics: dict[str, float], policy: GatePolicy, champion: dict[str, Any] | None) -> tuple[bool, list[str]]:
    reasons = []
    if not metrics["roc_auc"] >= policy.min_roc_auc:  # NaN fails too
        reasons.append(f"roc_auc {metrics['roc_auc']:.4f} is below the minimum {policy.min_roc_auc:.4f}")
    if not metrics["pr_auc"] >= policy.min_pr_auc:
        reasons.append(f"pr_auc {metrics['pr_auc']:.4f} is below the minimum {policy.min_pr_auc:.4f}")
    if metrics["latency_p99_ms"] > policy.max_p99_latency_ms:
        reasons.append(f"per-row p99 latency {metrics['latency_p99_ms']:.3f} ms exceeds the budget {policy.max_p99_latency_ms} ms")
    if champion is not None and "roc_auc" in champion:
        floor = champion["roc_auc"] - policy.max_regression
        if metrics["roc_auc"] < floor:
            reasons.append(
                f"roc_auc {metrics['roc_auc']:.4f} regresses against champion v{champion['version']} "
                f"({champion['roc_auc']:.4f}) by more than {policy.max_regression}"
            )
    return not reasons, reasons


def champion_metrics(client: Any, model_name: str, candidate_version: str, test: pd.DataFrame) -> dict[str, Any] | None:
    """The champion's metrics on this same test set, or None when there is no champion yet."""
    version = tracking.alias_version(client, model_name, "champion")
    if version is None or str(version.version) == str(candidate_version):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        champion = bundle_lib.load(tracking.download_bundle(client, version, tmp))
        missing = [f for f in champion.feature_names if f not in test.columns]
        if missing:
            return {"version": str(version.version), "comparable": False, "why": f"champion needs features {missing}"}
        p = score(champion, test)
    y = test[LABEL].to_numpy(dtype=int)
    m = classification_metrics(y, p, champion.threshold)
    return {"version": str(version.version), "comparable": True, **m}


def evaluate(model_dir: str, test: pd.DataFrame, policy: GatePolicy, model_name: str | None, version: str | None) -> Evaluation:
    candidate = bundle_lib.load(model_dir)
    y = test[LABEL].to_numpy(dtype=int)
    p = score(candidate, test)
    metrics = classification_metrics(y, p, candidate.threshold)
    latency = bundle_lib.per_row_latency_ms(candidate, bundle_lib.columns_from_frame(test, candidate.feature_names))
    metrics.update({"latency_p50_ms": latency["p50_ms"], "latency_p99_ms": latency["p99_ms"]})
    champion = None
    if model_name and version:
        client = tracking.configure(get_settings())
        champion = champion_metrics(client, model_name, version, test)
    passed, reasons = decide(metrics, policy, champion)
    return Evaluation(metrics=metrics, passed=passed, reasons=reasons, champion=champion, curves=curves(y, p, candidate.threshold))


def curves(y: np.ndarray, p: np.ndarray, threshold: float, max_points: int = 200) -> dict[str, Any]:
    from sklearn.metrics import confusion_matrix, precision_recall_curve, roc_curve

    if len(np.unique(y)) < 2:
        return {}
    fpr, tpr, thr = roc_curve(y, p)
    keep = np.unique(np.linspace(0, len(fpr) - 1, min(max_points, len(fpr))).astype(int))
    precision, recall, _ = precision_recall_curve(y, p)
    pred = (p >= threshold).astype(int)
    matrix = confusion_matrix(y, pred, labels=[0, 1])
    prob_true, prob_pred = [], []
    for lo in np.linspace(0, 0.9, 10):
        mask = (p >= lo) & (p < lo + 0.1)
        if mask.any():
            prob_true.append(float(y[mask].mean()))
            prob_pred.append(float(p[mask].mean()))
    return {
        "roc": {"fpr": fpr[keep].tolist(), "tpr": tpr[keep].tolist(), "thresholds": np.clip(thr[keep], 0, 1).tolist()},
        "pr": {"precision": precision.tolist()[:: max(1, len(precision) // max_points)], "recall": recall.tolist()[:: max(1, len(recall) // max_points)]},
        "confusion": matrix.tolist(),
        "calibration": {"true": prob_true, "predicted": prob_pred},
    }


def _plot_png(ev: Evaluation) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    c = ev.curves
    axes[0].plot(c["roc"]["fpr"], c["roc"]["tpr"])
    axes[0].plot([0, 1], [0, 1], "--", color="grey")
    axes[0].set(title=f"ROC (AUC {ev.metrics['roc_auc']:.3f})", xlabel="false positive rate", ylabel="true positive rate")
    axes[1].plot(c["pr"]["recall"], c["pr"]["precision"])
    axes[1].set(title=f"Precision-recall (AP {ev.metrics['pr_auc']:.3f})", xlabel="recall", ylabel="precision")
    axes[2].plot(c["calibration"]["predicted"], c["calibration"]["true"], "o-")
    axes[2].plot([0, 1], [0, 1], "--", color="grey")
    axes[2].set(title=f"Calibration (ECE {ev.metrics['ece']:.3f})", xlabel="predicted", ylabel="observed")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def report_html(ev: Evaluation, model_name: str, version: str, policy: GatePolicy) -> str:
    verdict = "PASS" if ev.passed else "FAIL"
    rows = "".join(f"<tr><td>{k}</td><td>{v:.4f}</td></tr>" for k, v in ev.metrics.items())
    reasons = "".join(f"<li>{html.escape(r)}</li>" for r in ev.reasons) or "<li>all checks passed</li>"
    champ = "<p>No champion yet: judged on the absolute thresholds only.</p>"
    if ev.champion:
        champ = "<h2>Champion vs challenger</h2><table><tr><th></th><th>champion v{}</th><th>candidate v{}</th></tr>{}</table>".format(
            html.escape(ev.champion["version"]), html.escape(version),
            "".join(f"<tr><td>{k}</td><td>{ev.champion.get(k, float('nan')):.4f}</td><td>{ev.metrics[k]:.4f}</td></tr>"
                    for k in ("roc_auc", "pr_auc", "f1", "ece") if k in ev.champion),
        )
    plots = f'<img alt="ROC, PR and calibration" src="data:image/png;base64,{_plot_png(ev)}">' if ev.curves else ""
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Evaluation {html.escape(model_name)} v{html.escape(version)}</title>
<style>body{{font-family:sans-serif;margin:1.5em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 8px;font-size:13px}}</style></head><body>
<h1>{html.escape(model_name)} v{html.escape(version)}: gate {verdict}</h1><ul>{reasons}</ul>
<p>Policy: {html.escape(str(asdict(policy)))}</p>{champ}
<h2>Test-period metrics</h2><table>{rows}</table>{plots}</body></html>"""
