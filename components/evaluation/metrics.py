"""The classification metrics the gate reads, computed once per set of scores."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from components.core.stats import calibration_bins, expected_calibration_error


def classification_metrics(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, float]:
    from sklearn.metrics import average_precision_score, brier_score_loss, f1_score, precision_score, recall_score, roc_auc_score

    pred = (p >= threshold).astype(int)
    single_class = len(np.unique(y)) < 2
    negatives = int((y == 0).sum())
    return {
        "roc_auc": float("nan") if single_class else float(roc_auc_score(y, p)),
        "pr_auc": float("nan") if single_class else float(average_precision_score(y, p)),
        "f1": float(f1_score(y, pred, zero_division=0)),
        "precision": float(precision_score(y, pred, zero_division=0)),
        "recall": float(recall_score(y, pred, zero_division=0)),
        "fpr": float(((pred == 1) & (y == 0)).sum() / negatives) if negatives else float("nan"),
        "accuracy": float((pred == y).mean()),
        "brier": float(brier_score_loss(y, p, labels=[0, 1])),
        "ece": expected_calibration_error(y, p),
        "positive_rate": float(y.mean()),
        "mean_score": float(p.mean()),
        "rows": float(len(y)),
    }


def finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def curves(y: np.ndarray, p: np.ndarray, threshold: float, max_points: int = 200) -> dict[str, Any]:
    from sklearn.metrics import confusion_matrix, precision_recall_curve, roc_curve

    if len(np.unique(y)) < 2:
        return {}
    fpr, tpr, thr = roc_curve(y, p)
    keep = np.unique(np.linspace(0, len(fpr) - 1, min(max_points, len(fpr))).astype(int))
    precision, recall, _ = precision_recall_curve(y, p)
    step = max(1, len(precision) // max_points)
    pred = (p >= threshold).astype(int)
    matrix = confusion_matrix(y, pred, labels=[0, 1])
    bins = calibration_bins(y, p)
    return {
        "roc": {"fpr": fpr[keep].tolist(), "tpr": tpr[keep].tolist(), "thresholds": np.clip(thr[keep], 0, 1).tolist()},
        "pr": {"precision": precision[::step].tolist(), "recall": recall[::step].tolist()},
        "threshold": float(threshold),  # the confusion matrix is at this score (a score >= it is called positive)
        "confusion": matrix.tolist(),  # [[TN, FP], [FN, TP]]: rows actual 0/1, columns predicted 0/1
        "calibration": {
            k: [b[key] for b in bins]
            for k, key in (("true", "observed"), ("predicted", "predicted"), ("rows", "rows"), ("lower", "lower"), ("upper", "upper"))
        },
    }
