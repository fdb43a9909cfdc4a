"""The statistics every stage shares, written once: PSI, calibration bins and ECE, the F1 threshold.

One implementation each, so the gate, the canary analysis and the monitor cannot disagree on a number.
Calibration bins are half-open [k/B, (k+1)/B) with exact k/B edges (the last bin includes 1.0): a score
of exactly 0.3 belongs to [0.3, 0.4), as a reader of a reliability diagram expects.
"""

from __future__ import annotations

import numpy as np


def psi(reference: np.ndarray, current: np.ndarray, epsilon: float) -> float:
    """Population Stability Index of two frequency vectors over the same bins; empty bins count as epsilon."""
    r = np.clip(np.asarray(reference, dtype=np.float64), epsilon, None)
    c = np.clip(np.asarray(current, dtype=np.float64), epsilon, None)
    return float(np.sum((c - r) * np.log(c / r)))


def prediction_psi(stable: np.ndarray, canary: np.ndarray, max_bins: int = 10, min_per_bin: int = 25) -> float:
    """PSI of the canary's predictions against stable's, on bins cut at stable's quantiles.

    Fewer bins for small samples: PSI's bias under no change is about (bins - 1) * (1/n + 1/m), so with 50
    predictions a side ten bins would read ~0.2 for two identical models.
    """
    stable, canary = np.asarray(stable, dtype=np.float64), np.asarray(canary, dtype=np.float64)
    bins = int(np.clip(min(len(stable), len(canary)) // min_per_bin, 2, max_bins))
    edges = np.unique(np.quantile(stable, np.linspace(0, 1, bins + 1)[1:-1]))
    # Bin i holds values < edges[i] (and >= edges[i-1]); ties at an edge go right, the same for both sides.
    ref = np.bincount(np.searchsorted(edges, stable, side="right"), minlength=len(edges) + 1) / len(stable)
    cur = np.bincount(np.searchsorted(edges, canary, side="right"), minlength=len(edges) + 1) / len(canary)
    return psi(ref, cur, epsilon=1e-4)


def calibration_bins(y: np.ndarray, p: np.ndarray, bins: int = 10) -> list[dict[str, float]]:
    """The non-empty equal-width score bins (the last one includes 1.0): edges, rows, mean score, observed
    positive rate. Both the calibration error and the report's calibration plot read these, so they agree."""
    edges = np.arange(bins + 1) / bins  # k / bins exactly: linspace makes 0.30000000000000004, putting 0.3 in the bin below
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    out = []
    for b in range(bins):
        mask = which == b
        if mask.any():
            out.append(
                {
                    "lower": float(edges[b]),
                    "upper": float(edges[b + 1]),
                    "rows": int(mask.sum()),
                    "predicted": float(p[mask].mean()),
                    "observed": float(y[mask].mean()),
                }
            )
    return out


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """Mean |predicted - observed| over ten equal-width score bins, weighted by the share of rows in each."""
    total = sum(b["rows"] * abs(b["predicted"] - b["observed"]) for b in calibration_bins(y, p, bins))
    return float(total / len(p)) if len(p) else 0.0


def best_f1_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """The score threshold with the best F1 on (y, p); 0.5 when p has a single value."""
    from sklearn.metrics import precision_recall_curve

    precision, recall, thresholds = precision_recall_curve(y, p)
    f1 = 2 * precision * recall / np.clip(precision + recall, 1e-12, None)
    return float(thresholds[int(np.argmax(f1[:-1]))]) if len(thresholds) else 0.5
