"""Validate on Spark: the same outcome as validate.validate, with the per-row work done by the executors.

The rows are parsed and checked by Spark (spark_checks.py: one boolean column per expectation, computed
once and cached); the driver receives only the failure counts, the quarantined rows and the valid rows
(ValidationOutcome holds them as a pandas frame and an Arrow table, as the pandas engine's does). GX's
COMPLETE result format would collect every failing row on the driver, so GX runs on Spark with BASIC
only, to cross-check each expectation's unexpected count against the column expressions: any
disagreement stops the run naming the expectation, as gx.cross_check does on the pandas engine.

Rows come back in input order (the Parquet row index), so the quarantine and the valid table equal the
pandas engine's on the same input; conservation (rows in = valid + quarantined, each input row in
exactly one) is checked by validate.check_conservation.
"""

from __future__ import annotations

import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from components.core.spec import EVENT_TIMESTAMP, LABEL, SOURCE_LINE, DatasetSpec
from components.data.gx import unique_ids
from components.data.outcome import ValidationFailed, ValidationOutcome
from components.data.spark_checks import POS, prepare_spark, spark_masks
from components.data.spark_checks import source as carried
from components.data.suite import INGESTED_AT, RAW, SOURCE_FILE, Suite, canonical_label, expectation_id, suite_from_spec
from components.data.validate import check_conservation

FLAG = "__fails_"  # prefix of the per-expectation verdict columns (FLAG + position in the suite)


def validate_spark(
    spec: DatasetSpec,
    raw: Any,
    run_id: str,
    source: str,
    now: datetime | None = None,
    suite: Suite | None = None,
    run_ids: dict[str, str] | None = None,
    spark: Any = None,
) -> ValidationOutcome:
    """Check every row of `raw` (ingest's output: a Parquet file's path, or the frame itself) on Spark.

    The arguments mean what they mean to validate.validate; `spark` is the session (default: a local one).
    """
    from components.core.spark import local_session

    spark = spark or local_session()
    suite = suite or suite_from_spec(spec)
    ids = unique_ids(suite.expectations)
    with tempfile.TemporaryDirectory(prefix="mlwf-spark-") as tmp:
        frame = _read(spark, raw, tmp)
        columns = [c for c in frame.columns if c != POS]  # ingest's columns, in its order
        prepared = prepare_spark(spec, frame, now)
        masks = spark_masks(suite.expectations, prepared)
        flags = [masks[i].alias(f"{FLAG}{n}") for n, i in enumerate(ids)]
        checked = prepared.select("*", *flags)
        bad = _any_flag(len(ids))
        checked = checked.withColumn("__bad", bad).persist()
        try:
            failures = _counts(ids, checked)  # the first pass: parses, checks and caches every row
            # GX reads the cached rows in a second thread while this one collects the outputs: GX's
            # driver-side work per expectation overlaps the executors' (as gx_in_background on pandas)
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="gx-spark") as pool:
                pending = pool.submit(gx_counts, prepared.columns, checked, suite.expectations)
                outcome = _outcome(spec, suite, ids, columns, checked, failures, run_id, source, run_ids)
                keys = _keys(checked, columns)
                verdicts = pending.result()
            cross_check_counts(suite.expectations, outcome.failures, verdicts)
            outcome.verdicts = {k: v[0] for k, v in verdicts.items()}
            check_conservation(keys, outcome, source)
        finally:
            checked.unpersist()
    return outcome


def _read(spark: Any, raw: Any, tmp: str) -> Any:
    """The input as a Spark frame with POS, its position (pandas' row order). A frame goes through Parquet."""
    from pyspark.sql import functions as F

    if isinstance(raw, pd.DataFrame):
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = os.path.join(tmp, "raw.parquet")
        # microseconds: Spark 4 cannot read the nanosecond timestamps pandas writes by default
        pq.write_table(pa.Table.from_pandas(raw.reset_index(drop=True), preserve_index=False), path, coerce_timestamps="us")
        raw = path
    frame = spark.read.parquet(str(raw))
    if len(frame.inputFiles()) > 1:  # the row index counts within a file: several would need a file order too
        raise ValidationFailed(f"engine spark reads ingest's output, one Parquet file; {raw} holds several")
    return frame.select("*", F.col("_metadata.row_index").alias(POS))


def _any_flag(n: int) -> Any:
    from pyspark.sql import functions as F

    out = F.lit(False)
    for i in range(n):
        out = out | F.col(f"{FLAG}{i}")
    return out


