"""`mlwf`: the one entry point. `mlwf --help` lists the commands.

  mlwf generate   write the demo dataset (seeded card transactions; switches for bad records and drift)
  mlwf run --local [--dataset SPEC] [--data URI]   run the whole pipeline on this machine (kfp.local)
  mlwf demo       generate the demo data if missing, run locally, print where to look
  mlwf compile    write the pipeline package a Kubeflow cluster runs
  mlwf submit     create a run on Kubeflow Pipelines (kfp.Client)
  mlwf stop       stop the local model server
  mlwf monitor --local   drift of the served traffic vs the champion; retrain on an alert (kfp.local)
  mlwf drift-demo        replay drifted traffic to the served champion, detect the drift, retrain
  mlwf schedule   create a recurring monitoring run on Kubeflow Pipelines (cron)
  mlwf suite --dataset SPEC   write/update the validation suite beside the spec (SPEC.suite.json)
  mlwf lineage DATASET|MODEL/VERSION   input files, suite, code and run behind a dataset or model version
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

DEFAULT_PACKAGE = "pipelines/compiled/training.yaml"
MONITORING_PACKAGE = "pipelines/compiled/monitoring.yaml"


def _fail(message: str) -> int:
    print(f"mlwf: error: {message}", file=sys.stderr)
    return 2


def _demo_data_path() -> Path:
    from components.core.settings import get_settings

    return Path(get_settings().state_dir) / "data" / "transactions.csv"


def cmd_generate(args: argparse.Namespace) -> int:
    from components.data.datagen import GenConfig, write

    out = args.out or str(_demo_data_path())
    write(GenConfig(rows=args.rows, seed=args.seed, bad_fraction=args.bad_fraction, drift=args.drift), out)
    print(f"wrote {args.rows} rows to {out}")
    return 0


def _run_arguments(args: argparse.Namespace, source: str) -> dict[str, Any]:
    return {
        "dataset_spec": args.dataset,
        "source_uri": source,
        "epochs": args.epochs,
        "seed": args.seed,
        "gate_policy": args.gate_policy,
        "min_roc_auc": args.min_roc_auc,
        "max_p99_latency_ms": args.max_p99_latency_ms,
        "max_regression": args.max_regression,
    }


def _check_inputs(dataset: str, source: str) -> None:
    """Fail in one line before any step starts: a missing spec or input is not worth a pipeline run.

    Bring your own data: a local spec without a validation suite beside it gets one written (and the
    user is told, to review and commit it); a suite that is stale against its spec is an error that
    names the command to refresh it, because someone may have reviewed the old one.
    """
    from components.core import storage
    from components.core.settings import get_settings
    from components.core.spec import load_spec
    from components.data.ingest import check_source
    from components.data.validate import load_suite, suite_path, write_suite

    spec = load_spec(dataset)
    check_source(spec, source, get_settings().state_dir)  # reads the state store, writes nothing
    path = suite_path(dataset)
    if not storage.is_s3(path) and not storage.exists(path):
        path, suite, _ = write_suite(dataset)
        print(f"mlwf: wrote the validation suite {path} ({len(suite.expectations)} expectations, version {suite.version}) "
              "beside the spec; review it and keep it with the spec")
    load_suite(spec, dataset)


def cmd_suite(args: argparse.Namespace) -> int:
    """Write or update the validation suite beside the spec (`--check`: only say whether it is current)."""
    from components.core.spec import SpecError, load_spec
    from components.data.validate import SuiteError, load_suite, write_suite

    try:
        if args.check:
            suite = load_suite(load_spec(args.dataset), args.dataset)
            print(f"{suite.path} is current (version {suite.version}, {len(suite.expectations)} expectations)")
            return 0
        path, suite, changed = write_suite(args.dataset)
    except (SuiteError, SpecError) as err:
        return _fail(str(err))
    state = "wrote" if changed else "unchanged:"
    print(f"{state} {path} (version {suite.version}, {len(suite.expectations)} expectations)")
    return 0


def cmd_lineage(args: argparse.Namespace) -> int:
    """Where a dataset version or a model version came from: input files, suite, code and run."""
    from components.core import lineage
    from components.core.settings import get_settings
    from components.core.spec import SpecError, load_spec

    try:
        if lineage.is_model_ref(args.ref):
            info = lineage.describe_model(args.ref)
            text = lineage.format_model(info)
        else:
            spec = load_spec(args.ref)
            info = lineage.describe_dataset(get_settings().state_dir, spec.name, args.version)
            text = lineage.format_dataset(info)
            if args.row is not None:
                info["rows_found"] = lineage.find_rows(info, spec.entity_column, args.row)
                if not info["rows_found"]:
                    return _fail(f"no row with {spec.entity_column} = {args.row!r} in dataset {spec.name} version {info['dataset_fingerprint'][:16]}")
                text += "\n" + "\n".join(f"  row {args.row}: {r['file']} line {r['source_line']} (sha256 {r['sha256'][:16]})"
                                         for r in info["rows_found"])
    except (lineage.LineageError, SpecError) as err:
        return _fail(str(err))
    print(json.dumps(info, indent=2, default=str) if args.json else text)
    return 0


# --- the local run as a person reads it: a line per step, then a short summary ---------------------------

def _count(value: Any) -> str:
    try:
        return f"{int(float(value)):,}"
    except (TypeError, ValueError):
        return "?"


def _describe_step(max_epochs: int | None) -> Any:
    """The key result of each training-pipeline step, read from what the step recorded (its outputs and
    artifact metadata in executor_output.json): a few words for its progress line."""
    from pipelines.local import artifact_metadata, task_output

    def describe(task: str, where: Path | None) -> str:
        if where is None:  # the step did not run
            return "the gate did not pass" if task == "deploy-op" else ""
        if task == "ingest-op":
            raw = artifact_metadata(where, "raw")
            files = int(raw.get("files", 0))
            return (f"{_count(raw.get('rows'))} rows from {files} file{'s' if files != 1 else ''} ({raw.get('new_files', '?')} new), "
                    f"dataset version {str(raw.get('dataset_fingerprint', '?'))[:12]}")
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
            return f"v{m.get('version', '?')}: {epochs}, {auc}, on {m.get('device', '?')}"
        if task == "evaluate-op":
            m = artifact_metadata(where, "metrics")
            passed = task_output(where, "Output")
            text = f"gate {'PASSED' if passed else 'FAILED'}: ROC-AUC {float(m.get('roc_auc', float('nan'))):.3f}"
            if "baseline.roc_auc" in m:
                text += f" (baseline {float(m['baseline.roc_auc']):.3f}"
                text += f", champion {float(m['champion.roc_auc']):.3f})" if "champion.roc_auc" in m else ")"
            return text
        if task == "deploy-op":
            m = artifact_metadata(where, "deployment")
            return f"v{m.get('version', '?')} serving at {m.get('url', '?')}"
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
            return f"  {label:<16}{'-':>9}{'-':>9}{'-':>9}{'-':>9}  {note}".rstrip()
        cells = "".join(f"{float(values[k]):9.4f}" if isinstance(values.get(k), (int, float)) else f"{'-':>9}"
                        for k in ("roc_auc", "pr_auc", "brier", "ece"))
        return f"  {label:<16}{cells}  {note}".rstrip()

    policy = gate.get("policy") or {}
    champion = gate.get("champion")
    lines = [f"Gate: {'PASSED' if gate['passed'] else 'FAILED'} (policy version {policy.get('version', '?')})",
             f"  {'':<16}{'ROC-AUC':>9}{'PR-AUC':>9}{'Brier':>9}{'ECE':>9}",
             row(f"model v{version}", gate.get("metrics")),
             row("baseline", gate.get("baseline"), str((gate.get("baseline") or {}).get("kind", ""))),
             row(f"champion v{champion['version']}" if champion and champion.get("version") else "champion", champion,
                 "" if champion else "none yet: judged on the policy's thresholds alone")]
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


def _mlflow_lines(settings: Any, client: Any, run_id: str | None) -> list[str]:
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


def _summary(run: Any) -> str:
    from components.core import tracking
    from components.core.settings import get_settings

    settings = get_settings()
    lines = ["", f"Pipeline finished in {run.seconds:.1f} s. Run directory: {run.run_dir}"]
    if run.steps:
        lines.append(f"{'Step logs:':<20} {run.logs_dir}/ ({', '.join(s.log.name for s in run.steps)})")
    # Copies with an .html name, so a browser opens them; the artifacts stay where Kubeflow put them.
    reports = Path(settings.state_dir) / "reports"
    for task, artifact, label, name in (("validate-op", "report", "Validation report", "validation.html"),
                                        ("evaluate-op", "report", "Evaluation report", "evaluation.html")):
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
        lines += ["", *_gate_lines(_gate_record(run, client), str(run.output("train-op", "version")))]
    if run.ran("validate-op"):
        quarantine = run.metadata("validate-op", "quarantine")
        rows = run.metadata("validate-op", "metrics").get("rows")
        where = quarantine.get("store") or run.artifact("validate-op", "quarantine")
        lines.append(f"{'Quarantined rows:':<20} {_count(quarantine.get('rows'))} of {_count(rows)} in {where} (Parquet, with the failed expectations)")
    lines += _mlflow_lines(settings, client, run_id)
    if run.ran("deploy-op"):
        deployed = run.metadata("deploy-op", "deployment")
        curl = next((line for line in run.artifact("deploy-op", "deployment").read_text().splitlines() if line.startswith("curl ")), None)
        lines.append(f"{'Served:':<20} {run.output('train-op', 'model_name')} v{deployed.get('version', '?')} at {deployed.get('url', '?')}")
        if curl:
            lines.append(f"{'Try it:':<20} {curl}")
        lines.append(f"{'Stop the server:':<20} make stop   (or: mlwf stop)")
    else:
        lines.append("Nothing was deployed: the gate did not pass (the reasons above; the evaluation report has the details).")
    return "\n".join(lines)


def cmd_run(args: argparse.Namespace) -> int:
    if not args.local:
        return _fail("`mlwf run` runs the pipeline on this machine only: add --local. For a Kubeflow cluster, write the "
                     "package with `mlwf compile` and start a run with `mlwf submit --host <KFP API URL>`")
    from pipelines.local import PipelineFailed, run_local

    source = args.data or str(_demo_data_path())
    try:
        _check_inputs(args.dataset, source)
        print("running the training pipeline on this machine (kfp.local); each step's whole output goes to its log file",
              flush=True)
        run = run_local(_run_arguments(args, source), console=sys.stdout, describe=_describe_step(args.epochs))
    except (PipelineFailed, FileNotFoundError, ValueError) as err:
        return _fail(str(err))
    print(_summary(run))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    path = _demo_data_path()
    if not path.exists() or args.regenerate:
        from components.data.datagen import GenConfig, write

        write(GenConfig(rows=args.rows, seed=7, bad_fraction=0.01), str(path))
        print(f"generated {args.rows} demo transactions (1% deliberately bad) in {path}")
    args.local, args.data = True, str(path)
    return cmd_run(args)


def compile_package(out: str, image: str | None = None, pipeline: Any = None) -> str:
    """Compile a pipeline (default: training) and write the components image into it (placeholder -> configured)."""
    import yaml
    from kfp import compiler

    from components.core.settings import get_settings
    from pipelines.ops import PLACEHOLDER_IMAGE, stamp_image
    from pipelines.training import training_pipeline

    image = image or get_settings().components_image
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(out).with_suffix(".tmp.yaml")
    compiler.Compiler().compile(pipeline or training_pipeline, str(tmp))
    docs = list(yaml.safe_load_all(tmp.read_text()))
    for executor in docs[0]["deploymentSpec"]["executors"].values():
        if executor.get("container", {}).get("image") == PLACEHOLDER_IMAGE:
            stamp_image(executor["container"], image)  # the image, and the step told which one it runs in
    text = yaml.safe_dump_all(docs, sort_keys=True)
    if PLACEHOLDER_IMAGE in text:
        raise RuntimeError("a step still names the placeholder image after compiling")
    Path(out).write_text("# Generated by `mlwf compile`; do not edit.\n" + text)
    tmp.unlink()
    return out


def pin_digest(image: str, digest: str) -> str:
    """`registry:5000/repo/name:tag` + digest -> `registry:5000/repo/name@digest` (only a tag after the last / goes)."""
    image = image.split("@", 1)[0]
    head, slash, last = image.rpartition("/")
    return f"{head}{slash}{last.split(':', 1)[0]}@{digest}"


def cmd_compile(args: argparse.Namespace) -> int:
    image = args.image
    if args.digest:
        image = pin_digest(image or "ghcr.io/mlwf/components", args.digest)
    print(f"wrote {compile_package(args.out, image)}")
    from pipelines.monitoring import monitoring_pipeline

    print(f"wrote {compile_package(str(Path(args.out).with_name(Path(MONITORING_PACKAGE).name)), image, monitoring_pipeline)}")
    return 0


def kfp_client(host: str, namespace: str) -> Any:
    """kfp.Client with, in order: a bearer token (KFP_TOKEN), a session cookie (KFP_COOKIE), the in-cluster
    ServiceAccount token (audience pipelines.kubeflow.org), else no credentials."""
    import kfp

    token, cookie = os.environ.get("KFP_TOKEN"), os.environ.get("KFP_COOKIE")
    if token:
        return kfp.Client(host=host, namespace=namespace, existing_token=token)
    if cookie:
        return kfp.Client(host=host, namespace=namespace, cookies=cookie)
    if Path("/var/run/secrets/kubeflow/pipelines/token").exists():
        from kfp.client import ServiceAccountTokenVolumeCredentials

        return kfp.Client(host=host, namespace=namespace, credentials=ServiceAccountTokenVolumeCredentials())
    return kfp.Client(host=host, namespace=namespace)


def parse_arguments(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"--arg takes NAME=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def with_gpu_placement(package: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """Fill the train step's GPU tolerations and node selector from settings, unless given as --arg.

    Only for a package that has those parameters (the training pipeline); the node selector stays empty
    for a CPU run (gpu_count 0), where it would only keep the pod off CPU nodes.
    """
    import yaml

    from pipelines.training import gpu_placement_arguments

    with open(package) as handle:
        spec = next(yaml.safe_load_all(handle))
    params = spec.get("root", {}).get("inputDefinitions", {}).get("parameters", {})
    if "gpu_tolerations" not in params:
        return arguments
    default_count = int(params.get("gpu_count", {}).get("defaultValue", 1))
    return {**gpu_placement_arguments(int(arguments.get("gpu_count", default_count))), **arguments}


def cmd_submit(args: argparse.Namespace) -> int:
    if not Path(args.package).exists():
        return _fail(f"pipeline package not found: {args.package} (run `mlwf compile` first)")
    try:
        arguments = with_gpu_placement(args.package, parse_arguments(args.arg))
    except ValueError as err:
        return _fail(str(err))
    client = kfp_client(args.host, args.namespace)
    run = client.create_run_from_pipeline_package(args.package, arguments=arguments, experiment_name=args.experiment,
                                                  run_name=args.run_name, namespace=args.namespace)
    print(f"submitted run {run.run_id} in experiment {args.experiment!r}: {args.host.rstrip('/')}/#/runs/details/{run.run_id}")
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    from components.core.settings import get_settings
    from components.deployment.local import stop_local

    stopped = 0
    for record in (Path(get_settings().state_dir) / "serving").glob("*/server.json"):
        stop_local(record)
        stopped += 1
    print(f"stopped {stopped} local model server(s)")
    return 0


def _training_arguments(base: dict[str, Any], pairs: list[str]) -> dict[str, Any]:
    """Training pipeline arguments for a retraining; `NAME=200` becomes 200.0 where the pipeline takes a Float
    (kfp rejects an int for a float input)."""
    from pipelines.training import training_pipeline

    types = {name: spec.type for name, spec in training_pipeline.component_spec.inputs.items()}
    out = {**base, **parse_arguments(pairs)}
    unknown = sorted(set(out) - set(types))
    if unknown:
        raise ValueError(f"the training pipeline has no parameter(s) {unknown}; it takes {sorted(types)}")
    return {k: float(v) if types[k] == "Float" and isinstance(v, int) else v for k, v in out.items()}


def _monitor_arguments(args: argparse.Namespace, training: dict[str, Any]) -> dict[str, Any]:
    return {"model_name": args.model, "window_hours": args.window_hours, "psi_warn": args.psi_warn, "psi_alert": args.psi_alert,
            "ks_alpha": args.ks_alpha, "ks_min_d": args.ks_min_d, "min_rows": args.min_rows, "cooldown_hours": args.cooldown_hours,
            "labels_uri": args.labels or "", "pushgateway_url": args.pushgateway or "", "training_arguments": json.dumps(training)}


def _monitor_summary(run: Any) -> str:
    drift = json.loads(run.artifact("drift-op", "drift").read_text())
    summary = drift["summary"]
    lines = [f"\nMonitoring run finished in {run.seconds:.1f}s: {summary['rows']} served rows of {drift['service']} "
             f"against champion v{drift['champion_version']}", "",
             f"  {'feature':<18} {'PSI':>8} {'KS D':>7} {'KS crit':>8}  level"]
    for f in [*summary["features"], *([summary["prediction"]] if summary["prediction"] else [])]:
        ks = f"{f['ks_d']:7.3f} {f['ks_critical']:8.3f}" if f["ks_d"] is not None else f"{'-':>7} {'-':>8}"
        lines.append(f"  {f['feature']:<18} {f['psi']:8.3f} {ks}  {f['level']}{'  <- ' + '; '.join(f['reasons']) if f['reasons'] else ''}")
    verdict = "insufficient data" if summary["insufficient"] else ("DRIFT ALERT: " + ", ".join(summary["drifted"]) if summary["alert"] else "no drift alert")
    lines += ["", f"{'Verdict:':<20} {verdict}", f"{'Drift report:':<20} {run.artifact('drift-op', 'report')}"]
    if getattr(run, "logs_dir", None):
        lines.append(f"{'Step logs:':<20} {run.logs_dir}/ ({', '.join(s.log.name for s in run.steps)})")
    if run.ran("retrain-op"):
        lines.append(f"{'Retraining:':<20} " + run.artifact("retrain-op", "decision").read_text().splitlines()[2])
    else:
        lines.append(f"{'Retraining:':<20} not started (no alert, too few rows, or within the cooldown: see the report)")
    return "\n".join(lines)


def cmd_monitor(args: argparse.Namespace) -> int:
    if not args.local:
        return _fail("only --local runs here; on a cluster use `mlwf compile` and `mlwf schedule`")
    from components.core.settings import get_settings
    from pipelines.local import PipelineFailed, progress_to
    from pipelines.monitoring import run_monitoring_local

    try:
        training = _training_arguments({"dataset_spec": args.dataset, "source_uri": args.retrain_data or str(_demo_data_path())}, args.retrain_arg)
        with progress_to(sys.stdout):  # a line per step; each step's output goes to its log file
            run = run_monitoring_local(_monitor_arguments(args, training))
    except (PipelineFailed, ValueError) as err:
        return _fail(str(err))
    print(_monitor_summary(run))
    print(f"{'Gauges (textfile):':<20} {Path(get_settings().state_dir) / 'monitoring' / 'metrics'}")
    return 0


def _ready(url: str, service: str) -> bool:
    import requests

    try:
        return requests.get(f"{url}/v2/models/{service}/ready", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def _serve_champion(settings: Any, model: str, instances: list[dict[str, Any]]) -> tuple[str, str]:
    """The champion's predict URL: the running local server when it serves the champion, else a fresh one."""
    import tempfile

    from components.core import tracking
    from components.deployment.local import deploy_local, service_name

    client = tracking.configure(settings)
    champion = tracking.alias_version(client, model, "champion")
    if champion is None:
        raise LookupError(f"no champion of {model!r} in the MLflow registry ({settings.mlflow_tracking_uri}): run `make demo` first")
    service = service_name(model)
    record = Path(settings.state_dir) / "serving" / service / "server.json"
    if record.exists():
        served = json.loads(record.read_text())
        if str(served.get("version")) == str(champion.version) and _ready(served["url"], service):
            return served["predict_url"], str(champion.version)
    print(f"the champion v{champion.version} is not being served: starting it on {settings.serve_host}:{settings.serve_port}")
    with tempfile.TemporaryDirectory(prefix="champion-") as tmp:
        bundle = tracking.download_bundle(client, champion, tmp)
        deployment = deploy_local(bundle, model, str(champion.version), instances, settings)
    return deployment.predict_url, str(champion.version)


