"""Drift statistics against the training-time reference profile of a model bundle (pure numpy).

The bundle's profile (components/training/train.py reference_profile) holds, per numeric feature, decile bin edges
frozen at training time with the training frequencies and null fraction; per categorical feature the
value frequencies; and the binned distribution of the training scores. Monitoring measures the served
traffic against exactly those bins, so nothing of the training data is needed at run time.

- PSI on the frozen bins (values outside the training range fall into the end bins, as in training;
  empty bins get `epsilon` so PSI stays finite). Categorical PSI has an "unseen" bucket for values the
  training data never had.
- Kolmogorov-Smirnov: the profile keeps bins, not samples, so D is the largest gap between the reference
  and current CDFs at the interior bin edges, where both are known exactly (no interpolation, which would
  invent gaps for discrete features). It is a lower bound of the full-resolution D. The decision uses the
  sample-size-aware critical value c(alpha) * sqrt((n + m) / (n m)) with m the profile's row count, and a
  floor on D: at a million rows a p-value flags a 0.1-sigma shift that matters to nobody.
- Both come from one count per edge (how many values lie below it), done in cache-sized chunks: one
  comparison sweep instead of a sort or a binary search per value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from components.core.stats import psi

UNSEEN = "<unseen>"
NULL = "<null>"  # how reference_profile() names a missing categorical value
LEVELS = ("ok", "warn", "alert")
_CHUNK = 32_768  # values per comparison sweep: with 9 edges the boolean block stays in L2


@dataclass(frozen=True)
class Thresholds:
    """When a feature counts as drifted. PSI 0.1 / 0.25 are the usual warn / alert conventions."""

    psi_warn: float = 0.1
    psi_alert: float = 0.25
    ks_alpha: float = 0.01
    ks_min_d: float = 0.1  # floor on D: shifts smaller than this are not worth a retraining
    null_delta: float = 0.05  # absolute change of the null fraction that counts as drift
    min_rows: int = 200  # below this many served rows the window is too thin to decide
    epsilon: float = 1e-4  # stands in for an empty bin's frequency

    def __post_init__(self) -> None:
        if not 0 < self.psi_warn <= self.psi_alert:
            raise ValueError(f"need 0 < psi_warn <= psi_alert, got {self.psi_warn} and {self.psi_alert}")
        if not 0 < self.ks_alpha < 1:
            raise ValueError(f"ks_alpha must be in (0, 1), got {self.ks_alpha}")
        if not 0 < self.epsilon < 0.01:
            raise ValueError(f"epsilon must be small and positive, got {self.epsilon}")


@dataclass
class FeatureDrift:
    feature: str
    kind: str  # numeric | categorical | prediction
    rows: int  # non-null current values compared
    psi: float
    level: str
    ks_d: float | None = None
    ks_critical: float | None = None
    null_reference: float = 0.0
    null_current: float = 0.0
    unseen_fraction: float = 0.0
    bins: list[str] = field(default_factory=list)
    reference: list[float] = field(default_factory=list)  # frequencies per bin, for the report's plots
    current: list[float] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)


@dataclass
class DriftSummary:
    rows: int
    features: list[FeatureDrift]
    prediction: FeatureDrift | None
    thresholds: Thresholds
    insufficient: bool  # too few rows: no decision either way

    @property
    def drifted(self) -> list[str]:
        return [f.feature for f in self.features if f.level == "alert"]

    @property
    def prediction_drifted(self) -> bool:
        return self.prediction is not None and self.prediction.level == "alert"

    @property
    def alert(self) -> bool:
        return not self.insufficient and (bool(self.drifted) or self.prediction_drifted)

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "insufficient": self.insufficient,
            "alert": self.alert,
            "drifted": self.drifted,
            "thresholds": asdict(self.thresholds),
            "features": [asdict(f) for f in self.features],
            "prediction": asdict(self.prediction) if self.prediction else None,
        }


def ks_critical(n: int, m: int, thresholds: Thresholds) -> float:
    """Two-sample KS critical value at alpha for sizes n and m, never below the practical floor."""
    if n <= 0 or m <= 0:
        return math.inf
    c_alpha = math.sqrt(-0.5 * math.log(thresholds.ks_alpha / 2))
    return max(c_alpha * math.sqrt((n + m) / (n * m)), thresholds.ks_min_d)


def below_counts(values: np.ndarray, edges: np.ndarray, chunk: int = _CHUNK) -> tuple[np.ndarray, int]:
    """For each edge, how many values are strictly below it; and how many values are NaN.

    One comparison of every value with every edge, a chunk at a time, so the boolean block stays in
    cache; with the ten-or-so edges of a decile profile this beats both a sort and np.searchsorted.
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    e = np.asarray(edges, dtype=np.float64).reshape(-1, 1)
    below = np.zeros(len(e), dtype=np.int64)
    nan = 0
    if len(x) == 0:
        return below, 0
    size = min(chunk, len(x))
    block = np.empty((len(e), size), dtype=bool)
    isnan = np.empty(size, dtype=bool)
    for start in range(0, len(x), size):
        part = x[start : start + size]
        m = len(part)
        np.less(part, e, out=block[:, :m])
        for k in range(len(e)):
            below[k] += np.count_nonzero(block[k, :m])
        nan += int(np.count_nonzero(np.isnan(part, out=isnan[:m])))
    return below, nan


