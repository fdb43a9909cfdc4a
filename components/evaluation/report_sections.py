"""Sections of the evaluation report that come from the candidates and governance work: the candidates table and
the bias audit. Kept apart from report.py so each module stays one screenful of concerns."""

from __future__ import annotations

import math
from typing import Any

from components.core.report_style import Html, table, tag
from components.evaluation.evaluate import Evaluation


def _fmt(value: Any, pattern: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return pattern.format(value)


def candidates_section(ev: Evaluation) -> Html:
    """Every candidate of the run: its metrics, the CI of the best's lead over it, its cost and its outcome."""
    if not ev.candidates:
        return Html("")
    rows = [
        [
            r["family"],
            r["version"] or "-",
            _fmt(r.get("roc_auc"), "{:.4f}"),
            "-" if r["ci_vs_best"][0] != r["ci_vs_best"][0] else f"[{r['ci_vs_best'][0]:+.4f}, {r['ci_vs_best'][1]:+.4f}]",
            _fmt(r.get("brier"), "{:.4f}"),
            _fmt(r.get("ece"), "{:.4f}"),
            _fmt(r.get("latency_p99_ms"), "{:.3f}"),
            f"{r['size_bytes']:,}",
            tag("b", r["status"]) if r["chosen"] else r["status"],
        ]
        for r in ev.candidates
    ]
    header = ["family", "version", "ROC-AUC", "95% CI of best minus it", "Brier", "ECE", "p99 ms", "program bytes", "outcome"]
    return Html(
        tag("h2", "Candidates")
        + tag("p", f"Chosen: {ev.selection}.")
        + table(header, rows, ["" if r["passed"] else "fail" for r in ev.candidates], numeric=range(2, 8))
    )


def bias_section(ev: Evaluation) -> Html:
    """The bias audit with the policy's bounds marked (components/evaluation/fairness.py renders it)."""
    from components.evaluation.fairness import bias_section_html

    if not ev.fairness:
        return tag("p", "The dataset spec names no sensitive attribute present in the test rows: no bias audit.")
    checks = [
        (c.name.removeprefix("bias."), c.passed, c.value, float(c.limit or 0), c.message) for c in ev.checks if c.name.startswith("bias.")
    ]
    return Html(bias_section_html(ev.fairness, checks))
