"""The Spark engine (MLWF_ENGINE=spark) gives the pandas engine's answers: on the same input, the same rows
quarantined with the same reasons, source file, line and run id, the same valid table, the same counts.

Real Spark throughout (one local session for the module: it takes 8-16 s to start); the pandas engine is the
reference. Also: the preflight names what to install when Java is absent, and the engine setting refuses a
value it does not know.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from components.core.spec import load_spec
from components.data.ingest import IngestError, ingest
from components.data.outcome import ValidationFailed, ValidationOutcome
from components.data.suite import Suite, load_suite, suite_from_spec, write_suite
from components.data.validate import validate
from tests.conftest import make_csv
from tests.factories import LocalArtifact

pytestmark = pytest.mark.integration

CORPUS = Path(__file__).resolve().parents[1] / "data" / "bad_inputs"


@pytest.fixture(scope="module")
def spark():
    from components.core.spark import local_session

    session = local_session(master="local[2]")
    yield session
    session.stop()


def assert_same(pandas_out: ValidationOutcome, spark_out: ValidationOutcome) -> None:
    pd.testing.assert_frame_equal(spark_out.quarantined, pandas_out.quarantined)
    assert spark_out.valid_table.schema == pandas_out.valid_table.schema
    # NaN (a missing nullable number) is never equal to itself in Arrow's equals: compare as frames, and the nulls apart
    pd.testing.assert_frame_equal(spark_out.valid_table.to_pandas(), pandas_out.valid_table.to_pandas())
    assert [c.null_count for c in spark_out.valid_table.columns] == [c.null_count for c in pandas_out.valid_table.columns]
    assert spark_out.failures == pandas_out.failures
    assert spark_out.verdicts == pandas_out.verdicts
    assert spark_out.examples == pandas_out.examples
    assert spark_out.per_file == pandas_out.per_file
    assert spark_out.suite_version == pandas_out.suite_version and spark_out.rows == pandas_out.rows


def both(spec, raw_path: Path, source: str, suite: Suite, spark: Any, **kw: Any) -> tuple[ValidationOutcome, ValidationOutcome]:
    from components.data.spark_validate import validate_spark

    with pd.option_context("future.infer_string", True):  # as the step reads it
        raw = pd.read_parquet(raw_path)
    reference = validate(spec, raw, run_id="run-1", source=source, suite=suite, **kw)
    return reference, validate_spark(spec, str(raw_path), run_id="run-1", source=source, suite=suite, spark=spark, **kw)


def test_demo_data_same_quarantine_and_valid_rows(tmp_path, state_dir, transactions_spec, spark):
    src = make_csv(tmp_path / "tx.csv", rows=3000, bad_fraction=0.05)
    out = tmp_path / "raw.parquet"
    ingest(transactions_spec, str(src), str(out), str(state_dir))
    reference, result = both(transactions_spec, out, str(src), suite_from_spec(transactions_spec), spark)
    assert len(reference.quarantined) >= 140  # 5% injected bad rows, every kind of them (datagen._corrupt)
    assert len({r for reasons in reference.quarantined["failed_expectations"] for r in reasons.split("; ")}) >= 7
    assert_same(reference, result)


@pytest.fixture
def corpus(tmp_path):
    spec_path = tmp_path / "spec.yaml"
    shutil.copy(CORPUS / "spec.yaml", spec_path)
    write_suite(str(spec_path))
    spec = load_spec(str(spec_path))
    return spec, load_suite(spec, str(spec_path))


def test_every_corpus_file_that_reaches_validation(corpus, tmp_path, state_dir, spark):
    spec, suite = corpus
    reached = []
    for data in sorted(p for p in CORPUS.iterdir() if p.name != "spec.yaml"):
        out = tmp_path / f"{data.stem}.parquet"
        try:
            ingest(spec, str(data), str(out), str(state_dir))
        except IngestError:
            continue  # stopped at ingest with its one-line error (tests/unit/test_bad_input_corpus.py)
        reached.append(data.name)
        reference, result = both(spec, out, str(data), suite, spark)
        assert_same(reference, result)
    assert {"mixed.csv", "extra_columns.csv"} <= set(reached)


def test_several_files_with_first_runs_and_a_frame_input(corpus, tmp_path, state_dir, spark):
    """A folder of files: per-file counts, each file's first run id on its rows; the frame input gives the same."""
    from components.data.spark_validate import validate_spark

    spec, suite = corpus
    folder = tmp_path / "landing"
    folder.mkdir()
    for target, name in (("a.csv", "mixed.csv"), ("b.csv", "extra_columns.csv"), ("c.csv", "header_only.csv")):
        shutil.copy(CORPUS / name, folder / target)
    (folder / "d.csv").write_text((CORPUS / "mixed.csv").read_text().replace("c0", "d0"))
    out = tmp_path / "raw.parquet"
    ingest(spec, str(folder), str(out), str(state_dir))
    run_ids = {str(folder / "a.csv"): "first-a"}
    reference, result = both(spec, out, str(folder), suite, spark, run_ids=run_ids)
    assert_same(reference, result)
    assert len(result.per_file) == 3 and set(result.quarantined["run_id"]) == {"first-a", "run-1"}
    frame = pd.read_parquet(out)
    assert_same(reference, validate_spark(spec, frame, run_id="run-1", source=str(folder), suite=suite, run_ids=run_ids, spark=spark))


