"""Slices: the gate's metrics per group of a categorical attribute, and the gaps between groups.

The policy names the attributes and the bounds; groups smaller than the policy's minimum are reported, not gated.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from components.core.spec import EVENT_TIMESTAMP, LABEL
from components.evaluation.metrics import classification_metrics, finite
from components.evaluation.policy import HIGHER_IS_BETTER, SlicePolicy

MAX_SLICE_VALUES = 50  # a sliced attribute is a category; a column with more values is a mistake in the policy


def slice_table(test: pd.DataFrame, y: np.ndarray, p: np.ndarray, threshold: float, policy: SlicePolicy) -> list[dict[str, Any]]:
    """Metrics per value of each sensitive attribute; `gated` marks the slices large enough to judge."""
    rows: list[dict[str, Any]] = []
    for attribute in policy.attributes:
        if attribute not in test.columns:
            raise ValueError(
                f"slice attribute {attribute!r} named by the gate policy is not a column of the test set "
                f"(columns: {sorted(c for c in test.columns if c not in (LABEL, EVENT_TIMESTAMP))})"
            )
        values = test[attribute].astype(object).where(test[attribute].notna(), "<missing>").astype(str).to_numpy()
        distinct = sorted(set(values))
        if len(distinct) > MAX_SLICE_VALUES:
            raise ValueError(
                f"slice attribute {attribute!r} has {len(distinct)} distinct values (more than "
                f"{MAX_SLICE_VALUES}): slice by a categorical column"
            )
        for value in distinct:
            mask = values == value
            ys, ps = y[mask], p[mask]
            positives = int(ys.sum())
            negatives = int(len(ys) - positives)
            gated = len(ys) >= policy.min_rows and min(positives, negatives) >= policy.min_positives
            m = classification_metrics(ys, ps, threshold)
            rows.append(
                {
                    "attribute": attribute,
                    "value": value,
                    "rows": int(len(ys)),
                    "positives": positives,
                    "gated": gated,
                    **{k: m[k] for k in ("roc_auc", "pr_auc", "recall", "fpr", "f1", "ece", "mean_score")},
                }
            )
    return rows


def slice_gaps(table: list[dict[str, Any]], policy: SlicePolicy) -> list[dict[str, Any]]:
    """Per attribute and gated metric: best and worst slice among those large enough, and their gap."""
    gaps = []
    for attribute in policy.attributes:
        for metric, limit in policy.max_gap.items():
            judged = [r for r in table if r["attribute"] == attribute and r["gated"] and finite(r[metric])]
            entry: dict[str, Any] = {"attribute": attribute, "metric": metric, "limit": limit, "slices": len(judged)}
            if len(judged) >= 2:
                ordered = sorted(judged, key=lambda r: r[metric], reverse=metric in HIGHER_IS_BETTER)
                best, worst = ordered[0], ordered[-1]
                entry.update(
                    best=best["value"],
                    best_value=best[metric],
                    worst=worst["value"],
                    worst_value=worst[metric],
                    gap=abs(best[metric] - worst[metric]),
                )
            gaps.append(entry)
    return gaps
