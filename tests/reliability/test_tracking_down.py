"""Fault: the MLflow tracking server is down, or dies in the middle of a training run.

Expected: a fast, clear failure (bounded retries, the URI in the message) and no orphan model version.
Proof that nothing was lost or half-registered: the registry, read back after the server returns, holds
no version for the interrupted run.
"""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import requests

from components.core.spec import parse_spec
from components.training.run import run_training_step
from components.training.train import TrainParams
from tests.factories import free_port

pytestmark = pytest.mark.integration
SPEC = parse_spec({"name": "rel", "label": {"column": "y", "positive": 1}, "features": {"numeric": ["x1", "x2"], "categorical": ["c"]}})


def _train_set(path) -> str:
    rng = np.random.default_rng(0)
    n = 800
    x1 = rng.normal(size=n)
    df = pd.DataFrame(
        {
            "row_id": [f"r{i}" for i in range(n)],
            "event_timestamp": pd.date_range("2026-01-01", periods=n, freq="min", tz="UTC"),
            "x1": x1,
            "x2": rng.normal(size=n),
            "c": rng.choice(["a", "b"], n),
            "label": (x1 + rng.normal(size=n) > 1).astype("int8"),
        }
    )
    df.to_parquet(path)
    return str(path)


def _start_server(db: str, artifacts: str, port: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{db}",
            "--default-artifact-root",
            artifacts,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if requests.get(f"http://127.0.0.1:{port}/health", timeout=1).ok:
                return proc
        except requests.RequestException:
            time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGKILL)
    raise RuntimeError("mlflow server did not start")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def test_server_down_fails_fast_with_the_uri(tmp_path, state_dir, monkeypatch):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens here
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    started = time.monotonic()
    with pytest.raises(Exception) as err:
        run_training_step(SPEC, _train_set(tmp_path / "t.parquet"), str(tmp_path / "m"), TrainParams(epochs=2), "rel_v1", "fp")
    assert time.monotonic() - started < 90  # bounded retries, not the client's default minutes of backoff
    assert "127.0.0.1" in str(err.value)
    assert not (tmp_path / "m").exists()  # no bundle handed downstream


def test_server_dies_mid_run_leaves_no_version(tmp_path, state_dir, monkeypatch):
    port = free_port()
    db, artifacts = str(tmp_path / "mlflow.db"), str(tmp_path / "artifacts")
    server = _start_server(db, artifacts, port)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    import components.training.train as train_module

    real = train_module.train_model

    def dying(*args, **kwargs):
        _stop(server)  # the server goes away after the run has started, before anything is registered
        return real(*args, **kwargs)

    monkeypatch.setattr("components.training.run.train_model", dying)
    try:
        with pytest.raises(Exception):  # noqa: B017  (whichever the MLflow client raises: the point is what is left behind)
            run_training_step(SPEC, _train_set(tmp_path / "t.parquet"), str(tmp_path / "m"), TrainParams(epochs=2), "rel_v1", "fp")
        server = _start_server(db, artifacts, port)
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=f"http://127.0.0.1:{port}")
        assert client.search_model_versions("name = 'rel_classifier'") == []
    finally:
        _stop(server)
