"""What the evaluate step shows people: the HTML report (Kubeflow UI, MLflow) and the model card's evaluation section.

Both read an `Evaluation` (components/evaluation/evaluate.py) and compute nothing new, so the report can never
disagree with the verdict. Plots are PNGs inlined in the HTML: the Kubeflow UI shows an HTML artifact
in a sandboxed frame that cannot fetch anything else.
"""

from __future__ import annotations

import base64
import io
import math
import re
from typing import Any

from components.core.report_style import Cell, Html, banner, code, count, join, key_values, page, table, tag
from components.evaluation.evaluate import Evaluation
from components.evaluation.report_sections import bias_section, candidates_section

# (key, label, format) of the rows of the comparison table; latency in ms, the rest as ratios.
COMPARED = (
    ("roc_auc", "ROC-AUC", "{:.4f}"),
    ("pr_auc", "PR-AUC (average precision)", "{:.4f}"),
    ("f1", "F1 at the threshold", "{:.4f}"),
    ("precision", "precision", "{:.4f}"),
    ("recall", "recall", "{:.4f}"),
    ("fpr", "false positive rate", "{:.4f}"),
    ("ece", "calibration error (ECE)", "{:.4f}"),
    ("brier", "Brier score", "{:.4f}"),
    ("latency_p50_ms", "per-row latency p50 (ms)", "{:.3f}"),
    ("latency_p99_ms", "per-row latency p99 (ms)", "{:.3f}"),
)
SLICE_COLUMNS = (
    ("rows", "rows", "{:,d}"),
    ("positives", "positives", "{:,d}"),
    ("roc_auc", "ROC-AUC", "{:.3f}"),
    ("pr_auc", "PR-AUC", "{:.3f}"),
    ("recall", "recall", "{:.3f}"),
    ("fpr", "FPR", "{:.3f}"),
    ("ece", "ECE", "{:.3f}"),
    ("mean_score", "mean score", "{:.3f}"),
)


