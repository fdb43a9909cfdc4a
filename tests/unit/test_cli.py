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


def test_digest_pinning_keeps_a_registry_port():
    from pipelines.cli import pin_digest

    digest = "sha256:" + "b" * 64
    assert pin_digest("localhost:5000/mlwf/components:1.2", digest) == f"localhost:5000/mlwf/components@{digest}"
    assert pin_digest("ghcr.io/mlwf/components", digest) == f"ghcr.io/mlwf/components@{digest}"
    assert pin_digest("ghcr.io/mlwf/components@sha256:old", digest) == f"ghcr.io/mlwf/components@{digest}"


def test_submit_fills_gpu_placement_from_settings(monkeypatch):
    from pathlib import Path

    from pipelines.cli import with_gpu_placement

    package = str(Path(__file__).resolve().parents[2] / "pipelines" / "compiled" / "training.yaml")
    monkeypatch.setenv("MLWF_GPU_TOLERATIONS", '[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]')
    monkeypatch.setenv("MLWF_GPU_NODE_SELECTOR", '{"nvidia.com/gpu.present": "true"}')
    gpu = with_gpu_placement(package, {})
    assert gpu["gpu_tolerations"][0]["key"] == "nvidia.com/gpu" and gpu["gpu_node_selector"] == {"nvidia.com/gpu.present": "true"}
    cpu = with_gpu_placement(package, {"gpu_count": 0})
    assert cpu["gpu_node_selector"] == {} and cpu["gpu_count"] == 0
    assert with_gpu_placement(package, {"gpu_node_selector": {"a": "b"}})["gpu_node_selector"] == {"a": "b"}


def test_suite_command_and_first_use_of_a_local_spec(tmp_path, state_dir, capsys):
    from pipelines.cli import _check_inputs

    spec = tmp_path / "churn.yaml"
    spec.write_text("name: churn\nlabel: {column: y, positive: 1}\nfeatures: {numeric: {x: {min: 0}}}\n")
    data = tmp_path / "d.csv"
    data.write_text("x,y\n1,0\n2,1\n")
    _check_inputs(str(spec), str(data))  # first use: the suite is written beside the spec, and the user told
    assert (tmp_path / "churn.suite.json").exists() and "wrote the validation suite" in capsys.readouterr().out
    assert main(["suite", "--dataset", str(spec), "--check"]) == 0
    spec.write_text(spec.read_text().replace("min: 0", "min: 1"))
    assert main(["suite", "--dataset", str(spec), "--check"]) == 2
    assert "stale" in capsys.readouterr().err
    with pytest.raises(ValueError, match="stale"):
        _check_inputs(str(spec), str(data))
    assert main(["suite", "--dataset", str(spec)]) == 0 and "wrote" in capsys.readouterr().out
    _check_inputs(str(spec), str(data))