def binned_frequencies(values: np.ndarray, edges: Sequence[float]) -> tuple[np.ndarray, int, int]:
    """Frequencies over the frozen bins [e0, e1), ..., [e_k-1, e_k] with out-of-range values in the end bins
    (as reference_profile() clips them); returns (frequencies, non-null count, null count)."""
    edges_arr = np.asarray(edges, dtype=np.float64)
    below, nan = below_counts(values, edges_arr[1:-1])
    valid = len(values) - nan
    if len(edges_arr) < 2:  # a constant training feature: one bin holds everything
        return np.array([1.0 if valid else 0.0]), valid, nan
    # +inf is not below any edge and not NaN: it lands in the last bin, like any value above the range.
    counts = np.diff(np.concatenate(([0], below, [valid])))
    return counts / max(valid, 1), valid, nan


def _level(psi_value: float, ks_d: float | None, ks_crit: float | None, null_delta: float, th: Thresholds) -> tuple[str, list[str]]:
    reasons = []
    if psi_value >= th.psi_alert:
        reasons.append(f"PSI {psi_value:.3f} >= {th.psi_alert}")
    if ks_d is not None and ks_crit is not None and ks_d >= ks_crit:
        reasons.append(f"KS D {ks_d:.3f} >= {ks_crit:.3f}")
    if abs(null_delta) >= th.null_delta:
        reasons.append(f"null fraction changed by {null_delta:+.3f}")
    if reasons:
        return "alert", reasons
    if psi_value >= th.psi_warn:
        return "warn", [f"PSI {psi_value:.3f} >= {th.psi_warn}"]
    return "ok", []


def _edge_labels(edges: Sequence[float]) -> list[str]:
    if len(edges) < 2:
        return [f"{edges[0]:.4g}" if len(edges) else "all"]
    return [f"[{a:.4g}, {b:.4g})" for a, b in zip(edges[:-1], edges[1:])]


def numeric_drift(name: str, values: np.ndarray, reference: Mapping[str, Any], reference_rows: int, th: Thresholds) -> FeatureDrift:
    """PSI and edge-KS of one numeric feature against its profile entry (edges, frequencies, null_fraction)."""
    edges = list(reference["edges"])
    ref_freq = np.asarray(reference["frequencies"], dtype=np.float64)
    cur_freq, valid, nan = binned_frequencies(values, edges)
    if len(ref_freq) != len(cur_freq):
        raise ValueError(f"profile of {name!r} has {len(edges)} edges but {len(ref_freq)} frequencies")
    null_ref = float(reference.get("null_fraction", 0.0))
    null_cur = nan / len(values) if len(values) else 0.0
    value = psi(ref_freq, cur_freq, th.epsilon) if valid else 0.0
    # CDFs at the interior edges; the last edge has 1.0 on both sides by construction.
    d = float(np.max(np.abs(np.cumsum(ref_freq)[:-1] - np.cumsum(cur_freq)[:-1]))) if len(ref_freq) > 1 and valid else 0.0
    m = max(int(round(reference_rows * (1 - null_ref))), 1)
    crit = ks_critical(valid, m, th)
    level, reasons = _level(value, d, crit, null_cur - null_ref, th)
    return FeatureDrift(
        feature=name,
        kind="numeric",
        rows=valid,
        psi=value,
        level=level,
        ks_d=d,
        ks_critical=crit,
        null_reference=null_ref,
        null_current=null_cur,
        bins=_edge_labels(edges),
        reference=ref_freq.tolist(),
        current=cur_freq.tolist(),
        reasons=reasons,
    )


