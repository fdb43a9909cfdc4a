"""What the evaluate step adds for governance after choosing: the chosen model's global attributions, and the
model card's lines on the bias audit (which evaluate.py runs for every candidate as gate checks). Global attributions come from the method the model server's `:explain` uses
(components/core/explain.py): the report's global picture and a single explanation agree. They cost ~200 program
calls per row and feature, so only the chosen candidate is explained, on a sample of the test rows.
"""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from components.core import bundle as bundle_lib
from components.evaluation.evaluate import Evaluation

log = logging.getLogger(__name__)

ATTRIBUTION_ROWS = 200  # test rows explained for the global picture (mean |attribution| settles well before)


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
