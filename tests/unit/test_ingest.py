import json
from pathlib import Path

import pandas as pd
import pytest

from components.core.spec import parse_spec
from components.data.ingest import IngestError, ingest
from tests.conftest import make_csv

CHURN = parse_spec(
    {
        "name": "churn",
        "label": {"column": "Churn", "positive": "Yes", "negative": "No"},
        "features": {"numeric": ["tenure", "monthly"], "categorical": ["plan"]},
    }
)


def write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def test_csv_with_text_labels_and_no_id_or_timestamp(tmp_path, state_dir):
    src = write(tmp_path / "churn.csv", "tenure,monthly,plan,Churn\n3,20.5,basic,Yes\n40,80,pro,No\n3,20.5,basic,Yes\n")
    out = tmp_path / "out.parquet"
    result = ingest(CHURN, str(src), str(out), str(state_dir))
    df = pd.read_parquet(out)
    assert result.rows == 3
    assert df["row_id"].is_unique  # identical rows still get distinct, stable ids
    assert df["source_line"].tolist() == [2, 3, 4]
    assert df["event_timestamp"].nunique() == 1
    # a rerun on the same file gives byte-identical output: same ids, same stand-in timestamps
    out2 = tmp_path / "out2.parquet"
    ingest(CHURN, str(src), str(out2), str(state_dir))
    assert out.read_bytes() == out2.read_bytes()


def test_parquet_input(tmp_path, state_dir, transactions_spec):
    csv = make_csv(tmp_path / "tx.csv", rows=500)
    pq = tmp_path / "tx.parquet"
    pd.read_csv(csv).to_parquet(pq)
    out = tmp_path / "out.parquet"
    assert ingest(transactions_spec, str(pq), str(out), str(state_dir)).rows == 500
    assert pd.read_parquet(out)["amount"].map(type).eq(str).all()  # validation parses, not the reader


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "input not found"),
        (b"", "empty"),
        ("tenure,monthly,plan,Churn\n", "no rows"),
        ("tenure;monthly;plan;Churn\n1;2;basic;Yes\n", "lacks"),
        ("tenure,monthly,plan\n1,2,basic\n", "lacks: \\['Churn'\\]"),
        (b"tenure,monthly,plan,Churn\n1,2,b\xe9sic,Yes\n", "not UTF-8"),
        ('tenure,monthly,plan,Churn\n1,2,"basic,Yes\n', "unreadable CSV"),
        ("tenure,monthly,plan,Churn\n1,2,basic,Yes,extra,more\n", "unreadable CSV"),
    ],
)
def test_bad_input_is_a_one_line_error(tmp_path, state_dir, content, message):
    src = tmp_path / "in.csv"
    if content is not None:
        write(src, content)
    out = tmp_path / "out.parquet"
    with pytest.raises(IngestError, match=message) as err:
        ingest(CHURN, str(src), str(out), str(state_dir))
    assert "\n" not in str(err.value)
    assert not out.exists()  # nothing half-written
    assert not state_dir.exists() or not any(state_dir.rglob("*.json"))


def test_only_an_empty_cell_is_missing(tmp_path, state_dir):
    src = write(tmp_path / "c.csv", "tenure,monthly,plan,Churn\n3,NaN,NA,Yes\n4,,null,No\n")
    out = tmp_path / "out.parquet"
    ingest(CHURN, str(src), str(out), str(state_dir))
    df = pd.read_parquet(out)
    assert df["plan"].tolist() == ["NA", "null"]  # Namibia and a literal word stay text
    assert df["monthly"].tolist() == ["NaN", None]  # "NaN" is for validation to reject as not a number


def test_directory_source_union_in_file_order(tmp_path, state_dir):
    folder = tmp_path / "in"
    (folder / "2026" / "01").mkdir(parents=True)
    write(folder / "2026" / "01" / "b.csv", "tenure,monthly,plan,Churn\n5,50,pro,No\n")
    write(folder / "a.csv", "tenure,monthly,plan,Churn\n3,20.5,basic,Yes\n40,80,pro,No\n")
    write(folder / "copy-of-a.csv", "tenure,monthly,plan,Churn\n3,20.5,basic,Yes\n40,80,pro,No\n")
    write(folder / "_SUCCESS", "")
    write(folder / ".a.csv.part", "half a file")
    out = tmp_path / "out.parquet"
    result = ingest(CHURN, str(folder), str(out), str(state_dir), run_id="r1")
    df = pd.read_parquet(out)
    assert result.rows == 3 and result.duplicate_files == [str(folder / "copy-of-a.csv")]
    assert df["source_file"].tolist() == [str(folder / "2026" / "01" / "b.csv"), str(folder / "a.csv"), str(folder / "a.csv")]
    assert df["source_line"].tolist() == [2, 2, 3]
    # the stand-in event time is each file's own first ingestion time, recorded once
    assert (df["event_timestamp"] == df["ingested_at"]).all()
    first_seen = json.loads((state_dir / "ingest" / "first_seen" / f"{result.files[1]['sha256']}.json").read_text())
    assert first_seen["run_id"] == "r1" and first_seen["ingested_at"] == df["ingested_at"].iloc[1]
    manifest = json.loads((state_dir / "ingest" / "churn" / "manifests" / f"{result.fingerprint}.json").read_text())
    assert [f["rows"] for f in manifest["files"]] == [1, 2] and manifest["run_id"] == "r1"


def test_preflight_skips_files_already_ingested(tmp_path, state_dir, monkeypatch):
    from components.data import ingest as ingest_module
    from components.data.ingest import check_source

    folder = tmp_path / "in"
    folder.mkdir()
    write(folder / "a.csv", "tenure,monthly,plan,Churn\n3,20.5,basic,Yes\n")
    ingest(CHURN, str(folder), str(tmp_path / "out.parquet"), str(state_dir))
    write(folder / "b.csv", "tenure,monthly,plan,Churn\n4,20.5,basic,No\n")
    reads = []
    real = ingest_module._read
    monkeypatch.setattr(ingest_module, "_read", lambda p, s: reads.append(Path(s).name) or real(p, s))
    assert check_source(CHURN, str(folder), str(state_dir)) == 2
    assert reads == ["b.csv"]
