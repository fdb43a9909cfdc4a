"""`mlwf`: the one entry point. `mlwf --help` lists the commands.

mlwf generate   write the demo dataset (seeded card transactions; switches for bad records and drift)
mlwf run --local [--dataset SPEC] [--data URI]   run the whole pipeline on this machine (kfp.local)
mlwf demo       generate the demo data if missing, run locally, print where to look
mlwf compile    write the pipeline package a Kubeflow cluster runs
mlwf submit     create a run on Kubeflow Pipelines (kfp.Client)
mlwf stop       stop the local model server
mlwf monitor --local   drift of the served traffic vs the champion; retrain on an alert (kfp.local)
mlwf drift-demo        replay drifted traffic to the served champion, detect the drift, retrain
mlwf schedule   create a recurring monitoring (or batch scoring: --pipeline scoring) run on Kubeflow Pipelines (cron)
mlwf score --local --model NAME@ALIAS --data URI --out URI   batch scoring to Parquet, bad rows quarantined
mlwf suite --dataset SPEC   write/update the validation suite beside the spec (SPEC.suite.json)
mlwf lineage DATASET|MODEL/VERSION   input files, suite, code and run behind a dataset or model version
mlwf readiness NAME@ALIAS   the production-readiness report of a model version (exit 1: a blocking item failed)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pipelines.compile import DEFAULT_PACKAGE, compile_all, pin_digest
from pipelines.demos import cmd_drift_demo, cmd_rollout_demo, demo_data_path
from pipelines.kfp_api import cron_with_seconds, kfp_client, parse_arguments, schedule_monitoring, training_arguments, with_gpu_placement
from pipelines.preflight import check_inputs
from pipelines.score_cli import SCHEDULED, add_score_command, schedule_target
from pipelines.summary import describe_step, fail, monitor_summary, run_summary


def cmd_generate(args: argparse.Namespace) -> int:
    from components.data.datagen import GenConfig, write

    out = args.out or str(demo_data_path())
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
        "engine": args.engine or "",
    }


def cmd_suite(args: argparse.Namespace) -> int:
    """Write or update the validation suite beside the spec (`--check`: only say whether it is current)."""
    from components.core.spec import SpecError, load_spec
    from components.data.suite import SuiteError, load_suite, write_suite

    try:
        if args.check:
            suite = load_suite(load_spec(args.dataset), args.dataset)
            print(f"{suite.path} is current (version {suite.version}, {len(suite.expectations)} expectations)")
            return 0
        path, suite, changed = write_suite(args.dataset)
    except (SuiteError, SpecError) as err:
        return fail(str(err))
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
                    return fail(
                        f"no row with {spec.entity_column} = {args.row!r} in dataset {spec.name} version {info['dataset_fingerprint'][:16]}"
                    )
                text += "\n" + "\n".join(
                    f"  row {args.row}: {r['file']} line {r['source_line']} (sha256 {r['sha256'][:16]})" for r in info["rows_found"]
                )
    except (lineage.LineageError, SpecError) as err:
        return fail(str(err))
    print(json.dumps(info, indent=2, default=str) if args.json else text)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    if not args.local:
        return fail(
            "`mlwf run` runs the pipeline on this machine only: add --local. For a Kubeflow cluster, write the "
            "package with `mlwf compile` and start a run with `mlwf submit --host <KFP API URL>`"
        )
    from components.core.spark import SparkUnavailable
    from pipelines.local import PipelineFailed, run_local

    source = args.data or str(demo_data_path())
    try:
        check_inputs(args.dataset, source, args.gate_policy, args.engine or "")
        print("running the training pipeline on this machine (kfp.local); each step's whole output goes to its log file", flush=True)
        run = run_local(_run_arguments(args, source), console=sys.stdout, describe=describe_step(args.epochs))
    except (PipelineFailed, FileNotFoundError, ValueError, SparkUnavailable) as err:
        return fail(str(err))
    print(run_summary(run))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    path = demo_data_path()
    if not path.exists() or args.regenerate:
        from components.data.datagen import GenConfig, write

        write(GenConfig(rows=args.rows, seed=7, bad_fraction=0.01), str(path))
        print(f"generated {args.rows} demo transactions (1% deliberately bad) in {path}")
    args.local, args.data = True, str(path)
    return cmd_run(args)


def cmd_compile(args: argparse.Namespace) -> int:
    image = args.image
    if args.digest:
        image = pin_digest(image or "ghcr.io/mlwf/components", args.digest)
    for written in compile_all(args.out, image):
        print(f"wrote {written}")
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    if not Path(args.package).exists():
        return fail(f"pipeline package not found: {args.package} (run `mlwf compile` first)")
    try:
        arguments = with_gpu_placement(args.package, parse_arguments(args.arg))
    except ValueError as err:
        return fail(str(err))
    client = kfp_client(args.host, args.namespace)
    run = client.create_run_from_pipeline_package(
        args.package, arguments=arguments, experiment_name=args.experiment, run_name=args.run_name, namespace=args.namespace
    )
    print(f"submitted run {run.run_id} in experiment {args.experiment!r}: {args.host.rstrip('/')}/#/runs/details/{run.run_id}")
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    from components.core.settings import get_settings
    from components.deployment.processes import stop_local

    stopped = 0
    for record in (Path(get_settings().state_dir) / "serving").glob("*/server.json"):
        stop_local(record)
        stopped += 1
    print(f"stopped {stopped} local model server(s)")
    return 0


def _monitor_arguments(args: argparse.Namespace, training: dict[str, Any]) -> dict[str, Any]:
    return {
        "model_name": args.model,
        "window_hours": args.window_hours,
        "psi_warn": args.psi_warn,
        "psi_alert": args.psi_alert,
        "ks_alpha": args.ks_alpha,
        "ks_min_d": args.ks_min_d,
        "min_rows": args.min_rows,
        "cooldown_hours": args.cooldown_hours,
        "labels_uri": args.labels or "",
        "pushgateway_url": args.pushgateway or "",
        "training_arguments": json.dumps(training),
    }


def cmd_monitor(args: argparse.Namespace) -> int:
    if not args.local:
        return fail("only --local runs here; on a cluster use `mlwf compile` and `mlwf schedule`")
    from components.core.settings import get_settings
    from pipelines.local import PipelineFailed, progress_to
    from pipelines.monitoring import run_monitoring_local

    try:
        training = training_arguments(
            {"dataset_spec": args.dataset, "source_uri": args.retrain_data or str(demo_data_path())}, args.retrain_arg
        )
        with progress_to(sys.stdout):  # a line per step; each step's output goes to its log file
            run = run_monitoring_local(_monitor_arguments(args, training))
    except (PipelineFailed, ValueError) as err:
        return fail(str(err))
    print(monitor_summary(run))
    print(f"{'Gauges (textfile):':<20} {Path(get_settings().state_dir) / 'monitoring' / 'metrics'}")
    return 0


def cmd_schedule(args: argparse.Namespace) -> int:
    package, experiment, job_name = schedule_target(args)
    if not Path(package).exists():
        return fail(f"pipeline package not found: {package} (run `mlwf compile` first)")
    try:
        # Both pipelines' parameters are scalars; a JSON object (training_arguments) travels as its text.
        params = {k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in parse_arguments(args.arg).items()}
        cron_with_seconds(args.cron)
    except ValueError as err:
        return fail(str(err))
    job = schedule_monitoring(kfp_client(args.host, args.namespace), package, args.cron, experiment, job_name, params, args.namespace)
    print(f"scheduled {job_name!r} ({cron_with_seconds(args.cron)}): recurring run {job.recurring_run_id}")
    return 0


def cmd_readiness(args: argparse.Namespace) -> int:
    """Write the readiness report (Markdown, HTML, JSON) of a model version; 1 when a blocking item fails."""
    from components.core.spec import SpecError
    from components.governance.readiness import ReadinessError
    from components.governance.report import run_readiness

    schedules = None
    if args.kfp_host:  # a drift schedule on the cluster counts as monitoring in place

        def schedules() -> list[str]:
            runs = kfp_client(args.kfp_host, args.namespace).list_recurring_runs(page_size=100, namespace=args.namespace)
            enabled = [r for r in runs.recurring_runs or [] if str(r.status) == "ENABLED"]
            return [f"{r.display_name} ({getattr(getattr(r.trigger, 'cron_schedule', None), 'cron', 'periodic')})" for r in enabled]

    try:
        written = run_readiness(args.ref, args.out, args.policy, args.dataset, schedules)
    except (ReadinessError, SpecError) as err:
        return fail(str(err))
    a = written.assessment
    for r in a.items:
        print(f"{r.status:<5} {r.severity:<9} {r.item:<15} {r.detail}")
    verdict = "READY" if a.ready else "NOT READY: blocking " + ", ".join(r.item for r in a.blocking_failures)
    print(f"{a.model} v{a.version}: {verdict}")
    print("report: " + ", ".join(written.files.values()))
    return 0 if a.ready else 1


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
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
    parser = argparse.ArgumentParser(prog="mlwf", description=__doc__, formatter_class=HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=text, description=text, formatter_class=HelpFormatter)

    gen = command("generate", "write the demo dataset")
    gen.add_argument("--rows", type=int, default=20_000, help="transactions to generate")
    gen.add_argument("--seed", type=int, default=7, help="random seed (the same seed writes the same data)")
    gen.add_argument("--bad-fraction", type=float, default=0.0, help="share of rows to corrupt (quarantine demo)")
    gen.add_argument("--drift", type=float, default=0.0, help="0..1, shift amounts and the channel/category mix")
    gen.add_argument("--out", help="CSV or Parquet path (default: the state directory's data/transactions.csv)")
    gen.set_defaults(func=cmd_generate)

    def run_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--dataset", default="transactions", help="dataset spec: a bundled name, a YAML path or s3:// URI")
        p.add_argument(
            "--epochs",
            type=int,
            default=30,
            help="maximum training epochs: early stopping ends training sooner when the validation ROC-AUC stops improving",
        )
        p.add_argument("--seed", type=int, default=42, help="training seed")
        p.add_argument("--gate-policy", default="", help="gate policy file (default: <dataset>.policy.yaml beside the spec)")
        p.add_argument(
            "--min-roc-auc",
            type=float,
            default=-1.0,
            help="override the policy's minimum ROC-AUC with a value >= 0 (default: -1, the policy file's value)",
        )
        p.add_argument(
            "--max-p99-latency-ms",
            type=float,
            default=-1.0,
            help="override the policy's per-row p99 latency budget with a value >= 0 (default: -1, the policy file's value)",
        )
        p.add_argument(
            "--max-regression",
            type=float,
            default=-1.0,
            help="override the policy's tolerance against the champion with a value >= 0 (default: -1, the policy file's value)",
        )
        p.add_argument(
            "--engine",
            choices=("pandas", "spark"),
            default=None,
            help="data engine of the validate step (default: MLWF_ENGINE, else pandas); spark needs Java 17",
        )

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

    comp = command("compile", "write the pipeline packages (training, monitoring and scoring)")
    comp.add_argument("--out", default=DEFAULT_PACKAGE, help="the training package; the monitoring and scoring ones are written beside it")
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
    demo_rollout.add_argument(
        "--broken", choices=["errors", "slow"], default="errors", help="errors: requests fail with 400; slow: answers are right but late"
    )
    demo_rollout.add_argument("--model", default="transactions_classifier", help="registered model name of the champion")
    demo_rollout.add_argument("--data", help="CSV whose latest rows are replayed as traffic (default: the demo data)")
    demo_rollout.set_defaults(func=cmd_rollout_demo)

    def monitor_options(p: argparse.ArgumentParser, window: float) -> None:
        p.add_argument("--model", default="transactions_classifier", help="registered model whose champion is monitored")
        p.add_argument("--window-hours", type=float, default=window, help="served traffic of this many past hours")
        p.add_argument("--cooldown-hours", type=float, default=24.0, help="no second retraining within this time")

    mon = command("monitor", "drift of the served traffic vs the champion; retrain on an alert")
    mon.add_argument(
        "--local", action="store_true", help="run on this machine with kfp.local (required: `mlwf schedule` runs on a cluster)"
    )
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

    sch = command("schedule", "create a recurring monitoring (or batch scoring) run on Kubeflow Pipelines")
    sch.add_argument("--pipeline", choices=sorted(SCHEDULED), default="monitoring", help="drift monitoring, or batch scoring")
    sch.add_argument("--host", required=True, help="KFP API endpoint, e.g. https://kubeflow.example.com/pipeline (required)")
    sch.add_argument("--namespace", default="mlwf", help="Kubernetes namespace of the runs")
    sch.add_argument("--experiment", help="KFP experiment the runs belong to (default: mlwf-monitoring, mlwf-scoring)")
    sch.add_argument("--job-name", help="name of the recurring run (default: mlwf-drift-monitor, mlwf-batch-scoring)")
    sch.add_argument("--cron", default="0 * * * *", help="cron expression (5 fields, or 6 with seconds first)")
    sch.add_argument("--package", help="compiled package (default: pipelines/compiled/<pipeline>.yaml)")
    sch.add_argument("--arg", action="append", default=[], metavar="NAME=VALUE", help="pipeline argument (repeatable)")
    sch.set_defaults(func=cmd_schedule)

    add_score_command(command)

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

    ready = command("readiness", "production-readiness report of a model version; exits 1 when a blocking item fails")
    ready.add_argument("ref", help="a model version: NAME@ALIAS (e.g. transactions_classifier@champion), NAME/VERSION or models:/...")
    ready.add_argument("--out", default="readiness", help="directory of readiness.md, readiness.html and readiness.json")
    ready.add_argument(
        "--policy", default="", help="readiness policy YAML (default: the bundled components/datasets/readiness.policy.yaml)"
    )
    ready.add_argument("--dataset", default="", help="dataset spec (default: the one the version's run names)")
    ready.add_argument("--kfp-host", default="", help="KFP API endpoint whose recurring runs count as a drift schedule (default: none)")
    ready.add_argument("--namespace", default="mlwf", help="Kubernetes namespace of the recurring runs")
    ready.set_defaults(func=cmd_readiness)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
