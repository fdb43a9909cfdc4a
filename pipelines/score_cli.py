"""`mlwf score`: batch scoring with a registered model version on this machine, and what `mlwf schedule` runs.

mlwf score --local --model NAME@ALIAS --data URI --out URI [--dataset SPEC] [--engine pandas]

Bad input stops it before any step starts, with one line and exit 2, and nothing written: a model reference that
resolves to nothing, input lacking a feature column, an output that is a directory.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pipelines.compile import MONITORING_PACKAGE, SCORING_PACKAGE
from pipelines.summary import fail

# What `mlwf schedule --pipeline` runs: its package and the default experiment and recurring run names.
SCHEDULED = {
    "monitoring": (MONITORING_PACKAGE, "mlwf-monitoring", "mlwf-drift-monitor"),
    "scoring": (SCORING_PACKAGE, "mlwf-scoring", "mlwf-batch-scoring"),
}
ENGINES = ("pandas",)  # the Spark engine is not wired into scoring yet: refused by argparse, not accepted and ignored


def _absolute(uri: str) -> str:
    """Local paths made absolute: every kfp.local step is a process of its own."""
    return uri if "://" in uri or not uri else str(Path(uri).resolve())


def cmd_score(args: argparse.Namespace) -> int:
    if not args.local:
        return fail(
            "`mlwf score` runs on this machine only: add --local. On a cluster: `mlwf schedule --pipeline scoring` "
            "(or `mlwf submit --package pipelines/compiled/scoring.yaml`)"
        )
    from components.scoring.batch import ScoringError
    from components.scoring.step import ScoringRequest, preflight
    from pipelines.local import PipelineFailed, progress_to
    from pipelines.scoring import run_scoring_local
    from pipelines.scoring_data import data_stage

    request = ScoringRequest(args.model, _absolute(args.data), _absolute(args.out), args.dataset)
    try:
        version = preflight(request, data_stage())
        print(f"scoring {request.data_uri} with {args.model} (version {version}) on this machine (kfp.local)", flush=True)
        with progress_to(sys.stdout):
            run = run_scoring_local(
                {"model": request.model_ref, "data_uri": request.data_uri, "out_uri": request.out_uri, "dataset_spec": request.dataset_spec}
            )
    except (ScoringError, PipelineFailed, ValueError) as err:
        return fail(str(err))
    meta: dict[str, Any] = run.metadata("score-op", "scores")
    print(f"{meta.get('rows_in', 0):,} rows in = {meta.get('scored', 0):,} scored + {meta.get('quarantined', 0):,} quarantined")
    print(f"{'Scores:':<12} {request.out_uri}")
    print(f"{'Quarantine:':<12} {run.metadata('score-op', 'quarantine').get('uri', '')}")
    print(
        f"{'Model:':<12} {meta.get('model_name')} v{meta.get('model_version')}; input fingerprint {meta.get('input_fingerprint', '')[:16]}"
    )
    return 0


def add_score_command(command: Any) -> None:
    """The `score` subcommand, on the parser `command(name, help)` adds it to."""
    score = command("score", "score a file of rows with a registered model version: Parquet out, bad rows quarantined beside it")
    score.add_argument("--local", action="store_true", help="run on this machine with kfp.local (required: on a cluster, `mlwf schedule`)")
    score.add_argument("--model", required=True, help="model version: NAME@ALIAS (e.g. transactions_classifier@champion) or NAME/VERSION")
    score.add_argument("--data", required=True, help="rows to score: a CSV/Parquet file, a directory or an s3:// prefix (label optional)")
    score.add_argument(
        "--out", required=True, help="the scores' Parquet file, local or s3://; quarantined rows go to NAME.quarantine.parquet"
    )
    score.add_argument("--dataset", default="", help="dataset spec whose suite checks the rows (default: the one the model was trained on)")
    score.add_argument("--engine", choices=ENGINES, default="pandas", help="data engine (only pandas for batch scoring so far)")
    score.set_defaults(func=cmd_score)


def schedule_target(args: argparse.Namespace) -> tuple[str, str, str]:
    """(package, experiment, recurring run name) of `mlwf schedule`: given ones, else the chosen pipeline's."""
    package, experiment, job_name = SCHEDULED[args.pipeline]
    return args.package or package, args.experiment or experiment, args.job_name or job_name
