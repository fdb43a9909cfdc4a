"""Fixtures shared by the fault tests: S3 settings for moto (its server is in tests/conftest.py) and small real bundles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest


def use_s3(monkeypatch: pytest.MonkeyPatch, endpoint: str, secret: str = "testing") -> None:
    """Point boto3 (and MLflow's S3 artifact store) at `endpoint` with dummy credentials."""
    for var, value in {
        "AWS_ENDPOINT_URL": endpoint,
        "MLFLOW_S3_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(var, value)


def synthetic_frame(n: int = 400, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=n), rng.lognormal(size=n)
    colour = rng.choice(["red", "green", "blue"], n)
    label = (rng.random(n) < 1 / (1 + np.exp(-(2 * x1 + (colour == "red") - 0.5)))).astype(int)
    return pd.DataFrame(
        {
            "event_timestamp": pd.date_range("2026-01-01", periods=n, freq="h", tz="UTC"),
            "x1": x1,
            "x2": x2,
            "colour": colour,
            "label": label,
        }
    )


def make_bundle(directory: Path, version: str, seed: int = 0, epochs: int = 3, lineage: dict | None = None) -> str:
    """A real, sealed bundle (x1, x2 numeric; colour categorical) trained here in about a second."""
    from components.training.train import TrainParams, build_bundle, train_model

    frame = synthetic_frame(1500, 0)  # enough of the latest rows to hold out a calibration tail with both classes
    program, vocab, result = train_model(frame, ["x1", "x2"], ["colour"], TrainParams(epochs=epochs, seed=seed, patience=3))
    build_bundle(
        directory,
        program,
        vocab,
        result,
        frame,
        ["x1", "x2"],
        ["colour"],
        {"dataset": "synthetic", "model_version": version, **(lineage or {})},
        "# test\n",
    )
    return str(directory)


@pytest.fixture(scope="module")
def small_bundle(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_bundle(tmp_path_factory.mktemp("bundle") / "v1", "1")
