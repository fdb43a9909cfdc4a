"""The gate's verdict in words: the evaluate step's Markdown output and the registered version's description.

The Kubeflow UI shows a run green as long as no step failed, and a failed gate is not a failed step (the
pipeline skips deploy on purpose). So the verdict is written out where a person looks: a Markdown
artifact of the evaluate step (PASS or FAIL, each check with its value, limit and reason, the key test
metrics) and, shorter, the description of the version in the MLflow registry.
"""

from __future__ import annotations

import math
from typing import Any

# The metrics a reader compares first, in this order, with how the report names them.
KEY_METRICS = (
    ("roc_auc", "ROC-AUC"),
    ("pr_auc", "PR-AUC"),
    ("f1", "F1"),
    ("precision", "Precision"),
    ("recall", "Recall"),
    ("ece", "Calibration error (ECE)"),
    ("latency_p99_ms", "p99 latency, ms per row"),
)


def _number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "n/a"
    if not math.isfinite(value):
        return "n/a"
    return f"{value:.4f}" if abs(value) < 1000 else f"{value:.0f}"


def _cell(text: Any) -> str:
    """A Markdown table cell: a pipe or a line break in a message would break the table."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def verdict_word(passed: bool) -> str:
    return "PASS" if passed else "FAIL"


def _policy_line(ev: Any) -> str:
    policy = ev.policy
    return f"`{policy.source}` v{policy.version} (sha256 {policy.fingerprint()[:16]})"


def _period(ev: Any) -> str:
    data = ev.data or {}
    if not data:
        return "n/a"
    return f"{data.get('rows', 'n/a')} rows ({data.get('positives', 'n/a')} positive), {data.get('from', 'n/a')} to {data.get('to', 'n/a')}"


def verdict_markdown(ev: Any, model_name: str, version: str, pipeline_run: str = "") -> str:
    """The evaluate step's `verdict` output: the decision first, then why, then the numbers behind it."""
    failed = [c for c in ev.checks if not c.passed]
    word = verdict_word(ev.passed)
    lines = [f"# Gate {word}: {model_name} v{version}", ""]
    if ev.passed:
        lines.append(f"All {len(ev.checks)} checks passed: the version is now `challenger` and the deploy step runs next.")
    else:
        lines.append(f"{len(failed)} of {len(ev.checks)} checks failed: the version is **not deployed** and no alias moved.")
        lines += ["", "## Why", ""]
        lines += [f"- {reason}" for reason in ev.reasons]
    lines += ["", f"Policy: {_policy_line(ev)}.", f"Test period: {_period(ev)}."]
    if pipeline_run:
        lines.append(f"Pipeline run: `{pipeline_run}`.")

    lines += ["", "## Checks", "", "| Result | Check | Value | Limit | Detail |", "|---|---|---|---|---|"]
    for check in sorted(ev.checks, key=lambda c: c.passed):  # failed checks first
        lines.append(
            f"| {verdict_word(check.passed)} | {_cell(check.name)} | {_number(check.value)} | {_number(check.limit)} | {_cell(check.message)} |"
        )

    columns = [("Candidate", ev.metrics)]
    champion = ev.champion or {}
    if champion.get("comparable", True) and "roc_auc" in champion:
        columns.append((f"Champion v{champion['version']}", champion))
    if ev.baseline:
        columns.append((f"Baseline ({ev.baseline.get('kind', 'baseline')})", ev.baseline))
    lines += [
        "",
        "## Test-period metrics",
        "",
        "| Metric | " + " | ".join(_cell(name) for name, _ in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for key, label in KEY_METRICS:
        lines.append(f"| {label} | " + " | ".join(_number(values.get(key)) for _, values in columns) + " |")

    if ev.notes:
        lines += ["", "## Not judged", ""] + [f"- {note}" for note in ev.notes]
    lines += [
        "",
        "The full evaluation (curves, slices, baseline, feature importance) is the step's `report`; "
        "every check is in the MLflow run's `evaluation/gate.json`.",
        "",
    ]
    return "\n".join(lines)


def evaluation_summary(ev: Any, pipeline_run: str = "") -> str:
    """The evaluation part of a registered version's description (MLflow renders it as Markdown)."""
    where = f", pipeline run `{pipeline_run}`" if pipeline_run else ""
    metrics = " · ".join(f"{label} {_number(ev.metrics.get(key))}" for key, label in KEY_METRICS)
    lines = [
        f"**Gate: {verdict_word(ev.passed)}** (policy {_policy_line(ev)}{where})",
        "",
        f"Test period: {_period(ev)}.",
        "",
        f"Test metrics: {metrics}.",
    ]
    if ev.reasons:
        lines += ["", "Failed checks:"] + [f"- {reason}" for reason in ev.reasons]
    else:
        lines += ["", f"All {len(ev.checks)} checks passed."]
    return "\n".join(lines)
