"""The data steps: ingest new or changed files, validate every row (quarantine the rest).

Each function takes the step's KFP artifacts (anything with `.path` and `.metadata`), calls the stage's
logic, and records outputs and metadata. Tests call these directly with artifacts on local paths;
pipelines/ops.py wraps them as @dsl.component bodies.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from components.core.logs import log_metrics, setup_logging

log = logging.getLogger("mlwf")


def ingest_step(dataset_spec: str, source_uri: str, raw: Any, run_id: str = "local") -> tuple[int, str]:
    """Ingest new or changed input files; `raw` gets the union of every file of the source (see ingest.py)."""
    setup_logging()
    from components.core.settings import get_settings
    from components.core.spec import load_spec
    from components.data.ingest import ingest
    from components.data.suite import load_suite

    started = time.perf_counter()
    spec = load_spec(dataset_spec)
    suite = load_suite(spec, dataset_spec)  # missing or stale: fail before reading anything
    result = ingest(spec, source_uri, raw.path, get_settings().state_dir, run_id=run_id, suite_version=suite.version)
    raw.metadata.update(
        {
            "rows": result.rows,
            "source": source_uri,
            "dataset_fingerprint": result.fingerprint,
            "sha256": result.fingerprint,
            "suite_version": suite.version,
            "ingested_at": result.ingested_at,
            "run_id": run_id,
            "files": len(result.files),
            "new_files": len(result.new_files),
            "skipped_files": len(result.skipped_files),
            "duplicate_files": len(result.duplicate_files),
        }
    )
    for dup in result.duplicate_files:
        log.warning("ingest: %s has the same content as another input file: left out", dup)
    log.info(
        "ingest: %d rows from %d file(s) of %s (%d new, %d unchanged and skipped), dataset version %s in %.1fs",
        result.rows,
        len(result.files),
        source_uri,
        len(result.new_files),
        len(result.skipped_files),
        result.fingerprint[:16],
        time.perf_counter() - started,
    )
    return result.rows, result.fingerprint


def validate_step(
    dataset_spec: str, run_id: str, raw: Any, valid: Any, quarantine: Any, report: Any, metrics: Any, engine: str = ""
) -> int:
    """`engine`: pandas or spark; empty takes the MLWF_ENGINE setting (the pipeline parameter overrides it)."""
    setup_logging()
    import hashlib

    import pandas as pd

    from components.core import lineage, paths, storage
    from components.core.settings import engine as checked_engine
    from components.core.settings import get_settings
    from components.core.spec import load_spec
    from components.data.report import report_html
    from components.data.suite import load_suite
    from components.data.validate import enforce_threshold, validate

    started = time.perf_counter()
    settings = get_settings()
    engine = checked_engine(engine) if engine else settings.engine
    # On a cluster the Spark work runs in a SparkApplication (its own image); locally, in this process (needs Java).
    on_cluster = engine == "spark" and not settings.is_local
    if engine == "spark" and not on_cluster:  # pyspark or Java missing: one line before any work
        from components.core.spark import require_spark

        require_spark()
    state = settings.state_dir
    spec = load_spec(dataset_spec)
    suite = load_suite(spec, dataset_spec)
    source = str(raw.metadata.get("source", raw.uri))
    fingerprint = str(raw.metadata.get("dataset_fingerprint") or raw.metadata.get("sha256", "unknown"))
    manifest = lineage.manifest(state, spec.name, fingerprint)
    # The run that first validated each file under this suite is written on its quarantined rows, so a
    # rerun on the same input writes byte-identical records.
    run_ids = {
        f["uri"]: str(
            lineage.write_once(paths.first_validation_run_path(state, spec.name, suite.version, f["sha256"]), {"run_id": run_id})["run_id"]
        )
        for f in manifest["files"]
    }
    if on_cluster:  # a SparkApplication per step (components/data/spark_entry.py): created once, waited on
        from components.data.spark_entry import validate_on_cluster

        outcome = validate_on_cluster(dataset_spec, raw.path, run_id=run_id, source=source, run_ids=run_ids)
    elif engine == "spark":  # the executors read ingest's Parquet; the driver gets the outcome
        from components.data.spark_validate import validate_spark

        outcome = validate_spark(spec, raw.path, run_id=run_id, source=source, suite=suite, run_ids=run_ids)
    else:
        with pd.option_context("future.infer_string", True):  # text arrives as Arrow strings: no Python objects per cell
            frame = pd.read_parquet(raw.path)
        outcome = validate(spec, frame, run_id=run_id, source=source, suite=suite, run_ids=run_ids)
    record = {
        "dataset": spec.name,
        "dataset_fingerprint": fingerprint,
        "suite_version": suite.version,
        "spec_sha256": suite.spec_sha256,
        "code_version": manifest["code_version"],
        "first_run_id": manifest["run_id"],
        "files": [{"uri": f["uri"], "sha256": f["sha256"], "rows": f["rows"]} for f in manifest["files"]],
    }
    valid_bytes = storage.to_parquet_bytes(outcome.valid_table, {"mlwf.lineage": json.dumps(record, sort_keys=True)})
    quarantined = storage.to_parquet_bytes(outcome.quarantined, {"mlwf.lineage": json.dumps(record, sort_keys=True)})
    # The quarantine store outlives the run: keyed by the dataset version, so a rerun rewrites the same
    # bytes and never duplicates; a new input file makes a new version.
    store_path = paths.quarantine_path(state, spec.name, fingerprint)
    storage.write_bytes(store_path, quarantined)
    storage.write_bytes(quarantine.path, quarantined)
    storage.write_bytes(valid.path, valid_bytes)
    storage.write_bytes(
        report.path, report_html(spec, outcome, source, {**record, "run_id": run_id, "quarantine_store": store_path}).encode()
    )
    lineage.write_once(
        paths.validation_path(state, spec.name, fingerprint),
        {
            **{k: v for k, v in record.items() if k != "files"},
            "rows": outcome.rows,
            "valid": outcome.valid_table.num_rows,
            "quarantined": len(outcome.quarantined),
            "failures": outcome.failures,
            "quarantine_store": store_path,
            "valid_sha256": hashlib.sha256(valid_bytes).hexdigest(),
            "run_id": run_id,
        },
    )
    values = {
        "rows": outcome.rows,
        "valid": outcome.valid_table.num_rows,
        "quarantined": len(outcome.quarantined),
        "bad_fraction": outcome.bad_fraction,
        "files": len(manifest["files"]),
    }
    values.update({f"failed.{k}": v for k, v in outcome.failures.items()})
    log_metrics(metrics, values)
    lineage_meta = {**{k: v for k, v in record.items() if k != "files"}, "run_id": run_id, "input_files": json.dumps(record["files"])}
    valid.metadata.update({"rows": outcome.valid_table.num_rows, "source_sha256": fingerprint, **lineage_meta})
    quarantine.metadata.update({"rows": len(outcome.quarantined), "store": store_path, **lineage_meta})
    warning = enforce_threshold(spec, outcome)  # raises above the limit, after the quarantine is safely written
    if warning:
        log.warning("validate: %s; see %s", warning, store_path)
    log.info(
        "validate: %d valid, %d quarantined (suite %s) in %.1fs",
        outcome.valid_table.num_rows,
        len(outcome.quarantined),
        suite.version,
        time.perf_counter() - started,
    )
    return int(outcome.valid_table.num_rows)