def cmd_drift_demo(args: argparse.Namespace) -> int:
    """Serve the champion, replay drifted traffic through HTTP, run the monitor: it detects drift and retrains."""
    import time
    from datetime import datetime, timedelta, timezone

    import requests

    from components.core import bundle as bundle_lib
    from components.core import tracking
    from components.core.request_log import RequestLogWriter, read_window
    from components.core.settings import get_settings
    from components.data.datagen import GenConfig, generate
    from components.deployment.local import service_name
    from pipelines.local import PipelineFailed, progress_to
    from pipelines.monitoring import run_monitoring_local

    settings = get_settings()
    service = service_name(args.model)
    traffic = generate(GenConfig(rows=args.rows, seed=args.seed, drift=args.drift))
    features = ["amount", "hour_of_day", "card_age_days", "distance_km", "txn_count_24h", "merchant_category", "channel", "country"]
    columns = bundle_lib.columns_from_frame(traffic, features)
    instances = [{k: v[i] for k, v in columns.items()} for i in range(len(traffic))]
    try:
        predict_url, version = _serve_champion(settings, args.model, instances[:3])
    except (LookupError, RuntimeError) as err:
        return _fail(str(err))
    data_path = Path(settings.state_dir) / "data" / "transactions-drifted.csv"
    data_path.parent.mkdir(parents=True, exist_ok=True)
    traffic.to_csv(data_path, index=False)  # the newly labeled period the retraining learns from

    replay = min(args.replay, len(instances))
    started = datetime.now(timezone.utc) - timedelta(seconds=1)
    print(f"replaying {replay} drifted transactions (drift={args.drift}) to {predict_url} in batches of {args.batch} ...")
    answers: list[dict[str, Any]] = []
    clock = time.perf_counter()
    with requests.Session() as http:
        for start in range(0, replay, args.batch):
            response = http.post(predict_url, json={"instances": instances[start : min(start + args.batch, replay)]}, timeout=30)
            if response.status_code != 200:
                return _fail(f"the model server answered HTTP {response.status_code}: {response.text[:200]}")
            answers.extend(response.json()["predictions"])
    print(f"  {replay} rows scored in {time.perf_counter() - clock:.1f}s over HTTP")

    root = str(Path(settings.state_dir) / "request_logs")
    logged = 0
    deadline = time.monotonic() + 10  # the server's log sink flushes every few seconds
    while time.monotonic() < deadline:
        logged = len(read_window(root, service, started, datetime.now(timezone.utc) + timedelta(seconds=1)))
        if logged >= replay:
            break
        time.sleep(1)
    if logged:
        print(f"  the model server logged {logged} rows under {root}/{service}")
    else:
        print(f"  the model server wrote no request logs: the replay client logs the {replay} answers itself (same format)")
        writer = RequestLogWriter(root, service)
        probs = [a["probability"] for a in answers]
        writer.log(instances[:replay], probs, [a["label"] for a in answers], version, "drift-demo",
                   entities=traffic["transaction_id"].iloc[:replay].tolist())
        writer.flush()
    labels = Path(settings.state_dir) / "monitoring" / service / "labels" / "drift-demo.csv"
    labels.parent.mkdir(parents=True, exist_ok=True)
    known = traffic.iloc[:replay]
    known.assign(entity=known["transaction_id"], label=known["is_fraud"], ts=datetime.now(timezone.utc).isoformat())[["entity", "label", "ts"]].to_csv(labels, index=False)

    try:
        training = _training_arguments({"dataset_spec": "transactions", "source_uri": str(data_path), "epochs": args.epochs}, args.retrain_arg)
    except ValueError as err:
        return _fail(str(err))
    arguments = {"model_name": args.model, "window_hours": args.window_hours, "cooldown_hours": args.cooldown_hours,
                 "labels_uri": str(labels), "training_arguments": json.dumps(training)}
    print("running the monitoring pipeline (kfp.local); each step's whole output goes to its log file", flush=True)
    try:
        with progress_to(sys.stdout):
            run = run_monitoring_local(arguments)
    except PipelineFailed as err:
        return _fail(str(err))
    print(_monitor_summary(run))
    print(f"{'Gauges (textfile):':<20} {Path(settings.state_dir) / 'monitoring' / 'metrics' / f'mlwf_drift_{service}.prom'}")
    champion = tracking.alias_version(tracking.configure(settings), args.model, "champion")
    print(f"{'Champion now:':<20} v{champion.version if champion else '?'} (was v{version})")
    return 0


