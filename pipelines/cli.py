"""`mlwf`: the one entry point. `mlwf --help` lists the commands.

  mlwf generate   write the demo dataset (seeded card transactions; switches for bad records and drift)
  mlwf run --local [--dataset SPEC] [--data URI]   run the whole pipeline on this machine (kfp.local)
  mlwf demo       generate the demo data if missing, run locally, print where to look
  mlwf compile    write the pipeline package a Kubeflow cluster runs
  mlwf submit     create a run on Kubeflow Pipelines (kfp.Client)
  mlwf stop       stop the local model server
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


def _fail(message: str) -> int:
    print(f"mlwf: error: {message}", file=sys.stderr)
    return 2


def _demo_data_path() -> Path:
    from components.settings import get_settings

    return Path(get_settings().state_dir) / "data" / "transactions.csv"


def cmd_generate(args: argparse.Namespace) -> int:
    from components.datagen import GenConfig, write

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
        "min_roc_auc": args.min_roc_auc,
        "max_p99_latency_ms": args.max_p99_latency_ms,
        "max_regression": args.max_regression,
    }


def _check_inputs(dataset: str, source: str) -> None:
    """Fail in one line before any step starts: a missing spec or input is not worth a pipeline run."""
    from components.ingest import read_checked
    from components.spec import load_spec

    read_checked(load_spec(dataset), source)


def _summary(run: Any) -> str:
    from components.settings import get_settings

    settings = get_settings()
    lines = [f"\nPipeline finished in {run.seconds:.1f}s. Run directory: {run.run_dir}", "", "Steps (wall time, process start-up included):"]
    steps = run.step_seconds()
    for name, seconds in steps.items():
        lines.append(f"  {name:<14} {seconds:6.1f}s  {seconds / max(run.seconds, 1e-9):5.1%}")
    # Copies with an .html name, so a browser opens them; the artifacts stay where Kubeflow put them.
    reports = Path(settings.state_dir) / "reports"
    for task, artifact, label, name in (("validate-op", "report", "Validation report", "validation.html"),
                                        ("evaluate-op", "report", "Evaluation report", "evaluation.html")):
        if run.ran(task) and run.artifact(task, artifact).exists():
            reports.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(run.artifact(task, artifact), reports / name)
            lines.append(f"{label + ':':<20} {reports / name}")
    if run.ran("validate-op"):
        lines.append(f"{'Quarantined rows:':<20} {run.artifact('validate-op', 'quarantine')} (Parquet, with the failed expectations)")
    db = settings.mlflow_tracking_uri
    lines.append(f"{'MLflow runs:':<20} mlflow ui --backend-store-uri {db}   (then open http://127.0.0.1:5000)")
    if run.ran("deploy-op"):
        deployment = run.artifact("deploy-op", "deployment").read_text()
        lines.append("\n" + deployment)
    else:
        lines.append("\nThe gate did not pass, so nothing was deployed: the evaluation report says why.")
    return "\n".join(lines)


def cmd_run(args: argparse.Namespace) -> int:
    if not args.local:
        return _fail("only --local runs here; use `mlwf compile` and `mlwf submit` for a cluster")
    from pipelines.local import PipelineFailed, run_local

    source = args.data or str(_demo_data_path())
    try:
        _check_inputs(args.dataset, source)
        run = run_local(_run_arguments(args, source))
    except (PipelineFailed, FileNotFoundError, ValueError) as err:
        return _fail(str(err))
    print(_summary(run))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    path = _demo_data_path()
    if not path.exists() or args.regenerate:
        from components.datagen import GenConfig, write

        write(GenConfig(rows=args.rows, seed=7, bad_fraction=0.01), str(path))
        print(f"generated {args.rows} demo transactions (1% deliberately bad) in {path}")
    args.local, args.data = True, str(path)
    return cmd_run(args)


def compile_package(out: str, image: str | None = None) -> str:
    """Compile the training pipeline and write the components image into it (placeholder -> configured)."""
    import yaml
    from kfp import compiler

    from components.settings import get_settings
    from components.steps import PLACEHOLDER_IMAGE
    from pipelines.training import training_pipeline

    image = image or get_settings().components_image
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(out).with_suffix(".tmp.yaml")
    compiler.Compiler().compile(training_pipeline, str(tmp))
    docs = list(yaml.safe_load_all(tmp.read_text()))
    for executor in docs[0]["deploymentSpec"]["executors"].values():
        if executor.get("container", {}).get("image") == PLACEHOLDER_IMAGE:
            executor["container"]["image"] = image
    text = yaml.safe_dump_all(docs, sort_keys=True)
    if PLACEHOLDER_IMAGE in text:
        raise RuntimeError("a step still names the placeholder image after compiling")
    Path(out).write_text("# Generated by `mlwf compile`; do not edit.\n" + text)
    tmp.unlink()
    return out


def cmd_compile(args: argparse.Namespace) -> int:
    image = args.image
    if args.digest:
        image = f"{(image or '').split(':')[0] or 'ghcr.io/mlwf/components'}@{args.digest}"
    print(f"wrote {compile_package(args.out, image)}")
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


def cmd_submit(args: argparse.Namespace) -> int:
    if not Path(args.package).exists():
        return _fail(f"pipeline package not found: {args.package} (run `mlwf compile` first)")
    try:
        arguments = parse_arguments(args.arg)
    except ValueError as err:
        return _fail(str(err))
    client = kfp_client(args.host, args.namespace)
    run = client.create_run_from_pipeline_package(args.package, arguments=arguments, experiment_name=args.experiment,
                                                  run_name=args.run_name, namespace=args.namespace)
    print(f"submitted run {run.run_id} in experiment {args.experiment!r}: {args.host.rstrip('/')}/#/runs/details/{run.run_id}")
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    from components.deploy import stop_local
    from components.settings import get_settings

    stopped = 0
    for record in (Path(get_settings().state_dir) / "serving").glob("*/server.json"):
        stop_local(record)
        stopped += 1
    print(f"stopped {stopped} local model server(s)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlwf", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="write the demo dataset")
    gen.add_argument("--rows", type=int, default=20_000)
    gen.add_argument("--seed", type=int, default=7)
    gen.add_argument("--bad-fraction", type=float, default=0.0, help="share of rows to corrupt (quarantine demo)")
    gen.add_argument("--drift", type=float, default=0.0, help="0..1, shift amounts and the channel/category mix")
    gen.add_argument("--out", help="CSV or Parquet path (default: the state directory's data/transactions.csv)")
    gen.set_defaults(func=cmd_generate)

    def run_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--dataset", default="transactions", help="dataset spec: a bundled name, a YAML path or s3:// URI")
        p.add_argument("--epochs", type=int, default=30)
        p.add_argument("--seed", type=int, default=42)
        p.add_argument("--min-roc-auc", type=float, default=0.75)
        p.add_argument("--max-p99-latency-ms", type=float, default=5.0)
        p.add_argument("--max-regression", type=float, default=0.01)

    run = sub.add_parser("run", help="run the training pipeline")
    run.add_argument("--local", action="store_true", help="on this machine with kfp.local")
    run.add_argument("--data", help="input CSV/Parquet, local or s3:// (default: the generated demo data)")
    run_options(run)
    run.set_defaults(func=cmd_run)

    demo = sub.add_parser("demo", help="generate demo data if missing and run the pipeline locally")
    demo.add_argument("--rows", type=int, default=20_000)
    demo.add_argument("--regenerate", action="store_true")
    run_options(demo)
    demo.set_defaults(func=cmd_demo)

    comp = sub.add_parser("compile", help="write the pipeline package")
    comp.add_argument("--out", default=DEFAULT_PACKAGE)
    comp.add_argument("--image", help="components image (default: MLWF_COMPONENTS_IMAGE or the release tag)")
    comp.add_argument("--digest", help="pin the image by digest (sha256:...)")
    comp.set_defaults(func=cmd_compile)

    sub_ = sub.add_parser("submit", help="create a run on Kubeflow Pipelines")
    sub_.add_argument("--host", required=True, help="KFP API endpoint, e.g. https://kubeflow.example.com/pipeline")
    sub_.add_argument("--namespace", default="mlwf")
    sub_.add_argument("--experiment", default="mlwf")
    sub_.add_argument("--run-name", default=None)
    sub_.add_argument("--package", default=DEFAULT_PACKAGE)
    sub_.add_argument("--arg", action="append", default=[], metavar="NAME=VALUE", help="pipeline argument (repeatable)")
    sub_.set_defaults(func=cmd_submit)

    stop = sub.add_parser("stop", help="stop the local model server")
    stop.set_defaults(func=cmd_stop)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
