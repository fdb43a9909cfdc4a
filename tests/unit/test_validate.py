import json
from datetime import UTC, datetime

import pyarrow as pa
import pytest

from components.core.spec import parse_spec
from components.data.outcome import ValidationFailed
from components.data.suite import canonical_label
from components.data.validate import enforce_threshold, validate
from tests.conftest import ingest_frame, make_csv

NOW = datetime(2026, 11, 1, tzinfo=UTC)


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
        "expect_column_pair_values_a_to_be_greater_than_b(as_of+event_timestamp)",  # 2099: after first ingestion
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
    spec = parse_spec(
        {
            "name": "churn",
            "label": {"column": "Churn", "positive": "Yes", "negative": "No"},
            "features": {"numeric": {"tenure": {"min": 0}}, "categorical": ["plan"]},
        }
    )
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


CHURN_YAML = """name: churn
label: {column: Churn, positive: "Yes", negative: "No"}
timestamp: signed_up
features:
  numeric: {tenure: {min: 0, max: 100}}
  categorical: {country: {}}
"""


def churn_spec(tmp_path):
    path = tmp_path / "churn.yaml"
    path.write_text(CHURN_YAML)
    return path


def test_the_committed_demo_suite_is_current():
    from components.core.spec import load_spec
    from components.data.suite import load_suite

    suite = load_suite(load_spec("transactions"), "transactions")  # raises when the spec moved on without it
    assert suite.path.endswith("components/datasets/transactions.suite.json") and len(suite.version) == 16


def test_suite_file_beside_the_spec_missing_stale_and_edited(tmp_path):
    from components.core.spec import load_spec
    from components.data.suite import SuiteError, load_suite, suite_path, write_suite

    path = churn_spec(tmp_path)
    spec = load_spec(str(path))
    with pytest.raises(SuiteError, match=r"no validation suite next to the spec .*mlwf suite --dataset"):
        load_suite(spec, str(path))
    written, suite, changed = write_suite(str(path))
    assert written == suite_path(str(path)) == str(tmp_path / "churn.suite.json") and changed
    assert load_suite(spec, str(path)).version == suite.version
    assert write_suite(str(path))[2] is False  # unchanged spec: the file is not rewritten

    path.write_text(CHURN_YAML.replace("max: 100", "max: 120"))  # the spec moves on
    with pytest.raises(SuiteError, match="stale: the spec changed"):
        load_suite(load_spec(str(path)), str(path))
    _, newer, _ = write_suite(str(path))
    assert newer.version != suite.version

    doc = json.loads((tmp_path / "churn.suite.json").read_text())
    doc["expectations"][0]["kwargs"]["column"] = "other"  # a hand edit of a generated expectation
    (tmp_path / "churn.suite.json").write_text(json.dumps(doc))
    with pytest.raises(SuiteError, match="generated expectations differ"):
        load_suite(load_spec(str(path)), str(path))


def test_custom_expectations_are_kept_versioned_and_quarantine_rows(tmp_path, state_dir):
    from components.core.spec import load_spec
    from components.data.suite import SuiteError, load_suite, write_suite

    path = churn_spec(tmp_path)
    write_suite(str(path))
    suite_file = tmp_path / "churn.suite.json"
    doc = json.loads(suite_file.read_text())
    doc["custom"] = [{"type": "expect_column_value_lengths_to_equal", "kwargs": {"column": "country", "value": 2}}]
    suite_file.write_text(json.dumps(doc))
    with pytest.raises(SuiteError, match="edited since it was versioned"):
        load_suite(load_spec(str(path)), str(path))
    _, stamped, _ = write_suite(str(path))  # `mlwf suite` keeps custom and re-stamps the version
    assert json.loads(suite_file.read_text())["custom"][0]["id"] == "expect_column_value_lengths_to_equal(country)"
    spec = load_spec(str(path))
    src = tmp_path / "c.csv"
    src.write_text("tenure,country,Churn,signed_up\n3,US,Yes,2026-01-01\n4,USA,No,2026-01-02\n")
    raw = ingest_frame(spec, src, state_dir)
    out = validate(spec, raw, run_id="r", source=str(src), suite=load_suite(spec, str(path)))
    # no vectorized twin for this type: GX's own row list (COMPLETE) decides
    assert out.quarantined["failed_expectations"].tolist() == ["expect_column_value_lengths_to_equal(country)"]
    assert out.suite_version == stamped.version


