"""What the evaluate step shows people: the HTML report (Kubeflow UI, MLflow) and the model card's evaluation section.

Both read an `Evaluation` (components/evaluate.py) and compute nothing new, so the report can never
disagree with the verdict. Plots are PNGs inlined in the HTML: the Kubeflow UI shows an HTML artifact
in a sandboxed frame that cannot fetch anything else.
"""

from __future__ import annotations

import base64
import html
import io
import math
import re
from typing import Any

from components.evaluate import Evaluation

# (key, label, format) of the rows of the comparison table; latency in ms, the rest as ratios.
COMPARED = (
    ("roc_auc", "ROC-AUC", "{:.4f}"), ("pr_auc", "PR-AUC (average precision)", "{:.4f}"), ("f1", "F1 at the threshold", "{:.4f}"),
    ("precision", "precision", "{:.4f}"), ("recall", "recall", "{:.4f}"), ("fpr", "false positive rate", "{:.4f}"),
    ("ece", "calibration error (ECE)", "{:.4f}"), ("brier", "Brier score", "{:.4f}"),
    ("latency_p50_ms", "per-row latency p50 (ms)", "{:.3f}"), ("latency_p99_ms", "per-row latency p99 (ms)", "{:.3f}"),
)
SLICE_COLUMNS = (("rows", "rows", "{:d}"), ("positives", "positives", "{:d}"), ("roc_auc", "ROC-AUC", "{:.3f}"),
                 ("pr_auc", "PR-AUC", "{:.3f}"), ("recall", "recall", "{:.3f}"), ("fpr", "FPR", "{:.3f}"),
                 ("ece", "ECE", "{:.3f}"), ("mean_score", "mean score", "{:.3f}"))


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

def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return f'<img alt="" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _curves_png(ev: Evaluation) -> str:
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
    for ax in axes:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def _trade_png(ev: Evaluation) -> str:
    """Accuracy against per-row latency: one point per model, the budget as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.8))
    for name, m in _models(ev):
        if math.isfinite(m.get("roc_auc", float("nan"))):
            ax.scatter(m["latency_p99_ms"], m["roc_auc"], s=50)
            ax.annotate(name, (m["latency_p99_ms"], m["roc_auc"]), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.axvline(ev.policy.max_p99_latency_ms, linestyle=":", color="red", label="latency budget")
    ax.margins(x=0.6, y=0.3)  # room for the labels
    ax.set(xscale="log", xlabel="per-row p99 latency on this CPU (ms, log)", ylabel="ROC-AUC", title="Accuracy vs latency")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def _importance_png(ev: Evaluation) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(reversed(ev.importance))
    fig, ax = plt.subplots(figsize=(5.5, 0.35 * len(rows) + 1.2))
    ax.barh([str(r["feature"]) for r in rows], [float(r["mean"]) for r in rows], xerr=[float(r["std"]) for r in rows])
    ax.set(xlabel="drop in ROC-AUC when shuffled", title="Permutation feature importance")
    fig.tight_layout()
    return _png(fig)


def _table(header: list[str], rows: list[list[str]], classes: list[str] | None = None) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        f"<tr class='{(classes or [''] * len(rows))[i]}'>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>"
        for i, row in enumerate(rows)
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def report_html(ev: Evaluation, model_name: str, version: str) -> str:
    verdict = "PASS" if ev.passed else "FAIL"
    e = html.escape
    reasons = "".join(f"<li>{e(r)}</li>" for r in ev.reasons) or "<li>every check passed</li>"
    notes = "".join(f"<li>{e(n)}</li>" for n in ev.notes)
    check_rows = [[e(c.name), _fmt(c.value, "{:.4f}"), _fmt(c.limit, "{:.4f}"), "pass" if c.passed else "<b>FAIL</b>"] for c in ev.checks]
    models = _models(ev)
    compare = _table(["metric", *[n for n, _ in models]],
                     [[label, *[_fmt(m.get(key), fmt) for _, m in models]] for key, label, fmt in COMPARED])
    slices = ""
    for attribute in ev.policy.slices.attributes:
        rows = [r for r in ev.slices if r["attribute"] == attribute]
        table = _table(["value", *[label for _, label, _ in SLICE_COLUMNS], "gated"],
                       [[e(r["value"]), *[_fmt(r[k], f) for k, _, f in SLICE_COLUMNS], "yes" if r["gated"] else "no (too small)"] for r in rows],
                       ["" if r["gated"] else "small" for r in rows])
        gaps = "".join(
            f"<li>{e(g['metric'])}: gap {g['gap']:.4f} ({e(str(g['best']))} vs {e(str(g['worst']))}), limit {g['limit']:.4f}</li>"
            if "gap" in g else f"<li>{e(g['metric'])}: not judged ({g['slices']} slice(s) large enough)</li>"
            for g in ev.slice_gaps if g["attribute"] == attribute
        )
        slices += f"<h3>By {e(attribute)}</h3>{table}<ul>{gaps}</ul>"
    if not slices:
        slices = "<p>The policy names no sensitive attribute: no bias audit.</p>"
    importance = ""
    if ev.importance:
        importance = _importance_png(ev) + _table(
            ["feature", "mean drop in ROC-AUC", "std"],
            [[e(str(r["feature"])), f"{float(r['mean']):.4f}", f"{float(r['std']):.4f}"] for r in ev.importance])
    policy = ev.policy
    lineage = "".join(f"<tr><td>{e(str(k))}</td><td><code>{e(str(v))}</code></td></tr>" for k, v in sorted(ev.lineage.items()))
    champion_line = ("<p>No champion yet: judged on the absolute thresholds only.</p>" if not ev.champion
                     else f"<p>Champion v{e(ev.champion['version'])} scored on this same test set.</p>")
    curves = _curves_png(ev) if ev.curves else "<p>No curves: the test period holds one class only.</p>"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Evaluation {e(model_name)} v{e(version)}</title>
<style>
body{{font-family:system-ui,sans-serif;margin:1.5em;max-width:1200px;color:#222}}
table{{border-collapse:collapse;margin:.5em 0}} td,th{{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:right}}
td:first-child,th:first-child{{text-align:left}} tr.small td{{color:#888}} code{{font-size:12px}}
.verdict{{padding:.6em 1em;border-radius:6px;color:#fff;background:{'#2e7d32' if ev.passed else '#c62828'}}}
</style></head><body>
<h1 class="verdict">{e(model_name)} v{e(version)}: gate {verdict}</h1>
<ul>{reasons}</ul>{f'<p>Not judged:</p><ul>{notes}</ul>' if notes else ''}
<p>Test set: {ev.data.get('rows', 0)} rows ({ev.data.get('positives', 0)} positive), {e(str(ev.data.get('from')))} to {e(str(ev.data.get('to')))}.
Policy: <code>{e(policy.source)}</code>, version {policy.version}, sha256 <code>{policy.fingerprint()[:16]}</code>.</p>
<h2>Checks</h2>{_table(["check", "value", "limit", "result"], check_rows)}
<h2>This version, the champion and a baseline on the same test set</h2>{champion_line}{compare}{_trade_png(ev)}
<h2>Curves</h2>{curves}
<h2>Slices (bias audit)</h2>
<p>Slices with fewer than {policy.slices.min_rows} rows or {policy.slices.min_positives} of either class are shown grey: reported, not gated.</p>{slices}
<h2>Feature importance</h2>{importance or '<p>Not computed.</p>'}
<h2>Lineage</h2><table>{lineage}</table>
</body></html>"""


