"""The model card written into every bundle at training time (the evaluate step adds its verdict)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from components.core.spec import DatasetSpec


def _calibration(result: Any) -> str:
    c = getattr(result, "calibration", None) or {}
    if not c:
        return "calibration not recorded"
    return (
        f"{c['method']} map fitted on the latest {c['rows']} training rows, {c['from']} to {c['to']}, never trained "
        f"on; ECE there {c['ece_before']:.4f} before, {c['ece_after']:.4f} after"
    )


def _objective(result: Any) -> str:
    objective = (getattr(result, "calibration", None) or {}).get("objective", "f1")
    if objective == "f1":
        return "best F1"
    return "lowest expected cost per row, costs " + ", ".join(f"{k} {v:g}" for k, v in objective.items())


def _governance(spec: DatasetSpec) -> str:
    """Sensitive attributes and personal columns, by name only: a card never holds a personal value."""
    from components.core.privacy import describe

    audited = (
        f"- Audited for bias by: {', '.join(spec.sensitive)}"
        + (f" ({', '.join(spec.audit_only)} for the audit only, not model inputs)" if spec.audit_only else "")
        + "; per-group rates and the gate's bounds are in the evaluation report."
        if spec.sensitive
        else "- No sensitive attribute declared: no bias audit."
    )
    personal = describe(spec)
    lines = [audited, *(f"- Personal data: {p}." for p in personal)] if personal else [audited, "- No column marked personal."]
    return "\n".join(lines)


def model_card(spec: DatasetSpec, name: str, lineage: dict[str, Any], result: Any, train: pd.DataFrame) -> str:
    positives = int(train["label"].sum())
    return f"""# Model card: {name}

## Intended use
Scores `{spec.name}` records: the probability that `{spec.label}` is `{spec.positive}`. {spec.description}
Scores are calibrated probabilities ({_calibration(result)}).
Decisions use the threshold {result.threshold:.4f} ({_objective(result)}, chosen on calibrated scores of the calibration tail).
Not for use on populations or time periods unlike the training data without re-evaluation.

## Data
- Training rows: {len(train)} ({positives} positive, {positives / max(len(train), 1):.2%}),
  from {train["event_timestamp"].min()} to {train["event_timestamp"].max()}.
- Features ({len(spec.feature_names)}): {", ".join(spec.feature_names)}; FeatureService `{lineage["feature_service"]}`.
- Dataset fingerprint: `{lineage["dataset_fingerprint"] or "n/a"}`.

## Fairness and personal data
{_governance(spec)}

## Training
- Tabular network (signed-log + standardised numerics, embeddings for categoricals, MLP), on {result.device}.
- Best epoch {result.best_epoch}; validation ROC-AUC {result.validation_auc:.4f}.
- Code version `{lineage["code_version"]}`.

## Evaluation
Test-period metrics, slices and the gate's verdict are in the evaluation report of the pipeline run
and in the MLflow run of this version.

## Limitations
Categories unseen in training share one slot; rows with missing numerics are imputed with training means.
"""
