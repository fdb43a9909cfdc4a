from pathlib import Path

import pandas as pd
import pytest

from components.ingest import IngestError, ingest
from components.spec import parse_spec
from tests.conftest import make_csv

CHURN = parse_spec({
    "name": "churn",
    "label": {"column": "Churn", "positive": "Yes", "negative": "No"},
    "features": {"numeric": ["tenure", "monthly"], "categorical": ["plan"]},
})


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