def _counts(ids: list[str], checked: Any) -> dict[str, int]:
    """Failing rows per expectation id, in one aggregation."""
    from pyspark.sql import functions as F

    counts = checked.agg(*[F.sum(F.col(f"{FLAG}{n}").cast("long")).alias(str(n)) for n in range(len(ids))]).collect()[0]
    return {i: int(counts[str(n)] or 0) for n, i in enumerate(ids)}


def _outcome(
    spec: DatasetSpec,
    suite: Suite,
    ids: list[str],
    columns: list[str],
    checked: Any,
    failures: dict[str, int],
    run_id: str,
    source_name: str,
    run_ids: dict[str, str] | None,
) -> ValidationOutcome:
    from pyspark.sql import functions as F

    has_files = SOURCE_FILE in columns

    # the quarantined rows, in input order, with their values as they arrived and one verdict per expectation
    kept = [c for c in columns if c != INGESTED_AT]
    bad = (
        checked.filter("__bad")
        .orderBy(POS)
        .select(*[F.col(carried(c)).alias(c) for c in kept], *[F.col(f"{FLAG}{n}") for n in range(len(ids))])
        .toArrow()
    )
    flags = np.zeros((bad.num_rows, len(ids)), dtype=bool)
    for n in range(len(ids)):
        flags[:, n] = bad.column(f"{FLAG}{n}").to_numpy()
    index = pd.RangeIndex(bad.num_rows)
    out = {c: pd.Series(_values(bad.column(c)), index=index, dtype=_dtype(bad.column(c))) for c in kept if c != SOURCE_FILE}
    # reasons in suite order, so they read the same every run (and on either engine)
    out["failed_expectations"] = pd.Series(["; ".join(i for i, f in zip(ids, row) if f) for row in flags], index=index, dtype=object)
    files = _values(bad.column(SOURCE_FILE)) if has_files else np.full(bad.num_rows, source_name, dtype=object)
    out["source"] = pd.Series(files, index=index, dtype=object)
    out["run_id"] = pd.Series([(run_ids or {}).get(f, run_id) for f in files], index=index, dtype=object)
    with pd.option_context("future.infer_string", True):  # as validate builds it (under gx_settings): same column index
        quarantined = pd.DataFrame(out, index=index)

    # the report's examples: each expectation's first three failing rows, as the pandas engine picks them
    sample = bad.select(kept).to_pandas().astype(object)
    sample = sample.where(sample.notna(), None)
    records = sample.to_dict("records")
    examples = {i: [records[r] for r in np.flatnonzero(flags[:, n])[:3]] for n, i in enumerate(ids) if flags[:, n].any()}

    return ValidationOutcome(
        valid_table=_valid_table(spec, checked, columns, source_name),
        quarantined=quarantined,
        failures=failures,
        suite=suite.expectations,
        examples=examples,
        suite_version=suite.version,
        per_file=_per_file(checked, has_files, source_name),
    )


def _values(column: Any) -> np.ndarray:
    """An Arrow column as numpy: text as objects with None for nulls (as validate writes them), numbers as they are."""
    return column.to_numpy(zero_copy_only=False)


def _dtype(column: Any) -> Any:
    """pandas' dtype for a quarantine column: validate keeps numbers' own dtype and writes everything else as objects."""
    import pyarrow as pa

    t = column.type
    return None if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) else object


def _valid_table(spec: DatasetSpec, checked: Any, columns: list[str], source_name: str) -> Any:
    """The valid rows, in input order, typed as validate._valid_table types them (timestamps in ns, label int8)."""
    import pyarrow as pa
    from pyspark.sql import functions as F

    positive = canonical_label(spec.positive)
    audit = [a for a in spec.audit_only if a in columns]
    select = [
        F.col(spec.entity_column),
        F.col(EVENT_TIMESTAMP),
        # a missing value of a nullable number is NaN in the pandas engine's float64 column, not null
        *[F.coalesce(F.col(f.name), F.lit(float("nan"))).alias(f.name) for f in spec.numeric],
        *[F.col(c.name) for c in spec.categorical],
        F.when(F.col(LABEL + RAW) == F.lit(positive), 1).otherwise(0).cast("byte").alias(LABEL),
        *[F.col(carried(a)).alias(a) for a in audit],
        F.col(carried(SOURCE_LINE)).cast("long").alias(SOURCE_LINE),
        (F.col(carried(SOURCE_FILE)) if SOURCE_FILE in columns else F.lit(source_name)).cast("string").alias(SOURCE_FILE),
    ]
    table = checked.filter(~F.col("__bad")).orderBy(POS).select(*select).toArrow()
    schema = pa.schema(
        [
            (spec.entity_column, pa.string()),
            (EVENT_TIMESTAMP, pa.timestamp("ns", "UTC")),
            *[(f.name, pa.float64()) for f in spec.numeric],
            *[(c.name, pa.string()) for c in spec.categorical],
            (LABEL, pa.int8()),
            *[(a, pa.string()) for a in audit],
            (SOURCE_LINE, pa.int64()),
            (SOURCE_FILE, pa.string()),
        ]
    )
    return table.cast(schema)


