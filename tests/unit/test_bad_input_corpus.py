"""The bad-input corpus (tests/data/bad_inputs/): every kind of broken input gets a clear outcome.

Row-level problems are quarantined with their reason and nothing is lost (conservation is asserted);
file-level problems stop the run before any step with a one-line error, the same from ingest and from
the CLI's preflight, and leave no record behind that would make a rerun skip the file.
"""

import shutil
from pathlib import Path

import pandas as pd
import pytest

from components.core.spec import load_spec
from components.data.ingest import IngestError, ingest
from components.data.suite import load_suite, write_suite
from components.data.validate import validate
from pipelines.cli import check_inputs, main

CORPUS = Path(__file__).resolve().parents[1] / "data" / "bad_inputs"

# source line in mixed.csv -> the expectation(s) that must quarantine it
EXPECTED_REASONS = {
    3: ["expect_column_values_to_match_regex(tenure)"],  # "abc": wrong type
    4: ["expect_column_values_to_not_be_null(tenure)"],  # empty: null where the spec allows none
    5: ["expect_column_values_to_be_between(tenure)"],  # 500 > max 120
    6: ["expect_column_values_to_be_in_set(plan)"],  # "gold": unknown category
    7: ["expect_compound_columns_to_be_unique(customer_id+event_timestamp)"],  # duplicated key: both rows
    8: ["expect_compound_columns_to_be_unique(customer_id+event_timestamp)"],
    9: ["expect_column_pair_values_a_to_be_greater_than_b(as_of+event_timestamp)"],  # 2099: in the future
    10: ["expect_column_values_to_not_be_null(event_timestamp)"],  # "not-a-date"
    11: ["expect_column_values_to_be_in_set(label)"],  # "maybe": neither class
    12: ["expect_column_values_to_not_be_null(region)"],  # region missing
    15: ["expect_column_values_to_not_be_null(customer_id)"],  # no entity key
    16: ["expect_column_values_to_match_regex(monthly)"],  # "NaN" is not a number
}
VALID_LINES = {2, 13, 14}  # 13: "01/11/2026 10:00" and " 7.5 "; 14: a date without time and "+3"


@pytest.fixture
def corpus(tmp_path):
    """The corpus spec copied out of the repository, with its suite written beside it."""
    spec_path = tmp_path / "spec.yaml"
    shutil.copy(CORPUS / "spec.yaml", spec_path)
    write_suite(str(spec_path))
    return load_spec(str(spec_path)), str(spec_path)


def run(spec, spec_ref, data: Path, state: Path, tmp_path: Path):
    out = tmp_path / "raw.parquet"
    ingest(spec, str(data), str(out), str(state))
    raw = pd.read_parquet(out)
    return raw, validate(spec, raw, run_id="corpus-run", source=str(data), suite=load_suite(spec, spec_ref))


def test_each_bad_row_is_quarantined_with_its_reason_and_nothing_is_lost(corpus, tmp_path, state_dir):
    spec, ref = corpus
    raw, out = run(spec, ref, CORPUS / "mixed.csv", state_dir, tmp_path)
    assert len(out.valid) + len(out.quarantined) == len(raw) == 15  # conservation
    assert not set(out.valid["source_line"]) & set(out.quarantined["source_line"])
    assert set(out.valid["source_line"]) | set(out.quarantined["source_line"]) == set(range(2, 17))
    reasons = dict(zip(out.quarantined["source_line"], out.quarantined["failed_expectations"]))
    assert {line: r.split("; ") for line, r in reasons.items()} == EXPECTED_REASONS
    assert set(out.valid["source_line"]) == VALID_LINES
    # every quarantined row names its input file and the run, and keeps its values as they arrived
    assert set(out.quarantined["source"]) == {str(CORPUS / "mixed.csv")}
    assert set(out.quarantined["run_id"]) == {"corpus-run"}
    assert reasons and out.quarantined.set_index("source_line").loc[3, "tenure"] == "abc"
    # what passed is typed: the non-ISO date and the padded / signed numbers parsed
    valid = out.valid.set_index("source_line")
    assert str(valid.loc[13, "event_timestamp"]) == "2026-01-11 10:00:00+00:00" and valid.loc[13, "monthly"] == 7.5
    assert valid.loc[14, "monthly"] == 3.0 and valid["label"].tolist() == [0, 1, 0]


