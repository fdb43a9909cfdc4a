"""The validate step's Spark work as a SparkApplication on a cluster: the driver's entry and the step's side.

Driver (`python spark_entry.py validate --work <prefix>`, run by spark-submit in the Spark image): reads the
request the step wrote under the work prefix, validates on Spark (spark_validate.validate_spark) and writes the
outcome under a fresh temporary prefix (`attempts/<id>/`). Only then does it write the commit record
(`COMMITTED.json`: which attempt, and the sha256 of each file), in one atomic write. Object stores have no
rename, so the commit record plays its part: a reader sees an attempt's files only through it, so a driver
that dies half-way leaves nothing visible, and a retry's attempt never mixes with an earlier one's files.
A driver that fails writes its one-line error to `driver-error.json` first, so the step can report the
driver's own message (the operator's says only which exit code the container had).

Step (`validate_on_cluster`): writes the request, creates the SparkApplication and waits for it
(components/core/spark_application.py), then reads the committed outcome back as a ValidationOutcome. A
failed or timed-out application removes the commit record, so nothing of it is read afterwards.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import uuid
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

STEP = "validate"
REQUEST, COMMIT, DRIVER_ERROR = "request.json", "COMMITTED.json", "driver-error.json"
FILES = ("valid.parquet", "quarantined.parquet", "outcome.json")
FORMAT = "mlwf.spark-output/1"


def _storage() -> Any:
    from components.core import storage

    return storage


def work_prefix(state_dir: str, name: str) -> str:
    """Where one application's request, attempts and commit record live (under the state directory)."""
    return _storage().join(state_dir, "spark", name)


def _remove(uri: str) -> None:
    """Remove one file; absent is fine (best effort: what it guards is read only through the commit record)."""
    storage = _storage()
    if storage.is_s3(uri):
        bucket, key = storage.split_s3(uri)
        storage.s3_client().delete_object(Bucket=bucket, Key=key)
    else:
        Path(uri).unlink(missing_ok=True)


def _remove_prefix(uri: str) -> None:
    storage = _storage()
    if storage.is_s3(uri):
        bucket, prefix = storage.split_s3(uri)
        client = storage.s3_client()
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix.rstrip("/") + "/"):
            for obj in page.get("Contents", []):
                client.delete_object(Bucket=bucket, Key=obj["Key"])
    else:
        import shutil

        shutil.rmtree(uri, ignore_errors=True)


# ------------------------------------------------------------------ the driver


def _spark_path(uri: str) -> str:
    """Spark's Hadoop connector reads S3 as s3a://; local paths are left as they are."""
    return "s3a://" + uri[len("s3://") :] if uri.startswith("s3://") else uri


def _session() -> Any:
    """The driver's session: spark-submit (the operator) gives the master and the executors; run by hand it is local.

    The settings the results depend on are set here as well as in the application's sparkConf, so the entry
    gives the same answer however it is started. S3 goes through the s3a connector: its endpoint from the
    settings (AWS_ENDPOINT_URL, MinIO's needs path-style addressing); its credentials from the connector's
    default chain (the environment the Secret fills, or the service account's web identity), never from a value
    in the configuration.
    """
    from pyspark.sql import SparkSession

    builder = (
        SparkSession.builder.appName("mlwf-validate")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.ansi.enabled", "false")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
    )
    endpoint = os.environ.get("AWS_ENDPOINT_URL", "").strip()
    if endpoint:
        builder = builder.config("spark.hadoop.fs.s3a.endpoint", endpoint).config("spark.hadoop.fs.s3a.path.style.access", "true")
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("WARN")
    return session