# --- model card -----------------------------------------------------------------------------------------

def card_section(ev: Evaluation, model_name: str, version: str) -> str:
    """The model card's evaluation section (Markdown): verdict, metrics, slices, limitations, lineage."""
    verdict = "PASS" if ev.passed else "FAIL"
    models = _models(ev)
    lines = [f"## Evaluation (gate: {verdict})", "",
             f"{model_name} v{version} on the held-out latest period: {ev.data.get('rows', 0)} rows "
             f"({ev.data.get('positives', 0)} positive), {ev.data.get('from')} to {ev.data.get('to')}. "
             f"Gate policy `{ev.policy.source}` (version {ev.policy.version}, sha256 `{ev.policy.fingerprint()[:16]}`).", "",
             "| metric | " + " | ".join(n for n, _ in models) + " |", "|---|" + "---|" * len(models)]
    lines += [f"| {label} | " + " | ".join(_fmt(m.get(key), fmt) for _, m in models) + " |" for key, label, fmt in COMPARED]
    lines += ["", "### Gate checks", ""]
    lines += [f"- {'pass' if c.passed else '**FAIL**'}: {c.message}" for c in ev.checks]
    if ev.slices:
        lines += ["", "### Slices", "", "| attribute | value | rows | positives | ROC-AUC | recall | FPR | gated |", "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['attribute']} | {r['value']} | {r['rows']} | {r['positives']} | {_fmt(r['roc_auc'], '{:.3f}')} | "
                  f"{_fmt(r['recall'], '{:.3f}')} | {_fmt(r['fpr'], '{:.3f}')} | {'yes' if r['gated'] else 'no'} |" for r in ev.slices]
    limits = list(ev.notes)
    if math.isfinite(ev.metrics.get("ece", float("nan"))) and ev.metrics["ece"] > 0.1:
        limits.append(f"scores are not calibrated probabilities (ECE {ev.metrics['ece']:.3f}): rank and threshold them, do not read them as rates")
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
