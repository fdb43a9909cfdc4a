"""Batch scoring's pure parts (components/scoring/batch.py) and its command line: columns checked, the suite
without its label checks, the output table in input order, deterministic Parquet, the conservation check, and
`mlwf score` / `mlwf schedule --pipeline scoring` arguments."""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from components.core.spec import EVENT_TIMESTAMP, LABEL, SOURCE_LINE
from components.scoring import batch
from components.scoring.batch import ScoringError
from pipelines.cli import build_parser, main


def test_a_missing_feature_column_is_named_with_a_suggestion(transactions_spec: Any) -> None:
    columns = [c for c in batch.required_columns(transactions_spec) if c != "amount"] + ["Amount"]
    with pytest.raises(ScoringError, match=r"lacks column\(s\) \['amount'\] \(did you mean 'Amount'\?\)"):
        batch.check_columns(transactions_spec, columns, "rows.csv")
    present = batch.required_columns(transactions_spec)
    assert batch.check_columns(transactions_spec, present, "rows.csv") is False
    assert batch.check_columns(transactions_spec, [*present, "is_fraud"], "rows.csv") is True
    assert "is_fraud" not in present and "transaction_id" in present and "event_time" in present


def test_without_the_label_column_only_the_label_checks_go(transactions_spec: Any) -> None:
    from components.data.suite import RAW, suite_from_spec

    suite = suite_from_spec(transactions_spec)
    kept = batch.without_label_checks(suite.expectations, {LABEL + RAW})
    gone = [e["id"] for e in suite.expectations if e not in kept]
    assert gone and all("(label)" in i for i in gone)
    assert len(kept) == len(suite.expectations) - len(gone) and any("(amount)" in e["id"] for e in kept)


def test_columns_scoring_does_not_need_are_added_as_missing(transactions_spec: Any) -> None:
    frame = pd.DataFrame({"amount": ["1"], "country": ["NG"]})
    out = batch.complete_columns(transactions_spec, frame)
    assert out["is_fraud"].isna().all() and list(frame.columns) == ["amount", "country"]
    assert batch.complete_columns(transactions_spec, out) is out


def _valid(rows: int = 4) -> pa.Table:
    return pa.table(
        {
            "transaction_id": pa.array([f"t{i}" for i in range(rows)]),
            EVENT_TIMESTAMP: pa.array(pd.date_range("2026-01-01", periods=rows, freq="h", tz="UTC")),
            LABEL: pa.array([0, 1, 0, 1][:rows], type=pa.int8()),
            SOURCE_LINE: pa.array([5, 2, 3, 4][:rows], type=pa.int64()),
            batch.SOURCE_FILE: pa.array(["b.csv", "a.csv", "a.csv", "a.csv"][:rows]),
        }
    )


def test_the_output_is_in_input_order_with_the_decision_and_the_model(transactions_spec: Any) -> None:
    probabilities = np.array([0.9, 0.1, 0.5, 0.49])
    table = batch.scored_table(transactions_spec, _valid(), probabilities, 0.5, True, ("clf", "3"), "f" * 64)
    out = table.to_pandas()
    assert list(out["transaction_id"]) == ["t1", "t2", "t3", "t0"]  # a.csv lines 2, 3, 4, then b.csv
    assert list(out[batch.PROBABILITY]) == [0.1, 0.5, 0.49, 0.9]
    assert list(out[batch.PREDICTION]) == [0, 1, 0, 1]
    assert list(out[LABEL]) == [1, 0, 1, 0]
    assert set(out[batch.MODEL_NAME]) == {"clf"} and set(out[batch.MODEL_VERSION]) == {"3"}
    # the files' reading order wins over their names: b.csv read first
    first_b = batch.scored_table(transactions_spec, _valid(), probabilities, 0.5, True, ("clf", "3"), "f" * 64, ["b.csv", "a.csv"])
    assert list(first_b.column("transaction_id").to_pylist()) == ["t0", "t1", "t2", "t3"]
    unlabelled = batch.scored_table(transactions_spec, _valid(), probabilities, 0.5, False, ("clf", "3"), "f" * 64)
    assert LABEL not in unlabelled.column_names
    with pytest.raises(ScoringError, match="3 probabilities for 4 valid rows"):
        batch.scored_table(transactions_spec, _valid(), probabilities[:3], 0.5, True, ("clf", "3"), "f" * 64)