def write_outcome(outcome: Any, attempt: str) -> dict[str, str]:
    """The outcome's files under `attempt`; returns their sha256s."""
    storage = _storage()
    meta = {
        "failures": outcome.failures,
        "suite": outcome.suite,
        "examples": outcome.examples,
        "verdicts": outcome.verdicts,
        "suite_version": outcome.suite_version,
        "per_file": outcome.per_file,
        # Parquet keeps the values, not whether a text column was an object or a string column: the reader restores it
        "quarantine_dtypes": {str(c): str(t) for c, t in outcome.quarantined.dtypes.items()},
    }
    blobs = {
        "valid.parquet": storage.to_parquet_bytes(outcome.valid_table),
        "quarantined.parquet": storage.to_parquet_bytes(outcome.quarantined),
        # default=str: an example row may hold a timestamp; the report prints it as text either way
        "outcome.json": json.dumps(meta, sort_keys=True, default=str).encode(),
    }
    for name, data in blobs.items():
        storage.write_bytes(storage.join(attempt, name), data)
    return {name: hashlib.sha256(data).hexdigest() for name, data in blobs.items()}


def run_driver(work: str, spark: Any = None) -> str:
    """Validate what `work`'s request names and commit the outcome; returns the committed attempt's prefix."""
    from components.core.spec import load_spec
    from components.data.spark_validate import validate_spark
    from components.data.suite import load_suite

    storage = _storage()
    request = json.loads(storage.read_bytes(storage.join(work, REQUEST)))
    if request.get("step") != STEP:
        raise ValueError(f"{storage.join(work, REQUEST)} asks for step {request.get('step')!r}; this entry runs {STEP!r}")
    spec = load_spec(request["spec"])
    suite = load_suite(spec, request["spec"])  # missing or stale: refused here too, before any work
    outcome = validate_spark(
        spec,
        _spark_path(request["raw"]),
        run_id=request["run_id"],
        source=request["source"],
        suite=suite,
        run_ids=request.get("run_ids") or {},
        spark=spark or _session(),
    )
    attempt = storage.join(work, "attempts", uuid.uuid4().hex)
    try:
        hashes = write_outcome(outcome, attempt)
    except BaseException:
        _remove_prefix(attempt)  # never committed: nothing reads it, and it takes no space
        raise
    record = {"format": FORMAT, "step": STEP, "attempt": attempt, "sha256": hashes, "rows": outcome.rows}
    storage.write_bytes(storage.join(work, COMMIT), json.dumps(record, sort_keys=True).encode())
    log.info("validate on Spark: %d rows, %d quarantined, committed %s", outcome.rows, len(outcome.quarantined), attempt)
    return attempt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="spark_entry", description="A data step's Spark work, run as a SparkApplication's driver.")
    parser.add_argument("step", choices=[STEP])
    parser.add_argument("--work", required=True, help="the work prefix the step wrote its request under")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        run_driver(args.work)
    except Exception as err:
        message = " ".join(f"{type(err).__name__}: {err}".split())[:2000]
        try:
            _storage().write_bytes(_storage().join(args.work, DRIVER_ERROR), json.dumps({"error": message}).encode())
        except Exception as write_err:  # the step then reports the operator's message alone
            log.error("could not record the driver's error: %s", write_err)
        log.error("%s", message)
        return 1
    return 0


# ------------------------------------------------------------------ the step