def cron_with_seconds(expression: str) -> str:
    """KFP recurring runs take a 6-field cron (seconds first); a usual 5-field one gets second 0."""
    fields = expression.split()
    if len(fields) == 5:
        return " ".join(["0", *fields])
    if len(fields) == 6:
        return " ".join(fields)
    raise ValueError(f"--cron takes 5 fields (minute hour day month weekday) or 6 (seconds first), got {expression!r}")


def schedule_monitoring(client: Any, package: str, cron: str, experiment: str, job_name: str, params: dict[str, Any],
                        namespace: str) -> Any:
    """A recurring run of the monitoring package: one run at a time, no backfill of missed slots."""
    found = client.create_experiment(name=experiment, namespace=namespace)  # returns the existing one by name
    return client.create_recurring_run(experiment_id=found.experiment_id, job_name=job_name, cron_expression=cron_with_seconds(cron),
                                       pipeline_package_path=package, params=params, max_concurrency=1, no_catchup=True,
                                       enable_caching=False)


def cmd_schedule(args: argparse.Namespace) -> int:
    if not Path(args.package).exists():
        return _fail(f"pipeline package not found: {args.package} (run `mlwf compile` first)")
    try:
        # The monitoring pipeline's parameters are scalars; a JSON object (training_arguments) travels as its text.
        params = {k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in parse_arguments(args.arg).items()}
        cron_with_seconds(args.cron)
    except ValueError as err:
        return _fail(str(err))
    job = schedule_monitoring(kfp_client(args.host, args.namespace), args.package, args.cron, args.experiment, args.job_name,
                              params, args.namespace)
    print(f"scheduled {args.job_name!r} ({cron_with_seconds(args.cron)}): recurring run {job.recurring_run_id}")
    return 0


