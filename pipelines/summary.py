"""What `mlwf` prints: one line for an error, and the console of a run as a person reads it (a line per
step with its key result, then a short summary: gate verdict, reports, quarantine, MLflow, serving)."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any


def fail(message: str) -> int:
    print(f"mlwf: error: {message}", file=sys.stderr)
    return 2


# --- the local run as a person reads it: a line per step, then a short summary ---------------------------


def _count(value: Any) -> str:
    try:
        return f"{int(float(value)):,}"
    except (TypeError, ValueError):
        return "?"


def describe_step(max_epochs: int | None) -> Any:
    """The key result of each training-pipeline step, read from what the step recorded (its outputs and
    artifact metadata in executor_output.json): a few words for its progress line."""
    from pipelines.local import artifact_metadata, task_output

    def describe(task: str, where: Path | None) -> str:
        if where is None:  # the step did not run
            return "the gate did not pass" if task in ("deploy-op", "readiness-op") else ""
        if task == "ingest-op":
            raw = artifact_metadata(where, "raw")
            files = int(raw.get("files", 0))
            return (
                f"{_count(raw.get('rows'))} rows from {files} file{'s' if files != 1 else ''} ({raw.get('new_files', '?')} new), "
                f"dataset version {str(raw.get('dataset_fingerprint', '?'))[:12]}"
            )
        if task == "validate-op":
            m = artifact_metadata(where, "metrics")
            return f"{_count(m.get('valid'))} valid, {_count(m.get('quarantined'))} quarantined ({float(m.get('bad_fraction', 0)):.1%})"
        if task == "features-op":
            parts = []
            for name in ("train", "test"):
                m = artifact_metadata(where, f"{name}_set")
                parts.append(f"{name} {_count(m.get('rows'))} rows {str(m.get('from', '?'))[:10]} .. {str(m.get('to', '?'))[:10]}")
            return ", ".join(parts)
        if task == "train-op":
            m = artifact_metadata(where, "model")
            if m.get("reused"):  # found by its inputs' fingerprint: nothing was trained, so no epochs to show
                return f"v{m.get('version', '?')} reused: the same data, parameters and code trained it before"
            auc = f"validation ROC-AUC {float(m['val_roc_auc']):.3f}" if "val_roc_auc" in m else "no validation ROC-AUC"
            ran = int(float(m.get("epochs", 0)))
            if max_epochs and ran < max_epochs:
                epochs = f"stopped early after {ran} of at most {max_epochs} epochs"
            else:
                epochs = f"{ran} epochs (the maximum)" if max_epochs else f"{ran} epochs"
            if m.get("candidates"):  # several families: the evaluate step chooses among them
                return f"candidates {m['candidates']}; network {epochs}, {auc}"
            return f"v{m.get('version', '?')}: {epochs}, {auc}, on {m.get('device', '?')}"
        if task == "evaluate-op":
            m = artifact_metadata(where, "metrics")
            passed = task_output(where, "Output")
            chosen = artifact_metadata(where, "chosen")
            picked = f"{chosen['family']} v{chosen['version']} chosen, " if chosen.get("family") else ""
            text = f"gate {'PASSED' if passed else 'FAILED'}: {picked}ROC-AUC {float(m.get('roc_auc', float('nan'))):.3f}"
            if "baseline.roc_auc" in m:
                text += f" (baseline {float(m['baseline.roc_auc']):.3f}"
                text += f", champion {float(m['champion.roc_auc']):.3f})" if "champion.roc_auc" in m else ")"
            return text
        if task == "deploy-op":
            m = artifact_metadata(where, "deployment")
            return f"v{m.get('version', '?')} serving at {m.get('url', '?')}"
        if task == "readiness-op":
            m = artifact_metadata(where, "summary")
            if m.get("ready"):
                return f"v{m.get('version', '?')} READY" + (f" (advisory: {m['advisory_failures']})" if m.get("advisory_failures") else "")
            return f"v{m.get('version', '?')} NOT READY: blocking {m.get('blocking_failures', '?')} (mlwf readiness for the evidence)"
        return ""

    return describe


def _gate_record(run: Any, client: Any) -> dict[str, Any]:
    """The gate's verdict: gate.json as the evaluate step logged it to MLflow (reasons, baseline, champion with
    its version), else what the step recorded in its Metrics and report metadata."""
    metrics = run.metadata("evaluate-op", "metrics")
    report = run.metadata("evaluate-op", "report")
    reasons = str(report.get("reasons", ""))
    record: dict[str, Any] = {
        "passed": bool(run.output("evaluate-op", "Output")),
        "reasons": [] if reasons in ("", "all checks passed") else reasons.split("; "),
        "metrics": {k: v for k, v in metrics.items() if "." not in k},
        "baseline": {k.split(".", 1)[1]: v for k, v in metrics.items() if k.startswith("baseline.")} or None,
        "champion": {k.split(".", 1)[1]: v for k, v in metrics.items() if k.startswith("champion.")} or None,
        "policy": {"version": report.get("policy_version")},
        "source": "the evaluate step's metrics",
    }
    run_id = run.metadata("train-op", "model").get("run_id")
    if client is not None and run_id:
        import tempfile

        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a progress bar for one small file
        try:
            with tempfile.TemporaryDirectory(prefix="gate-") as tmp:
                path = client.download_artifacts(str(run_id), "evaluation/gate.json", tmp)
                gate = json.loads(Path(path).read_text())
            record.update({k: gate[k] for k in ("passed", "reasons", "metrics", "baseline", "champion", "policy") if k in gate})
            record["source"] = "gate.json"
        except Exception as err:  # MLflow unreachable: the step's own record above is still right
            record["source"] = f"the evaluate step's metrics (gate.json unreadable: {type(err).__name__})"
    return record


def _gate_lines(gate: dict[str, Any], version: str, max_reasons: int = 8) -> list[str]:
    def row(label: str, values: dict[str, Any] | None, note: str = "") -> str:
        if not values:
            return f"  {label:<24}{'-':>9}{'-':>9}{'-':>9}{'-':>9}  {note}".rstrip()
        cells = "".join(
            f"{float(values[k]):9.4f}" if isinstance(values.get(k), (int, float)) else f"{'-':>9}"
            for k in ("roc_auc", "pr_auc", "brier", "ece")
        )
        return f"  {label:<24}{cells}  {note}".rstrip()

    policy = gate.get("policy") or {}
    champion = gate.get("champion")
    lines = [
        f"Gate: {'PASSED' if gate['passed'] else 'FAILED'} (policy version {policy.get('version', '?')})",
        f"  {'':<24}{'ROC-AUC':>9}{'PR-AUC':>9}{'Brier':>9}{'ECE':>9}",
        row(f"model v{version}", gate.get("metrics")),
        row("baseline", gate.get("baseline"), str((gate.get("baseline") or {}).get("kind", ""))),
        row(
            f"champion v{champion['version']}" if champion and champion.get("version") else "champion",
            champion,
            "" if champion else "none yet: judged on the policy's thresholds alone",
        ),
    ]
    if champion and champion.get("comparable") is False:
        lines.append(f"  (the champion is not comparable: {champion.get('why', '?')})")
    reasons = list(gate.get("reasons") or [])
    if not reasons:
        lines.append("  Reasons: every check passed")
    else:
        lines.append("  Reasons:" if len(reasons) > 1 else f"  Reason: {reasons[0]}")
        if len(reasons) > 1:
            lines += [f"    - {r}" for r in reasons[:max_reasons]]
            if len(reasons) > max_reasons:
                lines.append(f"    ... and {len(reasons) - max_reasons} more: see the evaluation report")
    return lines


def mlflow_lines(settings: Any, client: Any, run_id: str | None) -> list[str]:
    """The exact command that opens the MLflow UI on this run's store, and the URL of the runs table.

    mlflow 3.17 opens a plain experiment link in its GenAI view; `workflowType=machine_learning` selects
    the model-training view, whose default tab is the runs table.
    """
    uri = settings.mlflow_tracking_uri
    experiment = "?"
    if client is not None:
        try:
            if run_id:
                experiment = client.get_run(run_id).info.experiment_id
            else:
                found = client.get_experiment_by_name(settings.mlflow_experiment)
                experiment = found.experiment_id if found else "?"
        except Exception:  # an unreachable server: the command below still opens the UI
            experiment = "?"
    page = f"#/experiments/{experiment}?workflowType=machine_learning" if experiment != "?" else "#/experiments"
    if uri.startswith(("http://", "https://")):
        return [f"{'MLflow runs:':<20} {uri.rstrip('/')}/{page}"]
    venv_mlflow = Path(sys.executable).parent / "mlflow"
    command = _relative(venv_mlflow) if venv_mlflow.exists() else "mlflow"
    direct = f"{command} ui --backend-store-uri {uri}"
    makefile = Path.cwd() / "Makefile"
    if makefile.exists() and "mlflow-ui:" in makefile.read_text():
        default_state = Path(settings.state_dir) == (Path.cwd() / ".state").resolve()
        make = "make mlflow-ui" + ("" if default_state else f" MLWF_STATE_DIR={settings.state_dir}")
        first = f"{'MLflow runs:':<20} {make}   (or: {direct})"
    else:
        first = f"{'MLflow runs:':<20} {direct}"
    return [first, f"{'':<20} then open http://127.0.0.1:5000/{page}"]


def _relative(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def run_summary(run: Any) -> str:
    from components.core import tracking
    from components.core.settings import get_settings

    settings = get_settings()
    lines = ["", f"Pipeline finished in {run.seconds:.1f} s. Run directory: {run.run_dir}"]
    if run.steps:
        lines.append(f"{'Step logs:':<20} {run.logs_dir}/ ({', '.join(s.log.name for s in run.steps)})")
    # Copies with an .html name, so a browser opens them; the artifacts stay where Kubeflow put them.
    from components.core import paths

    reports = Path(paths.reports_dir(settings.state_dir))
    for task, artifact, label, name in (
        ("validate-op", "report", "Validation report", "validation.html"),
        ("evaluate-op", "report", "Evaluation report", "evaluation.html"),
    ):
        if run.ran(task) and run.artifact(task, artifact).exists():
            reports.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(run.artifact(task, artifact), reports / name)
            lines.append(f"{label + ':':<20} {reports / name}")
    try:
        client = tracking.configure(settings)
    except Exception as err:  # the summary still says everything the steps recorded
        client = None
        lines.append(f"{'MLflow:':<20} unreachable ({type(err).__name__}: {str(err)[:200]})")
    run_id = run.metadata("train-op", "model").get("run_id") if run.ran("train-op") else None
    if run.ran("evaluate-op"):
        chosen = run.metadata("evaluate-op", "chosen")  # the candidate the gate chose, when it chose one
        shown = f"{chosen['version']} ({chosen['family']})" if chosen.get("version") else str(run.output("train-op", "version"))
        lines += ["", *_gate_lines(_gate_record(run, client), shown)]
    if run.ran("validate-op"):
        quarantine = run.metadata("validate-op", "quarantine")
        rows = run.metadata("validate-op", "metrics").get("rows")
        where = quarantine.get("store") or run.artifact("validate-op", "quarantine")
        lines.append(
            f"{'Quarantined rows:':<20} {_count(quarantine.get('rows'))} of {_count(rows)} in {where} (Parquet, with the failed expectations)"
        )
    lines += mlflow_lines(settings, client, run_id)
    if run.ran("deploy-op"):
        deployed = run.metadata("deploy-op", "deployment")
        curl = next((line for line in run.artifact("deploy-op", "deployment").read_text().splitlines() if line.startswith("curl ")), None)
        lines.append(
            f"{'Served:':<20} {run.output('train-op', 'model_name')} v{deployed.get('version', '?')} at {deployed.get('url', '?')}"
        )
        if curl:
            lines.append(f"{'Try it:':<20} {curl}")
        lines.append(f"{'Stop the server:':<20} make stop   (or: mlwf stop)")
    else:
        lines.append("Nothing was deployed: the gate did not pass (the reasons above; the evaluation report has the details).")
    return "\n".join(lines)


def monitor_summary(run: Any) -> str:
    drift = json.loads(run.artifact("drift-op", "drift").read_text())
    summary = drift["summary"]
    lines = [
        f"\nMonitoring run finished in {run.seconds:.1f}s: {summary['rows']} served rows of {drift['service']} "
        f"against champion v{drift['champion_version']}",
        "",
        f"  {'feature':<18} {'PSI':>8} {'KS D':>7} {'KS crit':>8}  level",
    ]
    for f in [*summary["features"], *([summary["prediction"]] if summary["prediction"] else [])]:
        ks = f"{f['ks_d']:7.3f} {f['ks_critical']:8.3f}" if f["ks_d"] is not None else f"{'-':>7} {'-':>8}"
        lines.append(f"  {f['feature']:<18} {f['psi']:8.3f} {ks}  {f['level']}{'  <- ' + '; '.join(f['reasons']) if f['reasons'] else ''}")
    verdict = (
        "insufficient data"
        if summary["insufficient"]
        else ("DRIFT ALERT: " + ", ".join(summary["drifted"]) if summary["alert"] else "no drift alert")
    )
    lines += ["", f"{'Verdict:':<20} {verdict}", f"{'Drift report:':<20} {run.artifact('drift-op', 'report')}"]
    if getattr(run, "logs_dir", None):
        lines.append(f"{'Step logs:':<20} {run.logs_dir}/ ({', '.join(s.log.name for s in run.steps)})")
    if run.ran("retrain-op"):
        lines.append(f"{'Retraining:':<20} " + run.artifact("retrain-op", "decision").read_text().splitlines()[2])
    else:
        lines.append(f"{'Retraining:':<20} not started (no alert, too few rows, or within the cooldown: see the report)")
    return "\n".join(lines)