def categorical_drift(name: str, values: Sequence[Any], reference: Mapping[str, float], th: Thresholds) -> FeatureDrift:
    """PSI over the training values plus an "unseen" bucket (reference frequency 0, so epsilon)."""
    import pandas as pd

    series = pd.Series(values, dtype=object)
    text = series.where(series.notna(), NULL).astype(str)
    counts = text.value_counts()
    total = int(counts.sum())
    known = [k for k in reference if k != UNSEEN]
    cur = np.array([counts.get(k, 0) for k in known], dtype=np.float64)
    unseen = total - int(cur.sum())
    cur_freq = np.append(cur, unseen) / max(total, 1)
    ref_freq = np.append(np.array([reference[k] for k in known], dtype=np.float64), 0.0)
    value = psi(ref_freq, cur_freq, th.epsilon) if total else 0.0
    null_ref, null_cur = float(reference.get(NULL, 0.0)), float(counts.get(NULL, 0)) / max(total, 1)
    level, reasons = _level(value, None, None, null_cur - null_ref, th)
    if unseen:
        top = ", ".join(repr(v) for v in counts.index[~counts.index.isin(known)][:3])
        reasons.append(f"{unseen} value(s) never seen in training ({unseen / total:.1%}; e.g. {top})")
    return FeatureDrift(
        feature=name,
        kind="categorical",
        rows=total,
        psi=value,
        level=level,
        null_reference=null_ref,
        null_current=null_cur,
        unseen_fraction=unseen / max(total, 1),
        bins=[*known, UNSEEN],
        reference=ref_freq.tolist(),
        current=cur_freq.tolist(),
        reasons=reasons,
    )


def prediction_drift(probabilities: np.ndarray, reference: Mapping[str, Any], reference_rows: int, th: Thresholds) -> FeatureDrift:
    out = numeric_drift("prediction", probabilities, {**reference, "null_fraction": 0.0}, reference_rows, th)
    out.kind = "prediction"
    return out


def compare(frame: Any, probabilities: np.ndarray | None, profile: Mapping[str, Any], th: Thresholds | None = None) -> DriftSummary:
    """Every profiled feature of `frame` (columns named as the features) and the scores against the profile."""
    th = th or Thresholds()
    reference_rows = int(profile.get("rows", 0))
    if reference_rows <= 0:
        raise ValueError("the reference profile has no row count: cannot size the KS test")
    missing = [n for n in [*profile.get("numeric", {}), *profile.get("categorical", {})] if n not in frame.columns]
    if missing:
        raise ValueError(f"served rows lack profiled feature(s) {missing}: is this the champion's traffic?")
    features = []
    for name, entry in profile.get("numeric", {}).items():
        values = frame[name].to_numpy(dtype=np.float64, na_value=np.nan)
        features.append(numeric_drift(name, values, entry, reference_rows, th))
    for name, entry in profile.get("categorical", {}).items():
        features.append(categorical_drift(name, frame[name].tolist(), entry, th))
    pred = None
    if probabilities is not None and len(probabilities) and "prediction" in profile:
        pred = prediction_drift(np.asarray(probabilities, dtype=np.float64), profile["prediction"], reference_rows, th)
    return DriftSummary(rows=len(frame), features=features, prediction=pred, thresholds=th, insufficient=len(frame) < th.min_rows)