def cmd_rollout_demo(args: argparse.Namespace) -> int:
    """Canary a broken copy of the serving champion, with demo traffic replayed, and show the rollback."""
    import pandas as pd
    import requests

    from components.core import bundle as bundle_lib
    from components.core.settings import get_settings
    from components.deployment.local import DeployError, deploy_local, make_broken_bundle, service_name

    settings = get_settings()
    home = Path(settings.state_dir) / "serving" / service_name(args.model)
    record_path = home / "server.json"
    stable = json.loads(record_path.read_text()) if record_path.exists() else None
    if stable is None or not requests.get(f"{stable['url']}/v2/models/{service_name(args.model)}/ready", timeout=5).ok:
        return _fail(f"no {args.model} model server is running locally: run `make demo` first")
    data = Path(args.data) if args.data else _demo_data_path()
    if not data.exists():
        return _fail(f"no traffic to replay: {data} does not exist (run `make demo` first, or pass --data)")
    champion = bundle_lib.load(stable["model_dir"])
    frame = pd.read_csv(data)
    for name in champion.numeric:  # the demo data has bad rows on purpose: replay the latest rows that parse
        frame[name] = pd.to_numeric(frame[name], errors="coerce")
    frame = frame.dropna(subset=champion.feature_names).tail(2000)  # the latest rows: the test period
    columns = bundle_lib.columns_from_frame(frame, champion.feature_names)
    traffic = [{k: v[i] for k, v in columns.items()} for i in range(len(frame))]
    broken = make_broken_bundle(stable["model_dir"], str(home / f"broken-{args.broken}"), args.broken)
    what = {"errors": "a bundle whose signature renames a feature (real requests get 400)",
            "slow": "a bundle whose program does ~5 GFLOP per request (right answers, too late)"}[args.broken]
    print(f"champion v{stable['version']} serves at {stable['url']}; canary: {what}")
    try:
        deployed = deploy_local(broken, args.model, f"broken-{args.broken}", traffic[:3], settings, replay=traffic)
    except DeployError as err:
        report = getattr(err, "report", None)
        if report is not None:
            print(report.summary())
        print(f"\n{err}")
        answer = requests.post(stable["predict_url"], json={"instances": traffic[:1]}, timeout=10)
        print(f"\nthe champion v{stable['version']} still answers at {stable['predict_url']}: HTTP {answer.status_code}")
        return 0 if answer.status_code == 200 else 1
    print(deployed.rollout)
    return _fail(f"the broken canary was promoted (v{deployed.version} now serves): the analysis let it through")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every option's help ends with its default. An option whose help already says what its default means
    (a computed path, "the policy file's value") keeps that wording; a flag's default is "off"."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if not action.option_strings or action.required or action.default is argparse.SUPPRESS or "default" in text.lower():
            return text
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            return f"{text} (default: off)".strip()
        if isinstance(action, argparse._AppendAction):
            return f"{text} (default: none)".strip()
        return f"{text} (default: %(default)s)".strip()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlwf", description=__doc__, formatter_class=_HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=text, description=text, formatter_class=_HelpFormatter)

    gen = command("generate", "write the demo dataset")
    gen.add_argument("--rows", type=int, default=20_000, help="transactions to generate")
    gen.add_argument("--seed", type=int, default=7, help="random seed (the same seed writes the same data)")
    gen.add_argument("--bad-fraction", type=float, default=0.0, help="share of rows to corrupt (quarantine demo)")
    gen.add_argument("--drift", type=float, default=0.0, help="0..1, shift amounts and the channel/category mix")
    gen.add_argument("--out", help="CSV or Parquet path (default: the state directory's data/transactions.csv)")
    gen.set_defaults(func=cmd_generate)

    def run_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--dataset", default="transactions", help="dataset spec: a bundled name, a YAML path or s3:// URI")
        p.add_argument("--epochs", type=int, default=30,
                       help="maximum training epochs: early stopping ends training sooner when the validation ROC-AUC stops improving")
        p.add_argument("--seed", type=int, default=42, help="training seed")
        p.add_argument("--gate-policy", default="", help="gate policy file (default: <dataset>.policy.yaml beside the spec)")
        p.add_argument("--min-roc-auc", type=float, default=-1.0,
                       help="override the policy's minimum ROC-AUC with a value >= 0 (default: -1, the policy file's value)")
        p.add_argument("--max-p99-latency-ms", type=float, default=-1.0,
                       help="override the policy's per-row p99 latency budget with a value >= 0 (default: -1, the policy file's value)")
        p.add_argument("--max-regression", type=float, default=-1.0,
                       help="override the policy's tolerance against the champion with a value >= 0 (default: -1, the policy file's value)")

    run = command("run", "run the training pipeline (on this machine with --local; on a cluster: compile + submit)")
    run.add_argument("--local", action="store_true", help="run on this machine with kfp.local (required: `mlwf submit` runs on a cluster)")
    run.add_argument("--data", help="input CSV/Parquet file or directory, local or s3:// (default: the generated demo data)")
    run_options(run)
    run.set_defaults(func=cmd_run)

    demo = command("demo", "generate demo data if missing and run the pipeline locally")
    demo.add_argument("--rows", type=int, default=20_000, help="demo transactions to generate when there are none")
    demo.add_argument("--regenerate", action="store_true", help="write new demo data even when some exists")
    run_options(demo)
    demo.set_defaults(func=cmd_demo)

    comp = command("compile", "write the pipeline packages (training and monitoring)")
    comp.add_argument("--out", default=DEFAULT_PACKAGE, help="the training package; the monitoring one is written beside it")
    comp.add_argument("--image", help="components image (default: MLWF_COMPONENTS_IMAGE or the release tag)")
    comp.add_argument("--digest", help="pin the image by digest, sha256:... (default: none, the image by tag)")
    comp.set_defaults(func=cmd_compile)

    sub_ = command("submit", "create a run on Kubeflow Pipelines")
    sub_.add_argument("--host", required=True, help="KFP API endpoint, e.g. https://kubeflow.example.com/pipeline (required)")
    sub_.add_argument("--namespace", default="mlwf", help="Kubernetes namespace of the run")
    sub_.add_argument("--experiment", default="mlwf", help="KFP experiment the run belongs to")
    sub_.add_argument("--run-name", default=None, help="name of the run (default: KFP names it)")
    sub_.add_argument("--package", default=DEFAULT_PACKAGE, help="compiled pipeline package")
    sub_.add_argument("--arg", action="append", default=[], metavar="NAME=VALUE", help="pipeline argument (repeatable)")
    sub_.set_defaults(func=cmd_submit)

    stop = command("stop", "stop the local model server")
    stop.set_defaults(func=cmd_stop)

    demo_rollout = command("rollout-demo", "canary a deliberately broken model against the local champion, see it rolled back")
    demo_rollout.add_argument("--broken", choices=["errors", "slow"], default="errors",
                              help="errors: requests fail with 400; slow: answers are right but late")
    demo_rollout.add_argument("--model", default="transactions_classifier", help="registered model name of the champion")
    demo_rollout.add_argument("--data", help="CSV whose latest rows are replayed as traffic (default: the demo data)")
    demo_rollout.set_defaults(func=cmd_rollout_demo)

    def monitor_options(p: argparse.ArgumentParser, window: float) -> None:
        p.add_argument("--model", default="transactions_classifier", help="registered model whose champion is monitored")
        p.add_argument("--window-hours", type=float, default=window, help="served traffic of this many past hours")
        p.add_argument("--cooldown-hours", type=float, default=24.0, help="no second retraining within this time")

    mon = command("monitor", "drift of the served traffic vs the champion; retrain on an alert")
    mon.add_argument("--local", action="store_true", help="run on this machine with kfp.local (required: `mlwf schedule` runs on a cluster)")
    monitor_options(mon, 24.0)
    mon.add_argument("--psi-warn", type=float, default=0.1, help="PSI from which a feature is reported as shifted")
    mon.add_argument("--psi-alert", type=float, default=0.25, help="PSI from which a feature raises the drift alert")
    mon.add_argument("--ks-alpha", type=float, default=0.01, help="significance level of the KS test")
    mon.add_argument("--ks-min-d", type=float, default=0.1, help="floor on the KS statistic D")
    mon.add_argument("--min-rows", type=int, default=200, help="fewer served rows: no decision")
    mon.add_argument("--labels", help="delayed labels (CSV/Parquet/JSONL: entity, label, ts) for live ROC-AUC (default: none)")
    mon.add_argument("--pushgateway", help="also push the gauges to this Prometheus Pushgateway (default: none, the textfile only)")
    mon.add_argument("--dataset", default="transactions", help="dataset spec the retraining uses")
    mon.add_argument("--retrain-data", help="input the retraining reads (default: the demo data)")
    mon.add_argument("--retrain-arg", action="append", default=[], metavar="NAME=VALUE", help="training pipeline argument (repeatable)")
    mon.set_defaults(func=cmd_monitor)

    dd = command("drift-demo", "replay drifted traffic to the served champion; the monitor detects it and retrains")
    monitor_options(dd, 1.0)
    dd.add_argument("--rows", type=int, default=20_000, help="drifted transactions generated (the retraining's data)")
    dd.add_argument("--replay", type=int, default=5_000, help="how many of them are sent to the model server")
    dd.add_argument("--batch", type=int, default=100, help="rows per HTTP request")
    dd.add_argument("--drift", type=float, default=1.0, help="0..1, how far the generated traffic drifts")
    dd.add_argument("--seed", type=int, default=11, help="seed of the drifted data")
    dd.add_argument("--epochs", type=int, default=30, help="maximum epochs of the retraining (early stopping ends it sooner)")
    dd.add_argument("--retrain-arg", action="append", default=[], metavar="NAME=VALUE", help="training pipeline argument (repeatable)")
    dd.set_defaults(func=cmd_drift_demo)

    sch = command("schedule", "create a recurring monitoring run on Kubeflow Pipelines")
    sch.add_argument("--host", required=True, help="KFP API endpoint, e.g. https://kubeflow.example.com/pipeline (required)")
    sch.add_argument("--namespace", default="mlwf", help="Kubernetes namespace of the runs")
    sch.add_argument("--experiment", default="mlwf-monitoring", help="KFP experiment the runs belong to")
    sch.add_argument("--job-name", default="mlwf-drift-monitor", help="name of the recurring run")
    sch.add_argument("--cron", default="0 * * * *", help="cron expression (5 fields, or 6 with seconds first)")
    sch.add_argument("--package", default=MONITORING_PACKAGE, help="compiled monitoring package")
    sch.add_argument("--arg", action="append", default=[], metavar="NAME=VALUE", help="pipeline argument (repeatable)")
    sch.set_defaults(func=cmd_schedule)

    suite = command("suite", "write or update the validation suite beside a dataset spec")
    suite.add_argument("--dataset", default="transactions", help="dataset spec: a bundled name, a YAML path or s3:// URI")
    suite.add_argument("--check", action="store_true", help="only check that the suite is current (exit 2 if not)")
    suite.set_defaults(func=cmd_suite)

    lin = command("lineage", "where a dataset version or a model version came from")
    lin.add_argument("ref", help="a dataset spec (name or path), or a model version: NAME/VERSION, NAME@ALIAS, models:/...")
    lin.add_argument("--version", help="a dataset version (fingerprint) instead of the latest (default: the latest)")
    lin.add_argument("--row", help="an entity key: the file and line its row(s) came from (default: none)")
    lin.add_argument("--json", action="store_true", help="the whole record as JSON")
    lin.set_defaults(func=cmd_lineage)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