def read_committed(work: str) -> Any:
    """The committed outcome as a ValidationOutcome; refuses a missing commit record or a file that does not match it."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from components.data.outcome import ValidationFailed, ValidationOutcome

    storage = _storage()
    commit = storage.join(work, COMMIT)
    if not storage.exists(commit):
        raise ValidationFailed(f"the SparkApplication completed but committed no output under {work} (no {COMMIT})")
    record = json.loads(storage.read_bytes(commit))
    if record.get("format") != FORMAT or record.get("step") != STEP:
        raise ValidationFailed(f"{commit} is not a {STEP} output record ({record.get('format')}, {record.get('step')})")
    blobs = {}
    for name in FILES:
        data = storage.read_bytes(storage.join(record["attempt"], name))
        if hashlib.sha256(data).hexdigest() != record["sha256"].get(name):
            raise ValidationFailed(f"{storage.join(record['attempt'], name)} does not match its sha256 in {commit}")
        blobs[name] = data
    meta = json.loads(blobs["outcome.json"])
    valid = pq.read_table(pa.BufferReader(blobs["valid.parquet"]))
    quarantined = pd.read_parquet(pa.BufferReader(blobs["quarantined.parquet"]))
    with pd.option_context("future.infer_string", True):  # "str" means what it means where validate built the frame
        quarantined.columns = pd.Index([str(c) for c in quarantined.columns])
        for column, dtype in meta["quarantine_dtypes"].items():
            if str(quarantined[column].dtype) != dtype:
                quarantined[column] = quarantined[column].astype(dtype)
    return ValidationOutcome(
        valid_table=valid,
        quarantined=quarantined,
        failures={k: int(v) for k, v in meta["failures"].items()},
        suite=meta["suite"],
        examples=meta["examples"],
        verdicts=meta["verdicts"],
        suite_version=meta["suite_version"],
        per_file=meta["per_file"],
    )


def run_validation_application(
    work: str,
    spec_ref: str,
    raw: str,
    run_id: str,
    source: str,
    run_ids: dict[str, str] | None = None,
    settings: Any = None,
    api_client: Any = None,
    poll_s: float = 10.0,
) -> Any:
    """Validate `raw` (a path the driver and executors can read) as a SparkApplication; the committed ValidationOutcome.

    Fails with the driver's message (or the operator's, or the deadline) and leaves no committed output.
    """
    from components.core.settings import get_settings
    from components.core.spark_application import (
        SparkApplicationError,
        application_name,
        build_spark_application,
        run_spark_application,
    )

    settings = settings or get_settings()
    storage = _storage()
    name = application_name(run_id, STEP)
    request = {"step": STEP, "spec": spec_ref, "raw": raw, "run_id": run_id, "source": source, "run_ids": run_ids or {}}
    # Rewritten on a retry with the same content (the run's inputs do not change); a stale error is not ours.
    storage.write_bytes(storage.join(work, REQUEST), json.dumps(request, sort_keys=True).encode())
    _remove(storage.join(work, DRIVER_ERROR))
    body = build_spark_application(name, settings.spark_namespace, [STEP, "--work", work], settings)
    try:
        run_spark_application(body, settings.spark_timeout_s, api_client=api_client, poll_s=poll_s)
    except SparkApplicationError as err:
        _remove(storage.join(work, COMMIT))  # whatever the failed application committed is not to be read
        error_file = storage.join(work, DRIVER_ERROR)
        driver = json.loads(storage.read_bytes(error_file)).get("error") if storage.exists(error_file) else None
        raise SparkApplicationError(f"{err}; driver: {driver}" if driver else str(err)) from err
    return read_committed(work)


def validate_on_cluster(
    spec_ref: str,
    raw_path: str,
    run_id: str,
    source: str,
    run_ids: dict[str, str] | None = None,
    api_client: Any = None,
    poll_s: float = 10.0,
) -> Any:
    """The validate step's Spark work on the cluster: what validate_step calls in place of validate_spark there.

    The driver and executors read and write under the s3:// state directory; ingest's output (a local file
    in the step's pod) is copied there first.
    """
    from components.core.settings import get_settings
    from components.core.spark_application import SparkApplicationError, application_name

    settings = get_settings()
    storage = _storage()
    if not storage.is_s3(settings.state_dir):
        raise SparkApplicationError(
            f"validate as a SparkApplication needs MLWF_STATE_DIR on s3:// (the pods share it), got {settings.state_dir}"
        )
    work = work_prefix(settings.state_dir, application_name(run_id, STEP))
    raw = raw_path
    if not storage.is_s3(raw_path):
        raw = storage.join(work, "raw.parquet")
        bucket, key = storage.split_s3(raw)
        storage.s3_client().upload_file(raw_path, bucket, key)  # streamed: the input may not fit in memory twice
    return run_validation_application(work, spec_ref, raw, run_id, source, run_ids, settings, api_client, poll_s)


if __name__ == "__main__":
    # Run as a file (spark-submit's primary resource), Python puts this file's folder first on sys.path, where
    # the stage's modules would shadow same-named top-level ones: the project is imported as the package.
    here = str(Path(__file__).resolve().parent)
    sys.path[:] = [p for p in sys.path if str(Path(p or ".").resolve()) != here]
    sys.exit(main())
