"""The CLI as a user meets it: bad input gives one line, a non-zero exit, and nothing in the state directory."""

import subprocess
import sys

import pytest

from pipelines.cli import main, parse_arguments
from tests.conftest import make_csv


def run_cli(*args: str, env_state) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, "MLWF_STATE_DIR": str(env_state)}
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "input not found"),
        (b"", "empty (0 bytes)"),
        (b"transaction_id,event_time\n", "lacks"),
        (b'a,b\n1,"2\n', "unreadable CSV"),
    ],
)
def test_bad_input_one_line_error_and_nothing_written(tmp_path, content, message):
    state = tmp_path / "state"
    data = tmp_path / "input.csv"
    if content is not None:
        data.write_bytes(content)
    result = run_cli("run", "--local", "--data", str(data), env_state=state)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("mlwf: error:") and message in lines[0], result.stderr
    assert not state.exists() or not any(p.is_file() for p in state.rglob("*"))


def test_spec_naming_a_missing_column(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: s\nlabel: {column: y, positive: 1}\nfeatures: {numeric: [x, nope]}\n")
    data = tmp_path / "d.csv"
    data.write_text("x,y\n1,0\n2,1\n")
    result = run_cli("run", "--local", "--dataset", str(spec), "--data", str(data), env_state=tmp_path / "state")
    assert result.returncode == 2 and "lacks: ['nope']" in result.stderr


def test_generate_writes_the_demo_data(tmp_path, capsys):
    out = tmp_path / "tx.parquet"
    assert main(["generate", "--rows", "300", "--out", str(out)]) == 0
    assert out.exists() and "wrote 300 rows" in capsys.readouterr().out


def test_run_without_local_points_to_submit(tmp_path, state_dir, capsys):
    data = make_csv(tmp_path / "tx.csv", rows=50)
    assert main(["run", "--data", str(data)]) == 2
    assert "mlwf submit" in capsys.readouterr().err


def test_submit_arguments_parse_as_json_when_they_can():
    assert parse_arguments(["epochs=5", "source_uri=s3://b/k.csv", "min_roc_auc=0.8"]) == {
        "epochs": 5, "source_uri": "s3://b/k.csv", "min_roc_auc": 0.8}
    with pytest.raises(ValueError, match="NAME=VALUE"):
        parse_arguments(["oops"])
