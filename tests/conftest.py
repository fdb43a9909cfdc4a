"""Shared fixtures: an isolated state directory per test and small generated datasets."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from tests.factories import free_port as pick_port

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every setting points into a fresh temporary state directory (the local profile)."""
    state = tmp_path / "state"
    monkeypatch.setenv("MLWF_STATE_DIR", str(state))
    monkeypatch.setenv("MLWF_PROFILE", "local")
    for var in ("MLFLOW_TRACKING_URI", "MLWF_FEAST_REGISTRY", "MLWF_FEAST_ONLINE", "MLWF_FEAST_OFFLINE_ROOT", "MLWF_MODEL_NAME"):
        monkeypatch.delenv(var, raising=False)
    return state


@pytest.fixture(scope="module")
def moto_endpoint():
    """moto's S3 server on 127.0.0.1: a real S3 HTTP endpoint for storage, deploy and fault tests."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def free_port() -> int:
    return pick_port()


@pytest.fixture(scope="session")
def transactions_spec():
    from components.core.spec import load_spec

    return load_spec("transactions")


def make_csv(path: Path, rows: int = 3000, seed: int = 7, bad_fraction: float = 0.0, drift: float = 0.0) -> Path:
    from components.data.datagen import GenConfig, write

    write(GenConfig(rows=rows, seed=seed, bad_fraction=bad_fraction, drift=drift), str(path))
    return path


def ingest_frame(spec, source: Path, state: Path) -> pd.DataFrame:
    from components.data.ingest import ingest

    out = source.parent / f"{source.stem}-ingested.parquet"
    ingest(spec, str(source), str(out), str(state))
    return pd.read_parquet(out)


def assert_whole_files(*roots: Path) -> None:
    """Every file under a final name parses completely; temporary names (dot-prefixed) are the only partial ones."""
    import json

    for root in roots:
        for path in root.rglob("*"):
            if not path.is_file() or any(part.startswith(".") for part in path.relative_to(root).parts):
                continue
            if path.suffix == ".json":
                json.loads(path.read_text())
            elif path.suffix == ".parquet" or path.name in ("raw", "valid", "quarantine"):
                pd.read_parquet(path)
            elif path.suffix == ".html":
                assert path.read_text().rstrip().endswith("</html>"), f"truncated report {path}"