def _fmt(value: Any, pattern: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return pattern.format(value)


def _models(ev: Evaluation) -> list[tuple[str, dict[str, Any]]]:
    """The columns of every comparison: this version, the champion (when comparable), the baseline."""
    out: list[tuple[str, dict[str, Any]]] = [("this version", ev.metrics)]
    if ev.champion and ev.champion.get("comparable"):
        out.append((f"champion v{ev.champion['version']}", ev.champion))
    if ev.baseline:
        out.append((f"baseline ({ev.baseline['kind']})", ev.baseline))
    return out


# --- HTML -----------------------------------------------------------------------------------------------


def _png(fig: Any) -> Html:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return Html(f'<img alt="" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">')


def _curves_png(ev: Evaluation) -> Html:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    named = [("this version", ev.curves), *ev.other_curves.items()]
    for i, (name, c) in enumerate(named):
        if not c:
            continue
        style = "-" if i == 0 else "--"
        axes[0].plot(c["roc"]["fpr"], c["roc"]["tpr"], style, label=name)
        axes[1].plot(c["pr"]["recall"], c["pr"]["precision"], style, label=name)
        axes[2].plot(c["calibration"]["predicted"], c["calibration"]["true"], "o" + style, label=name)
    axes[0].plot([0, 1], [0, 1], ":", color="grey")
    axes[0].set(title=f"ROC (this version: AUC {ev.metrics['roc_auc']:.3f})", xlabel="false positive rate", ylabel="true positive rate")
    axes[1].axhline(ev.metrics["positive_rate"], linestyle=":", color="grey", label="base rate")
    axes[1].set(title=f"Precision-recall (AP {ev.metrics['pr_auc']:.3f})", xlabel="recall", ylabel="precision")
    axes[2].plot([0, 1], [0, 1], ":", color="grey")
    axes[2].set(title=f"Calibration (ECE {ev.metrics['ece']:.3f})", xlabel="mean predicted probability", ylabel="observed positive rate")
    # This version's rows per score bin, as labelled bars behind the points: a point made of 12 rows says little.
    cal = ev.curves["calibration"]
    counts = axes[2].twinx()
    bars = counts.bar(
        [(lo + hi) / 2 for lo, hi in zip(cal["lower"], cal["upper"])],
        cal["rows"],
        width=[hi - lo for lo, hi in zip(cal["lower"], cal["upper"])],
        color="grey",
        alpha=0.18,
        edgecolor="grey",
    )
    counts.bar_label(bars, labels=[f"{n:,}" for n in cal["rows"]], fontsize=7, color="dimgrey")
    counts.set(ylabel="rows in the bin (this version, bars)", ylim=(0, max(cal["rows"]) * 1.8))
    axes[2].set_zorder(counts.get_zorder() + 1)  # the points and their legend over the bars
    axes[2].patch.set_visible(False)
    for ax in axes:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def _trade_png(ev: Evaluation) -> Html:
    """Accuracy against per-row latency: one point per model, the budget as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.8))
    others = [(f"{r['family']} v{r['version']}", r) for r in ev.candidates if not r["chosen"] and r.get("roc_auc") is not None]
    for name, m in [*_models(ev), *others]:
        if math.isfinite(m.get("roc_auc", float("nan"))):
            ax.scatter(m["latency_p99_ms"], m["roc_auc"], s=50)
            ax.annotate(name, (m["latency_p99_ms"], m["roc_auc"]), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.axvline(ev.policy.max_p99_latency_ms, linestyle=":", color="red", label="latency budget")
    ax.margins(x=0.6, y=0.3)  # room for the labels
    ax.set(xscale="log", xlabel="per-row p99 latency on this CPU (ms, log)", ylabel="ROC-AUC", title="Accuracy vs latency")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def _importance_png(ev: Evaluation) -> Html:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(reversed(ev.importance))
    fig, ax = plt.subplots(figsize=(5.5, 0.35 * len(rows) + 1.2))
    ax.barh([str(r["feature"]) for r in rows], [float(r["mean"]) for r in rows], xerr=[float(r["std"]) for r in rows])
    ax.set(xlabel="drop in ROC-AUC when shuffled", title="Permutation feature importance")
    fig.tight_layout()
    return _png(fig)


# One plain sentence per headline metric, for readers who do not use them every day. `{base}` is the
# test set's positive rate and `{threshold}` the decision threshold, so the sentence gives the reference point.
MEANING = {
    "roc_auc": "The chance that a random positive row scores above a random negative one: 0.5 is a coin flip, 1.0 a perfect ranking.",
    "pr_auc": "Precision averaged over every threshold, which weighs the rare positive class; random scores get the positive rate, {base:.4f} here.",
    "f1": "The harmonic mean of precision and recall at the threshold {threshold}: high only when both are.",
    "precision": "Of the rows called positive at the threshold, the share that really are positive.",
    "recall": "Of the positive rows, the share called positive at the threshold; the rest are missed.",
    "fpr": "Of the negative rows, the share wrongly called positive at the threshold (false alarms).",
    "ece": "The average gap between the score and the observed positive rate of rows scored alike (ten bins, weighted by rows): "
    "near 0 means a score can be read as a probability.",
    "brier": "The mean squared gap between the score and the outcome (0 or 1): 0 is perfect, and always scoring the "
    "positive rate gets {brier_ref:.4f} here.",
    "latency_p50_ms": "Half of all one-row predictions on this CPU took at most this long.",
    "latency_p99_ms": "99 in 100 one-row predictions on this CPU took at most this long.",
}


def _meaning(key: str, ev: Evaluation) -> str:
    base = float(ev.metrics.get("positive_rate", float("nan")))
    threshold = ev.curves.get("threshold")
    return MEANING.get(key, "").format(
        base=base, brier_ref=base * (1 - base), threshold=_fmt(threshold, "{:.4f}") if threshold is not None else ""
    )


def _confusion(ev: Evaluation) -> Html:
    """The decision threshold and the confusion matrix at it, labelled, with the rates it gives."""
    if not ev.curves:
        return tag("p", "No confusion matrix: the test period holds one class only.")
    (tn, fp), (fn, tp) = ev.curves["confusion"]

    def cell(n: int, name: str) -> Cell:
        return Cell(join([tag("b", count(n)), Html("<br>"), tag("small", name)]), "num")

    matrix = table(
        ["", "predicted positive", "predicted negative", "total"],
        [
            [
                Cell("actual positive", header=True),
                cell(tp, "true positives (TP)"),
                cell(fn, "false negatives (FN): missed"),
                count(tp + fn),
            ],
            [
                Cell("actual negative", header=True),
                cell(fp, "false positives (FP): false alarms"),
                cell(tn, "true negatives (TN)"),
                count(fp + tn),
            ],
            [Cell("total", header=True), count(tp + fp), count(fn + tn), count(tp + fp + fn + tn)],
        ],
        numeric=[1, 2, 3],
    )

    def ratio(a: int, b: int) -> str:
        return f"{a / b:.4f}" if b else "n/a"

    rates = tag(
        "p",
        f"From these counts: precision TP / (TP + FP) = {ratio(tp, tp + fp)}; recall TP / (TP + FN) = "
        f"{ratio(tp, tp + fn)}; false positive rate FP / (FP + TN) = {ratio(fp, fp + tn)}.",
        "note",
    )
    intro = tag(
        "p",
        join(
            [
                "The model calls a row positive when its score is at or above ",
                tag("b", _fmt(ev.curves.get("threshold"), "{:.4f}")),
                (
                    ", the decision threshold saved in the bundle at training; the service uses the same one. "
                    "At that threshold, on the test set:"
                ),
            ]
        ),
    )
    return Html(intro + matrix + rates)


def _calibration_table(ev: Evaluation) -> Html:
    c = ev.curves.get("calibration") or {}
    if not c.get("rows"):
        return Html("")
    rows = [
        [f"{lo:.1f} – {hi:.1f}", count(n), f"{pred:.4f}", f"{obs:.4f}", f"{pred - obs:+.4f}"]
        for lo, hi, n, pred, obs in zip(c["lower"], c["upper"], c["rows"], c["predicted"], c["true"])
    ]
    return Html(
        tag("p", "Calibration of this version per score bin (the points of the calibration plot; empty bins are left out):", "note")
        + table(["score bin", "rows", "mean score", "observed positive rate", "score − observed"], rows, numeric=[1, 2, 3, 4])
    )


def report_html(ev: Evaluation, model_name: str, version: str) -> str:
    verdict = "PASS" if ev.passed else "FAIL"
    reasons = tag("ul", join(tag("li", r) for r in ev.reasons)) if ev.reasons else tag("p", "Every check passed.")
    notes = Html(tag("p", "Not judged:") + tag("ul", join(tag("li", n) for n in ev.notes))) if ev.notes else ""
    check_table = table(
        ["check", "value", "limit", "result"],
        [[c.name, _fmt(c.value, "{:.4f}"), _fmt(c.limit, "{:.4f}"), "pass" if c.passed else tag("b", "FAIL")] for c in ev.checks],
        ["" if c.passed else "fail" for c in ev.checks],
        numeric=[1, 2],
    )
    models = _models(ev)
    compare = table(
        ["metric", *[n for n, _ in models], "what it means"],
        [[label, *[_fmt(m.get(key), fmt) for _, m in models], tag("small", _meaning(key, ev))] for key, label, fmt in COMPARED],
        numeric=range(1, len(models) + 1),
    )
    slices = []
    for attribute in ev.policy.slices.attributes:
        rows = [r for r in ev.slices if r["attribute"] == attribute]
        part = table(
            ["value", *[label for _, label, _ in SLICE_COLUMNS], "gated"],
            [[r["value"], *[_fmt(r[k], f) for k, _, f in SLICE_COLUMNS], "yes" if r["gated"] else "no (too small)"] for r in rows],
            ["" if r["gated"] else "muted" for r in rows],
            numeric=range(1, len(SLICE_COLUMNS) + 1),
        )
        gaps = [
            f"{g['metric']}: gap {g['gap']:.4f} ({g['best']} vs {g['worst']}), limit {g['limit']:.4f}"
            if "gap" in g
            else f"{g['metric']}: not judged ({g['slices']} slice(s) large enough)"
            for g in ev.slice_gaps
            if g["attribute"] == attribute
        ]
        slices.append(Html(tag("h3", f"By {attribute}") + part + tag("ul", join(tag("li", g) for g in gaps))))
    if not slices:
        slices = [tag("p", "The policy names no sensitive attribute: no bias audit.")]
    importance = tag("p", "Not computed.")
    if ev.importance:
        importance = Html(
            _importance_png(ev)
            + table(
                ["feature", "mean drop in ROC-AUC", "std"],
                [[r["feature"], f"{float(r['mean']):.4f}", f"{float(r['std']):.4f}"] for r in ev.importance],
                numeric=[1, 2],
            )
        )
    candidates = candidates_section(ev)
    policy = ev.policy
    champion_line = (
        tag("p", "No champion yet: judged on the absolute thresholds only.")
        if not ev.champion
        else tag("p", f"Champion v{ev.champion['version']} scored on this same test set.")
    )
    curves = Html(_curves_png(ev) + _calibration_table(ev)) if ev.curves else tag("p", "No curves: the test period holds one class only.")
    test_set = tag(
        "p",
        join(
            [
                (
                    f"Test set: {count(ev.data.get('rows', 0))} rows ({count(ev.data.get('positives', 0))} positive), "
                    f"{ev.data.get('from')} to {ev.data.get('to')}. Policy: "
                ),
                code(policy.source),
                f", version {policy.version}, sha256 ",
                code(policy.fingerprint()[:16]),
                ".",
            ]
        ),
    )
    return page(
        f"Evaluation {model_name} v{version}",
        banner(
            "pass" if ev.passed else "fail",
            f"{model_name} v{version}: gate {verdict}",
            [
                (
                    f"{sum(c.passed for c in ev.checks)} of {len(ev.checks)} checks passed on {count(ev.data.get('rows', 0))} "
                    f"held-out test rows; {'the model may be deployed' if ev.passed else 'the model is not deployed'}."
                )
            ],
        ),
        reasons,
        notes,
        test_set,
        candidates,
        tag("h2", "Checks" + (" (the chosen candidate)" if ev.candidates else "")),
        check_table,
        tag("h2", "Decision threshold and confusion matrix"),
        _confusion(ev),
        tag("h2", "This version, the champion and a baseline on the same test set"),
        champion_line,
        compare,
        _trade_png(ev),
        tag("h2", "Curves"),
        curves,
        tag("h2", "Bias audit"),
        bias_section(ev),
        tag("h2", "Slices"),
        tag(
            "p",
            f"Slices with fewer than {policy.slices.min_rows} rows or {policy.slices.min_positives} of either class "
            "are shown grey: reported, not gated.",
        ),
        *slices,
        tag("h2", "Feature importance"),
        importance,
        tag("h3", "Mean |attribution| (the method of the model server's :explain)"),
        table(["feature", "mean |attribution|"], [[k, f"{v:.5f}"] for k, v in ev.attributions.items()], numeric=[1])
        if ev.attributions
        else tag("p", "Not computed (see the notes)."),
        tag("h2", "Lineage"),
        key_values(ev.lineage),
        tag(
            "p",
            join(
                [
                    "Production readiness (written after deploy, in the same MLflow run): ",
                    tag("a", "readiness/readiness.html", href="../readiness/readiness.html"),
                ]
            ),
        ),
    )


# --- model card -----------------------------------------------------------------------------------------


def card_section(ev: Evaluation, model_name: str, version: str) -> str:
    """The model card's evaluation section (Markdown): verdict, metrics, slices, limitations, lineage."""
    verdict = "PASS" if ev.passed else "FAIL"
    models = _models(ev)
    lines = [
        f"## Evaluation (gate: {verdict})",
        "",
        f"{model_name} v{version} on the held-out latest period: {ev.data.get('rows', 0)} rows "
        f"({ev.data.get('positives', 0)} positive), {ev.data.get('from')} to {ev.data.get('to')}. "
        f"Gate policy `{ev.policy.source}` (version {ev.policy.version}, sha256 `{ev.policy.fingerprint()[:16]}`).",
        "",
        "| metric | " + " | ".join(n for n, _ in models) + " |",
        "|---|" + "---|" * len(models),
    ]
    lines += [f"| {label} | " + " | ".join(_fmt(m.get(key), fmt) for _, m in models) + " |" for key, label, fmt in COMPARED]
    lines += ["", "### Gate checks", ""]
    lines += [f"- {'pass' if c.passed else '**FAIL**'}: {c.message}" for c in ev.checks]
    if ev.slices:
        lines += [
            "",
            "### Slices",
            "",
            "| attribute | value | rows | positives | ROC-AUC | recall | FPR | gated |",
            "|---|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['attribute']} | {r['value']} | {r['rows']} | {r['positives']} | {_fmt(r['roc_auc'], '{:.3f}')} | "
            f"{_fmt(r['recall'], '{:.3f}')} | {_fmt(r['fpr'], '{:.3f}')} | {'yes' if r['gated'] else 'no'} |"
            for r in ev.slices
        ]
    if ev.fairness:
        from components.evaluation.governance import summary_lines

        lines += ["", "### Bias audit", "", *summary_lines(ev)]
    limits = list(ev.notes)
    if math.isfinite(ev.metrics.get("ece", float("nan"))) and ev.metrics["ece"] > 0.1:
        limits.append(
            f"scores are not calibrated probabilities (ECE {ev.metrics['ece']:.3f}): rank and threshold them, do not read them as rates"
        )
    if ev.importance:
        top = ", ".join(f"{r['feature']} ({float(r['mean']):.3f})" for r in ev.importance[:3])
        limits.append(f"relies most on {top} (drop in ROC-AUC when shuffled)")
    if limits:
        lines += ["", "### Limitations found in evaluation", "", *[f"- {n}" for n in limits]]
    lines += ["", "### Lineage", "", *[f"- {k}: `{v}`" for k, v in sorted(ev.lineage.items())], ""]
    return "\n".join(lines)


def full_card(training_card: str, ev: Evaluation, model_name: str, version: str) -> str:
    """The bundle's training-time card with its evaluation placeholder replaced by the measured section."""
    section = card_section(ev, model_name, version)
    placeholder = re.compile(r"^## Evaluation\n.*?(?=^## |\Z)", re.S | re.M)
    if placeholder.search(training_card):
        return placeholder.sub(lambda _: section + "\n", training_card, count=1).rstrip() + "\n"
    return training_card.rstrip() + "\n\n" + section