def _per_file(checked: Any, has_files: bool, source_name: str) -> list[dict[str, Any]]:
    """Rows, valid and quarantined per input file, files in order of first appearance (as validate._per_file)."""
    from pyspark.sql import functions as F

    key = F.col(carried(SOURCE_FILE)) if has_files else F.lit(source_name)
    rows = (
        checked.groupBy(key.alias("file"))
        .agg(F.count(F.lit(1)).alias("rows"), F.sum(F.col("__bad").cast("long")).alias("bad"), F.min(POS).alias("first"))
        .orderBy("first")
        .collect()
    )
    return [
        {"file": str(r["file"]), "rows": int(r["rows"]), "valid": int(r["rows"] - r["bad"]), "quarantined": int(r["bad"])} for r in rows
    ]


def _keys(checked: Any, columns: list[str]) -> pd.DataFrame:
    """The input's (source file, line) pairs, in input order: what check_conservation compares the outputs with."""
    keys = [c for c in (SOURCE_FILE, SOURCE_LINE) if c in columns]
    return checked.orderBy(POS).select(*[checked[carried(c)].alias(c) for c in keys]).toArrow().to_pandas()


# --- GX on Spark: the per-expectation counts, to cross-check the column expressions ------------------


def gx_counts(prepared_columns: list[str], checked: Any, expectations: list[dict[str, Any]]) -> dict[str, tuple[bool, int | None]]:
    """GX's (success, unexpected count) per expectation id, run on the Spark frame with result_format BASIC."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch = context.data_sources.add_spark("rows").add_dataframe_asset("rows").add_batch_definition_whole_dataframe("all")
    gx_suite = gx.ExpectationSuite(name="rows")
    for exp in expectations:
        gx_suite.add_expectation_configuration(ExpectationConfiguration(type=exp["type"], kwargs=exp["kwargs"]))
    gx_suite = context.suites.add(gx_suite)
    ours = {e.id: exp for e, exp in zip(gx_suite.expectations, expectations, strict=True)}
    definition = context.validation_definitions.add(gx.ValidationDefinition(name="rows", data=batch, suite=gx_suite))
    frame = checked.select(*[c for c in prepared_columns if c != POS and not c.startswith("__in__")])
    result = definition.run(batch_parameters={"dataframe": frame}, result_format={"result_format": "BASIC", "partial_unexpected_count": 0})
    if len(result.results) != len(expectations):
        raise ValidationFailed(f"GX on Spark returned {len(result.results)} results for {len(expectations)} expectations")
    verdicts: dict[str, tuple[bool, int | None]] = {}
    for res in result.results:
        config = res.expectation_config
        if config is None or config.id not in ours:
            raise ValidationFailed(f"GX on Spark returned a result for an expectation it was not given: {config}")
        exp = ours[config.id]
        if res.exception_info and res.exception_info.get("raised_exception"):
            raise ValidationFailed(
                f"expectation {expectation_id(exp)} could not run on Spark: {res.exception_info.get('exception_message')}"
            )
        count = res.result.get("unexpected_count")
        verdicts[expectation_id(exp)] = (bool(res.success), None if count is None else int(count))
    return verdicts


def cross_check_counts(expectations: list[dict[str, Any]], failures: dict[str, int], verdicts: dict[str, tuple[bool, int | None]]) -> None:
    """Every column expression must flag exactly as many rows as GX on Spark counts unexpected, else ValidationFailed."""
    for exp in expectations:
        exp_id = expectation_id(exp)
        counted = verdicts[exp_id][1]
        if counted != failures[exp_id]:
            raise ValidationFailed(
                f"Spark row checks and GX disagree on {exp_id}: GX counts {counted} unexpected rows, the column expression {failures[exp_id]}"
            )
