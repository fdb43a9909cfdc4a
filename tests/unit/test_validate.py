from datetime import datetime, timezone

import pandas as pd
import pytest

from components.spec import parse_spec
from components.validate import ValidationFailed, canonical_label, enforce_threshold, validate
from tests.conftest import ingest_frame, make_csv

NOW = datetime(2026, 11, 1, tzinfo=timezone.utc)


def test_every_bad_record_is_quarantined_with_its_reason(tmp_path, state_dir, transactions_spec):
    src = make_csv(tmp_path / "tx.csv", rows=1400, bad_fraction=0.05)
    raw = ingest_frame(transactions_spec, src, state_dir)
    out = validate(transactions_spec, raw, run_id="r1", source=str(src), now=NOW)
    assert len(out.valid) + len(out.quarantined) == len(raw)  # conservation
    reasons = " ".join(out.quarantined["failed_expectations"])
    for expected in (
        "expect_column_values_to_match_regex(amount)",  # "not-a-number"
        "expect_column_values_to_be_between(amount)",  # negative
        "expect_column_values_to_be_in_set(merchant_category)",
        "expect_column_values_to_not_be_null(channel)",
        "expect_column_values_to_be_between(event_timestamp)",  # 2099
        "expect_compound_columns_to_be_unique(transaction_id+event_timestamp)",
        "expect_column_values_to_be_between(hour_of_day)",  # 31
    ):
        assert expected in reasons, expected
    assert out.failures["expect_column_values_to_match_regex(amount)"] == 10
    assert set(out.quarantined["run_id"]) == {"r1"} and set(out.quarantined["source"]) == {str(src)}
    assert not set(out.valid["source_line"]) & set(out.quarantined["source_line"].astype(int))
    # valid rows are typed
    assert out.valid["amount"].dtype == "float64" and out.valid["label"].isin([0, 1]).all()
    assert str(out.valid["event_timestamp"].dtype) == "datetime64[ns, UTC]"


def test_clean_data_passes_whole(tmp_path, state_dir, transactions_spec):
    raw = ingest_frame(transactions_spec, make_csv(tmp_path / "tx.csv", rows=800), state_dir)
    out = validate(transactions_spec, raw, run_id="r", source="x", now=NOW)
    assert len(out.quarantined) == 0 and len(out.valid) == 800
    assert enforce_threshold(transactions_spec, out) is None


def test_too_many_bad_rows_fails_the_run(tmp_path, state_dir, transactions_spec):
    raw = ingest_frame(transactions_spec, make_csv(tmp_path / "tx.csv", rows=700, bad_fraction=0.3), state_dir)
    out = validate(transactions_spec, raw, run_id="r", source="x", now=NOW)
    with pytest.raises(ValidationFailed, match="above the limit of 20.0%"):
        enforce_threshold(transactions_spec, out)


def test_text_labels_and_unknown_label_values(tmp_path, state_dir):
    spec = parse_spec({"name": "churn", "label": {"column": "Churn", "positive": "Yes", "negative": "No"},
                       "features": {"numeric": {"tenure": {"min": 0}}, "categorical": ["plan"]}})
    src = tmp_path / "c.csv"
    src.write_text("tenure,plan,Churn\n3,basic,Yes\n4,pro,No\n5,pro,Maybe\nabc,pro,No\n-1,basic,No\n,basic,Yes\n")
    out = validate(spec, ingest_frame(spec, src, state_dir), run_id="r", source=str(src))  # stand-in time is now
    assert out.valid["label"].tolist() == [1, 0]
    bad = dict(zip(out.quarantined["source_line"].astype(int), out.quarantined["failed_expectations"]))
    assert bad[4] == "expect_column_values_to_be_in_set(label)"
    assert bad[5] == "expect_column_values_to_match_regex(tenure)"
    assert bad[6] == "expect_column_values_to_be_between(tenure)"
    assert bad[7] == "expect_column_values_to_not_be_null(tenure)"


def test_label_values_compare_as_numbers_when_numeric():
    assert canonical_label("1.0") == canonical_label(1) == "1"
    assert canonical_label(" Yes") == "Yes"
    assert canonical_label(float("nan")) is None