def test_parquet_bytes_are_the_same_every_time_and_carry_no_write_time() -> None:
    table = pa.table({"a": [1, 2], "b": ["x", None]})
    first = batch.parquet_bytes(table, {"mlwf.model": "clf"})
    assert first == batch.parquet_bytes(table, {"mlwf.model": "clf"})
    assert batch.parquet_bytes(table.to_pandas(), {"mlwf.model": "clf"}) == batch.parquet_bytes(table.to_pandas(), {"mlwf.model": "clf"})
    meta = pq.read_metadata(io.BytesIO(first))
    assert meta.metadata[b"mlwf.model"] == b"clf"
    assert not [k for k in meta.metadata if b"time" in k.lower() or b"date" in k.lower()]


def test_rows_in_must_be_scored_plus_quarantined() -> None:
    batch.check_conservation(10, 7, 3)
    with pytest.raises(ScoringError, match="rows lost: 10 in, 7 scored \\+ 2 quarantined"):
        batch.check_conservation(10, 7, 2)


def test_fingerprints_and_run_ids_depend_on_content_not_on_order() -> None:
    files = [("a.csv", "1" * 64), ("b.csv", "2" * 64)]
    assert batch.input_fingerprint(files, "s1") == batch.input_fingerprint(files[::-1], "s1") != batch.input_fingerprint(files, "s2")
    assert (
        batch.scoring_run_id(files, "clf", "3") == batch.scoring_run_id(files[::-1], "clf", "3") != batch.scoring_run_id(files, "clf", "4")
    )
    assert batch.quarantine_uri("s3://b/out/scores.parquet") == "s3://b/out/scores.quarantine.parquet"
    assert batch.quarantine_uri("/tmp/scores") == "/tmp/scores.quarantine.parquet"


def test_input_is_read_as_text(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    path.write_text("amount,country\n007,NA\n,NaN\n")
    frame = batch.read_text(str(path), "rows.csv")
    assert frame["amount"].tolist()[0] == "007" and frame["country"].tolist() == ["NA", "NaN"] and pd.isna(frame["amount"][1])
    assert batch.read_columns(str(path), "rows.csv") == ["amount", "country"]
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ScoringError, match="empty"):
        batch.read_text(str(tmp_path / "empty.csv"), "empty.csv")


def test_only_the_pandas_engine_is_accepted(capsys: pytest.CaptureFixture) -> None:
    args = ["score", "--local", "--model", "clf@champion", "--data", "x.csv", "--out", "y.parquet"]
    assert build_parser().parse_args(args).engine == "pandas"
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([*args, "--engine", "spark"])
    assert exit_.value.code == 2 and "invalid choice: 'spark'" in capsys.readouterr().err


def test_score_without_local_points_to_the_cluster_path(capsys: pytest.CaptureFixture) -> None:
    assert main(["score", "--model", "clf@champion", "--data", "x.csv", "--out", "y.parquet"]) == 2
    assert "mlwf schedule --pipeline scoring" in capsys.readouterr().err


def test_schedule_runs_the_scoring_package_with_its_own_names(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    import pipelines.cli as cli
    from pipelines.compile import SCORING_PACKAGE

    calls: dict[str, Any] = {}

    class Client:
        def create_experiment(self, name: str, namespace: str) -> Any:
            calls["experiment"] = name
            return SimpleNamespace(experiment_id="exp-1")

        def create_recurring_run(self, **kwargs: Any) -> Any:
            calls.update(kwargs)
            return SimpleNamespace(recurring_run_id="rr-1")

    monkeypatch.setattr(cli, "kfp_client", lambda host, namespace: Client())
    args = ["schedule", "--pipeline", "scoring", "--host", "http://127.0.0.1:1", "--cron", "0 2 * * *"]
    assert main([*args, "--arg", "model=clf@champion", "--arg", "data_uri=s3://b/rows/", "--arg", "out_uri=s3://b/s.parquet"]) == 0
    assert calls["pipeline_package_path"] == SCORING_PACKAGE and Path(SCORING_PACKAGE).exists()
    assert calls["experiment"] == "mlwf-scoring" and calls["job_name"] == "mlwf-batch-scoring"
    assert calls["params"] == {"model": "clf@champion", "data_uri": "s3://b/rows/", "out_uri": "s3://b/s.parquet"}
    assert "recurring run rr-1" in capsys.readouterr().out
