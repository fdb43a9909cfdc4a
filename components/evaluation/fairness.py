"""The bias audit: how the model's decisions fall on each group of each sensitive attribute of the spec.

Per attribute (the spec's `sensitive`) and group: rows, the base rate (share of positives) in the training data
and in the test data, and at the decision threshold the selection rate, TPR and FPR; per attribute the
demographic-parity difference (largest gap in selection rate between groups) and the equalized-odds difference
(the larger of the largest TPR gap and the largest FPR gap). The rates and differences are fairlearn's
(MetricFrame, demographic_parity_difference, equalized_odds_difference), not written again here.

Small groups are reported, never gated: a group under `min_group_rows` test rows has rates too noisy to fail a
model on, so the differences are taken over the larger groups only. A group whose test rows hold one class only
has no TPR (no positives) or no FPR (no negatives): fairlearn would count that as a rate of 0, so such a group
is left out of the equalized-odds difference (and said so) rather than deciding it.
Missing attribute values form their own group, "(missing)": people with no recorded value are people too.

Pure functions: frames and scores in, a JSON-ready dict out; `bias_checks` turns it into gate checks and
`bias_section_html` into a report fragment (the evaluate step wires both).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from components.core.report_style import Html, join, table, tag

MISSING = "(missing)"
LABEL = "label"
BOUNDS = ("demographic_parity_difference", "equalized_odds_difference")


def _groups(values: pd.Series) -> np.ndarray:
    """Group names as text; a missing value is its own group."""
    text = values.astype(object).where(values.notna(), MISSING)
    return np.asarray([str(v) for v in text], dtype=object)


def _base_rate(y_true: Any, y_pred: Any) -> float:
    return float(np.mean(y_true)) if len(y_true) else math.nan


def _number(value: Any) -> float | None:
    """A JSON-ready number: NaN and missing become None."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _audit_attribute(
    attribute: str, y: np.ndarray, decided: np.ndarray, groups: np.ndarray, train: pd.DataFrame, label: str, min_group_rows: int
) -> dict[str, Any]:
    from fairlearn.metrics import (
        MetricFrame,
        count,
        demographic_parity_difference,
        equalized_odds_difference,
        false_positive_rate,
        selection_rate,
        true_positive_rate,
    )

    frame = MetricFrame(
        metrics={
            "rows": count,
            "base_rate_test": _base_rate,
            "selection_rate": selection_rate,
            "tpr": true_positive_rate,
            "fpr": false_positive_rate,
        },
        y_true=y,
        y_pred=decided,
        sensitive_features=pd.Series(groups, name=attribute),
    )
    by_group = frame.by_group
    positives = pd.Series(y, dtype=float).groupby(groups).sum()
    train_groups = _groups(train[attribute]) if attribute in train.columns else np.asarray([], dtype=object)
    train_y = train[label].to_numpy(dtype=float) if attribute in train.columns else np.asarray([], dtype=float)
    train_rows = pd.Series(train_y).groupby(train_groups).size() if len(train_y) else pd.Series(dtype=int)
    train_rate = pd.Series(train_y).groupby(train_groups).mean() if len(train_y) else pd.Series(dtype=float)

    rows_out: list[dict[str, Any]] = []
    for group in sorted(set(by_group.index) | set(train_rows.index), key=str):
        in_test = group in by_group.index
        n = int(by_group.loc[group, "rows"]) if in_test else 0
        pos = int(positives.get(group, 0))
        rows_out.append(
            {
                "group": str(group),
                "rows": n,
                "positives": pos,
                "train_rows": int(train_rows.get(group, 0)),
                "base_rate_train": _number(train_rate.get(group)),
                "base_rate_test": _number(by_group.loc[group, "base_rate_test"]) if in_test else None,
                "selection_rate": _number(by_group.loc[group, "selection_rate"]) if in_test else None,
                # undefined without positives (TPR) or negatives (FPR): None, not fairlearn's 0
                "tpr": _number(by_group.loc[group, "tpr"]) if in_test and pos > 0 else None,
                "fpr": _number(by_group.loc[group, "fpr"]) if in_test and n - pos > 0 else None,
                "gated": n >= min_group_rows,
            }
        )

    gated = [str(r["group"]) for r in rows_out if r["gated"]]
    odds = [str(r["group"]) for r in rows_out if r["gated"] and r["tpr"] is not None and r["fpr"] is not None]
    in_gated, in_odds = np.isin(groups, gated), np.isin(groups, odds)
    dpd = demographic_parity_difference(y[in_gated], decided[in_gated], sensitive_features=groups[in_gated]) if len(gated) >= 2 else None
    eod = equalized_odds_difference(y[in_odds], decided[in_odds], sensitive_features=groups[in_odds]) if len(odds) >= 2 else None
    notes = []
    if len(gated) < 2:
        notes.append(f"{len(gated)} group(s) with at least {min_group_rows} test rows: the differences are not judged")
    one_class = sorted(set(gated) - set(odds))
    if one_class and eod is not None:
        notes.append(f"left out of the equalized-odds difference (one class only in the test rows): {', '.join(one_class)}")
    if attribute not in train.columns:
        notes.append(f"the training data has no column {attribute!r}: no training base rates")
    return {
        "groups": rows_out,
        "gated_groups": gated,
        "demographic_parity_difference": _number(dpd),
        "equalized_odds_difference": _number(eod),
        "notes": notes,
    }