def test_extra_columns_are_ignored(corpus, tmp_path, state_dir):
    spec, ref = corpus
    raw, out = run(spec, ref, CORPUS / "extra_columns.csv", state_dir, tmp_path)
    assert "notes" not in raw.columns and len(out.valid) == 2 and len(out.quarantined) == 0


@pytest.mark.parametrize(
    "name, message",
    [
        ("empty.csv", "input file is empty (0 bytes)"),
        ("header_only.csv", "dataset has no rows"),
        ("truncated.csv", "line 3 has 4 field(s), the header has 8"),
        ("truncated_in_quotes.csv", "unreadable CSV"),
        ("semicolons.csv", "the spec names column(s) the data lacks"),  # wrong delimiter: one column
        ("latin1.csv", "not UTF-8"),
        ("missing_column.csv", "lacks: ['monthly']"),
        ("broken.parquet", "unreadable Parquet file"),
        ("no_such_file.csv", "input not found"),
    ],
)
def test_broken_files_are_a_one_line_error_and_leave_no_record(corpus, tmp_path, state_dir, name, message):
    spec, ref = corpus
    data = CORPUS / name
    out = tmp_path / "raw.parquet"
    with pytest.raises(IngestError) as err:
        ingest(spec, str(data), str(out), str(state_dir))
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not out.exists()
    assert not state_dir.exists() or not any(state_dir.rglob("*.json"))  # nothing that would skip it next time
    with pytest.raises(ValueError) as pre:  # the CLI's preflight says the same, in one line
        check_inputs(ref, str(data))
    assert message in str(pre.value) and "\n" not in str(pre.value)


def test_cli_prints_one_line_for_a_broken_file(corpus, tmp_path, state_dir, capsys):
    _, ref = corpus
    assert main(["run", "--local", "--dataset", ref, "--data", str(CORPUS / "truncated.csv")]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("mlwf: error:") and "line 3 has 4 field(s)" in lines[0]


def test_a_broken_file_in_a_directory_stops_the_run_naming_it(corpus, tmp_path, state_dir):
    spec, _ = corpus
    folder = tmp_path / "landing"
    folder.mkdir()
    shutil.copy(CORPUS / "mixed.csv", folder / "a.csv")
    shutil.copy(CORPUS / "truncated.csv", folder / "b.csv")
    with pytest.raises(IngestError, match=r"b\.csv: line 3 has 4 field"):
        ingest(spec, str(folder), str(tmp_path / "raw.parquet"), str(state_dir))
    assert not any(state_dir.rglob("*.json"))


@pytest.mark.parametrize(
    "files, message",
    [
        ({}, "no CSV or Parquet files"),
        ({"a.csv": "mixed.csv", "notes.txt": "mixed.csv"}, "unsupported file in input directory"),
    ],
)
def test_directory_without_usable_files(corpus, tmp_path, state_dir, files, message):
    spec, _ = corpus
    folder = tmp_path / "landing"
    folder.mkdir()
    for target, name in files.items():
        shutil.copy(CORPUS / name, folder / target)
    with pytest.raises(IngestError, match=message):
        ingest(spec, str(folder), str(tmp_path / "raw.parquet"), str(state_dir))


def test_header_only_file_in_a_directory_adds_no_rows(corpus, tmp_path, state_dir):
    spec, ref = corpus
    folder = tmp_path / "landing"
    folder.mkdir()
    shutil.copy(CORPUS / "mixed.csv", folder / "a.csv")
    shutil.copy(CORPUS / "header_only.csv", folder / "b.csv")
    shutil.copy(CORPUS / "mixed.csv", folder / ".a.csv.tmp")  # a half-written upload: hidden, not read
    raw, out = run(spec, ref, folder, state_dir, tmp_path)
    assert len(raw) == 15 and set(raw["source_file"]) == {str(folder / "a.csv")}
    assert len(out.valid) + len(out.quarantined) == 15