def test_row_masks_that_disagree_with_gx_stop_the_run(tmp_path, state_dir, transactions_spec, monkeypatch):
    from components.data import checks

    raw = ingest_frame(transactions_spec, make_csv(tmp_path / "tx.csv", rows=500, bad_fraction=0.05), state_dir)
    real = checks.MASKS["expect_column_values_to_be_in_set"]

    def lenient(p, kw):  # a bug that lets one bad category through
        mask = real(p, kw)
        mask[mask.argmax()] = False
        return mask

    monkeypatch.setitem(checks.MASKS, "expect_column_values_to_be_in_set", lenient)
    with pytest.raises(ValidationFailed, match=r"row masks and GX disagree on expect_column_values_to_be_in_set\(merchant_category\)"):
        validate(transactions_spec, raw, run_id="r", source="x")


def test_future_bound_is_the_files_first_ingestion_not_the_clock(transactions_spec):
    import pandas as pd

    base = {
        "transaction_id": ["a", "b", "c"],
        "amount": ["1", "2", "3"],
        "hour_of_day": ["1", "2", "3"],
        "card_age_days": ["1", "1", "1"],
        "distance_km": ["1", "1", "1"],
        "txn_count_24h": ["1", "1", "1"],
        "merchant_category": ["fuel"] * 3,
        "channel": ["pos"] * 3,
        "country": ["US"] * 3,
        "is_fraud": ["0", "1", "0"],
        "source_line": [2, 3, 4],
        "source_file": ["f.csv"] * 3,
        "ingested_at": ["2026-03-01T00:00:00Z"] * 3,
        # 1 minute after first ingestion passes (clock skew), 1 hour after is in the future
        "event_timestamp": ["2026-02-01T00:00:00Z", "2026-03-01T00:01:00Z", "2026-03-01T01:00:00Z"],
    }
    raw = pd.DataFrame(base)
    early = validate(transactions_spec, raw, run_id="r", source="x", now=datetime(2026, 3, 1, tzinfo=UTC))
    late = validate(transactions_spec, raw, run_id="r", source="x", now=datetime(2030, 1, 1, tzinfo=UTC))
    for out in (early, late):  # a rerun years later gives the same verdicts
        assert out.quarantined["source_line"].tolist() == [4]
        assert out.quarantined["failed_expectations"].tolist() == [
            "expect_column_pair_values_a_to_be_greater_than_b(as_of+event_timestamp)"
        ]


def test_timestamps_with_offsets_or_other_formats_become_utc(transactions_spec):
    import pandas as pd

    from components.data.checks import parse_times

    parsed = parse_times(pd.Series(["2026-01-01T02:00:00+02:00", "2026-01-01", "01/02/2026 10:00", "2026-13-45T00:00:00Z", None]))
    assert [str(v) for v in parsed] == ["2026-01-01 00:00:00+00:00", "2026-01-01 00:00:00+00:00", "2026-01-02 10:00:00+00:00", "NaT", "NaT"]


def _tampered(out, valid_table=None, quarantined=None):
    import dataclasses

    return dataclasses.replace(
        out,
        valid_table=out.valid_table if valid_table is None else valid_table,
        quarantined=out.quarantined if quarantined is None else quarantined,
    )


@pytest.mark.parametrize("sparse", [False, True], ids=["dense lines", "sparse lines (sorting path)"])
def test_conservation_catches_a_lost_row_a_row_in_both_outputs_and_duplicate_input_lines(tmp_path, state_dir, transactions_spec, sparse):
    from components.data.validate import check_conservation

    raw = ingest_frame(transactions_spec, make_csv(tmp_path / "tx.csv", rows=600, bad_fraction=0.05), state_dir)
    if sparse:  # line numbers far apart (e.g. a source that numbers rows by offset): the sort-based comparison
        raw["source_line"] = raw["source_line"].astype("int64") * 1_000_003
    out = validate(transactions_spec, raw, run_id="r", source="x", now=NOW)
    check_conservation(raw, out)  # the untouched outcome holds
    assert len(out.quarantined) > 1

    # one valid row replaced by a copy of a quarantined row's reference: same count, a row lost, one in both
    valid = out.valid_table
    lines = valid.column("source_line").to_numpy().copy()
    lines[0] = int(out.quarantined["source_line"].iloc[0])
    moved = valid.set_column(valid.schema.get_field_index("source_line"), "source_line", pa.array(lines))
    with pytest.raises(ValidationFailed, match="a row was lost or is both valid and quarantined"):
        check_conservation(raw, _tampered(out, valid_table=moved))

    with pytest.raises(ValidationFailed, match="rows lost"):
        check_conservation(raw, _tampered(out, quarantined=out.quarantined.iloc[1:]))

    twice = raw.copy()
    twice.loc[1, "source_line"] = twice.loc[0, "source_line"]
    with pytest.raises(ValidationFailed, match="two rows with the same source file and line"):
        check_conservation(twice, out)

    foreign = out.quarantined.assign(source="elsewhere.csv")
    with pytest.raises(ValidationFailed, match="not in the input"):
        check_conservation(raw, _tampered(out, quarantined=foreign))