def test_an_expectation_without_a_spark_twin_stops_the_run_naming_it(corpus, tmp_path, state_dir, spark):
    from components.data.spark_validate import validate_spark

    spec, suite = corpus
    out = tmp_path / "raw.parquet"
    ingest(spec, str(CORPUS / "mixed.csv"), str(out), str(state_dir))
    custom = {"type": "expect_column_value_lengths_to_be_between", "kwargs": {"column": "plan", "min_value": 1}}
    extended = Suite(suite.dataset, suite.version, suite.spec_sha256, [*suite.expectations, custom])
    with pytest.raises(ValidationFailed, match="expect_column_value_lengths_to_be_between has no Spark row check") as err:
        validate_spark(spec, str(out), run_id="r", source="x", suite=extended, spark=spark)
    assert "\n" not in str(err.value)


def test_which_expectations_have_a_spark_twin():
    from components.data.spark_checks import why_no_twin

    types = {"plan": "string", "tenure": "double", "tenure__raw": "string"}
    between = "expect_column_values_to_be_between"
    assert why_no_twin({"type": between, "kwargs": {"column": "tenure", "min_value": 0}}, types) is None
    assert "not a number column" in why_no_twin({"type": between, "kwargs": {"column": "plan", "min_value": "a"}}, types)
    assert "no bound" in why_no_twin({"type": between, "kwargs": {"column": "tenure"}}, types)
    assert "['parse_strings_as_datetimes']" in why_no_twin(
        {"type": between, "kwargs": {"column": "tenure", "parse_strings_as_datetimes": True}}, types
    )
    assert "lack" in why_no_twin({"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "nope"}}, types)
    unique = {"type": "expect_compound_columns_to_be_unique", "kwargs": {"column_list": ["plan"], "ignore_row_if": "sometimes"}}
    assert "ignore_row_if='sometimes'" in why_no_twin(unique, types)


def test_a_count_gx_disputes_stops_the_run_naming_the_expectation():
    from components.data.spark_validate import cross_check_counts

    exp = {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "plan"}, "id": "expect_column_values_to_not_be_null(plan)"}
    cross_check_counts([exp], {exp["id"]: 2}, {exp["id"]: (False, 2)})
    with pytest.raises(ValidationFailed, match=r"disagree on expect_column_values_to_not_be_null\(plan\): GX counts 3"):
        cross_check_counts([exp], {exp["id"]: 2}, {exp["id"]: (False, 3)})


def test_validate_step_on_spark_writes_what_the_pandas_step_writes(tmp_path, state_dir, monkeypatch, spark):
    from components.data.step import ingest_step, validate_step

    src = make_csv(tmp_path / "tx.csv", rows=600, bad_fraction=0.05)
    raw = LocalArtifact(tmp_path / "raw")
    ingest_step("transactions", str(src), raw, "run-step")
    written = {}
    for engine in ("pandas", "spark"):
        monkeypatch.setenv("MLWF_ENGINE", engine)
        out = tmp_path / engine
        out.mkdir()
        arts = {n: LocalArtifact(out / n) for n in ("valid", "quarantine", "report", "metrics")}
        rows = validate_step("transactions", f"run-{engine}", raw, arts["valid"], arts["quarantine"], arts["report"], arts["metrics"])
        written[engine] = (rows, pd.read_parquet(out / "valid"), pd.read_parquet(out / "quarantine"), arts["metrics"].metrics)
    (rows_p, valid_p, bad_p, metrics_p), (rows_s, valid_s, bad_s, metrics_s) = written["pandas"], written["spark"]
    assert rows_p == rows_s and metrics_p == metrics_s and len(bad_p) > 0
    pd.testing.assert_frame_equal(valid_s, valid_p)
    pd.testing.assert_frame_equal(bad_s, bad_p)  # run id: the run that first validated the file, on either engine


def test_preflight_names_java_when_it_is_absent(tmp_path, monkeypatch, state_dir):
    from components.core.spark import SparkUnavailable, require_spark
    from components.data.step import validate_step

    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    with pytest.raises(SparkUnavailable) as err:
        require_spark()
    message = str(err.value)
    assert "\n" not in message and "Java 17 runtime" in message and "openjdk-17-jre-headless" in message
    # the step stops on it before reading anything (the raw artifact does not even exist)
    monkeypatch.setenv("MLWF_ENGINE", "spark")
    arts = [LocalArtifact(tmp_path / n) for n in ("raw", "valid", "quarantine", "report", "metrics")]
    with pytest.raises(SparkUnavailable, match="Java 17 runtime"):
        validate_step("transactions", "r", *arts)
    assert not (tmp_path / "valid").exists()


def test_engine_setting(monkeypatch):
    from components.core.settings import get_settings

    monkeypatch.delenv("MLWF_ENGINE", raising=False)
    assert get_settings().engine == "pandas"
    monkeypatch.setenv("MLWF_ENGINE", "Spark")
    assert get_settings().engine == "spark"
    monkeypatch.setenv("MLWF_ENGINE", "dask")
    with pytest.raises(ValueError, match=r"MLWF_ENGINE must be one of \('pandas', 'spark'\), got 'dask'"):
        get_settings()


def test_no_entity_no_timestamp_text_labels_and_an_audit_only_column(tmp_path, state_dir, spark):
    """Generated row ids, the ingestion time as event time, "Yes"/"No" labels, a nullable number, an audited
    column that is not a feature; and a frame without ingest's columns, checked against the caller's clock."""
    from datetime import UTC, datetime

    from components.core.spec import parse_spec
    from components.data.spark_validate import validate_spark
    from components.data.suite import INGESTED_AT

    spec = parse_spec(
        {
            "name": "churn",
            "label": {"column": "Churn", "positive": "Yes", "negative": "No"},
            "features": {"numeric": {"tenure": {"min": 0}, "spend": {"nullable": True}}, "categorical": ["plan"]},
            "sensitive": ["gender"],
        }
    )
    src = tmp_path / "c.csv"
    src.write_text(
        "tenure,spend,plan,Churn,gender\n3,1.5,basic,Yes,f\n4,,pro,No,m\n5,2,pro,Maybe,f\nabc,1,pro,No,\n-1,1,basic,No,m\n"
        ",1,basic,Yes,f\n3,1.5,basic,Yes,f\n 1e2 ,-0,,1.0,x\n"
    )
    out = tmp_path / "raw.parquet"
    ingest(spec, str(src), str(out), str(state_dir))
    suite = suite_from_spec(spec)
    reference, result = both(spec, out, str(src), suite, spark)
    assert_same(reference, result)
    assert "gender" in result.valid_table.column_names and len(result.quarantined) >= 4

    frame = pd.read_parquet(out).drop(columns=[INGESTED_AT])
    now = datetime(2020, 1, 1, tzinfo=UTC)  # before the ingestion time, which is every row's event time: all in the future
    reference = validate(spec, frame, run_id="r", source="frame", now=now, suite=suite)
    result = validate_spark(spec, frame, run_id="r", source="frame", now=now, suite=suite, spark=spark)
    assert_same(reference, result)
    assert result.failures["expect_column_pair_values_a_to_be_greater_than_b(as_of+event_timestamp)"] == len(frame)


def test_preflight_names_pyspark_when_it_is_missing_and_a_broken_java(tmp_path, monkeypatch):
    import subprocess
    import sys

    from components.core.spark import SparkUnavailable, require_spark

    code = "import sys; sys.modules['pyspark'] = None\nfrom components.core.spark import require_spark\nrequire_spark()"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode != 0 and "MLWF_ENGINE=spark needs pyspark: pip install pyspark==4.1.4" in done.stderr
    broken = tmp_path / "jdk"
    (broken / "bin").mkdir(parents=True)
    (broken / "bin" / "java").write_text("#!/bin/sh\necho 'Error: could not find libjvm.so' >&2\nexit 1\n")
    (broken / "bin" / "java").chmod(0o755)
    monkeypatch.setenv("JAVA_HOME", str(broken))
    with pytest.raises(SparkUnavailable, match="-version failed: Error: could not find libjvm.so"):
        require_spark()
