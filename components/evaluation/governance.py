"""What the gate adds for governance: the bias audit as gate checks, and the chosen model's global attributions.

The bias audit (components/evaluation/fairness.py, fairlearn's rates) runs for every candidate on the spec's
sensitive attributes, so a policy bound on the demographic-parity or equalized-odds difference refuses a candidate
like any other check. Global attributions come from the method the model server's `:explain` uses
(components/core/explain.py): the report's global picture and a single explanation agree. They cost ~200 program
calls per row and feature, so only the chosen candidate is explained, on a sample of the test rows.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from components.core import bundle as bundle_lib
from components.evaluation.evaluate import Check, Evaluation

log = logging.getLogger(__name__)

ATTRIBUTION_ROWS = 200  # test rows explained for the global picture (mean |attribution| settles well before)


def add_bias_audit(
    ev: Evaluation, test: pd.DataFrame, scores: np.ndarray, threshold: float, train: pd.DataFrame | None, sensitive: Sequence[str]
) -> None:
    """Audit `scores` on the sensitive attributes present in `test`; append one gate check per policy bound."""
    from components.evaluation.fairness import bias_audit, bias_checks

    present = [a for a in sensitive if a in test.columns]
    absent = [a for a in sensitive if a not in test.columns]
    if absent:
        ev.notes.append(f"bias audit: the test rows do not carry the sensitive attribute(s) {absent}, so they were not audited")
    if not present:
        return
    reference = train if train is not None and all(a in train.columns for a in present) else test
    ev.fairness = bias_audit(test.reset_index(drop=True), scores, threshold, present, reference, ev.policy.fairness_min_rows)
    for name, ok, value, limit, detail in bias_checks(ev.fairness, ev.policy.fairness_bounds):
        shown = "not judged" if value is None else f"{value:.4f}"
        verb = "within" if ok else "above"
        ev.checks.append(Check(f"bias.{name}", ok, value, limit, f"{name} {shown} {verb} the maximum {limit:.4f} ({detail})"))


def add_attributions(ev: Evaluation, bundle_dir: str, test: pd.DataFrame, rows: int = ATTRIBUTION_ROWS) -> None:
    """Mean |attribution| per feature of the chosen bundle on up to `rows` test rows (or a note saying why not)."""
    from components.core.explain import ExplainError, global_importance

    bundle = bundle_lib.load(bundle_dir)
    try:
        ev.attributions = global_importance(bundle, bundle_lib.columns_from_frame(test, bundle.feature_names), max_rows=rows)
    except (bundle_lib.BundleError, ExplainError) as err:  # an older bundle has no background sample
        ev.notes.append(f"no global attributions: {err}")


def summary_lines(ev: Evaluation) -> list[str]:
    """The model card's lines on the bias audit: each attribute's differences and the largest groups' rates."""
    audit: dict[str, Any] = ev.fairness or {}
    lines = []
    for attribute, result in audit.get("attributes", {}).items():
        dp, eo = result.get("demographic_parity_difference"), result.get("equalized_odds_difference")
        shown = ", ".join(
            f"{label} {value:.3f}" if value is not None else f"{label} not judged"
            for label, value in (("demographic-parity difference", dp), ("equalized-odds difference", eo))
        )
        lines.append(f"- {attribute}: {shown} (groups of at least {audit.get('min_group_rows')} test rows)")
    return lines