def bias_audit(
    frame_test: pd.DataFrame,
    scores: Sequence[float] | np.ndarray,
    threshold: float,
    sensitive: Sequence[str],
    train_frame: pd.DataFrame,
    min_group_rows: int = 200,
    label: str = LABEL,
) -> dict[str, Any]:
    """The audit of `scores` (calibrated probabilities of the test rows, decided at `threshold`) for each
    attribute in `sensitive`; `train_frame` gives the training base rates. A JSON-ready dict (see the module)."""
    scores = np.asarray(scores, dtype=float)
    if len(scores) != len(frame_test):
        raise ValueError(f"bias audit: {len(scores)} scores for {len(frame_test)} test rows")
    if min_group_rows < 1:
        raise ValueError(f"bias audit: min_group_rows must be at least 1, got {min_group_rows}")
    missing = [a for a in sensitive if a not in frame_test.columns]
    if missing:
        raise ValueError(f"bias audit: the test rows lack the sensitive attribute(s) {missing}; they have {list(frame_test.columns)[:20]}")
    if label not in frame_test.columns:
        raise ValueError(f"bias audit: the test rows have no {label!r} column")
    y = frame_test[label].to_numpy(dtype=int)
    decided = (scores >= threshold).astype(int)
    return {
        "threshold": float(threshold),
        "min_group_rows": int(min_group_rows),
        "rows": len(frame_test),
        "attributes": {
            a: _audit_attribute(a, y, decided, _groups(frame_test[a].reset_index(drop=True)), train_frame, label, min_group_rows)
            for a in sensitive
        },
    }


def bias_checks(audit: Mapping[str, Any], bounds: Mapping[str, float]) -> list[tuple[str, bool, float | None, float, str]]:
    """Gate checks (name, passed, value, limit, detail), one per attribute and bounded difference.
    A difference that could not be judged (fewer than two large-enough groups) passes, and says why."""
    unknown = sorted(set(bounds) - set(BOUNDS))
    if unknown:
        raise ValueError(f"bias bounds: unknown metric(s) {unknown}; known: {list(BOUNDS)}")
    checks: list[tuple[str, bool, float | None, float, str]] = []
    for attribute, result in audit.get("attributes", {}).items():
        for metric, limit in bounds.items():
            value = result.get(metric)
            name = f"{metric}[{attribute}]"
            gated = len(result.get("gated_groups", []))
            if value is None:
                detail = f"not judged: {gated} group(s) of at least {audit.get('min_group_rows')} test rows (with both classes)"
                checks.append((name, True, None, float(limit), detail))
                continue
            detail = f"over {gated} group(s) of at least {audit.get('min_group_rows')} test rows; smaller groups reported, not gated"
            checks.append((name, bool(value <= limit), float(value), float(limit), detail))
    return checks


def _rate(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}"


GROUP_COLUMNS = (
    ("rows", "test rows"),
    ("train_rows", "training rows"),
    ("base_rate_train", "base rate (training)"),
    ("base_rate_test", "base rate (test)"),
    ("selection_rate", "selection rate"),
    ("tpr", "TPR"),
    ("fpr", "FPR"),
)


def bias_section_html(audit: Mapping[str, Any], checks: Sequence[tuple[str, bool, float | None, float, str]] = ()) -> str:
    """The bias audit as an HTML fragment for the evaluation report (same escaping and style; `checks` from
    `bias_checks` mark the differences that failed their bound)."""
    attributes = audit.get("attributes", {})
    if not attributes:
        return tag("p", "The dataset spec names no sensitive attribute: no bias audit.")
    failed = {name for name, passed, *_ in checks if not passed}
    parts = [
        tag(
            "p",
            f"Decisions at the threshold {audit['threshold']:.4f}. Groups under {audit['min_group_rows']:,} test rows are "
            "reported, not gated. Demographic-parity difference: the largest gap in selection rate between groups; "
            "equalized-odds difference: the larger of the largest TPR gap and the largest FPR gap.",
            "note",
        )
    ]
    for attribute, result in attributes.items():
        groups = result["groups"]
        body = [
            [
                r["group"],
                *[f"{r[k]:,d}" if k in ("rows", "train_rows") else _rate(r[k]) for k, _ in GROUP_COLUMNS],
                "yes" if r["gated"] else "no (too small)",
            ]
            for r in groups
        ]
        part = table(
            ["group", *[label for _, label in GROUP_COLUMNS], "gated"],
            body,
            ["" if r["gated"] else "muted" for r in groups],
            numeric=range(1, len(GROUP_COLUMNS) + 1),
        )
        summary = []
        for metric in BOUNDS:
            value = result.get(metric)
            text = f"{metric.replace('_', ' ')}: {'not judged' if value is None else f'{value:.4f}'}"
            name = f"{metric}[{attribute}]"
            summary.append(tag("b", text + " (over its bound)") if name in failed else text)
        summary += list(result.get("notes", []))
        parts.append(Html(tag("h3", f"By {attribute}") + part + tag("ul", join(tag("li", s) for s in summary))))
    return join(parts)
