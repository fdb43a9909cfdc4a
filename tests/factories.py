"""Factories the tests share (synthetic frames, small specs), so no test module imports another.

Small and seeded: the same call gives the same frame, and a model trained on it learns in a few epochs.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.core.spec import CategoricalFeature, DatasetSpec, NumericFeature

# The columns of `synthetic()`, as a dataset spec would declare them.
SYNTHETIC_SPEC = DatasetSpec(
    name="synthetic",
    label="y",
    positive="1",
    negative="0",
    numeric=(NumericFeature("x1"), NumericFeature("x2", nullable=True)),
    categorical=(CategoricalFeature("colour", values=("red", "green", "blue")),),
    description="Two numbers and a colour.",
)


def synthetic(n: int = 1500, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x1 = rng.normal(size=n)
    x2 = rng.lognormal(size=n)
    colour = rng.choice(["red", "green", "blue"], n)
    logit = 2 * x1 + (colour == "red") * 1.5 - 1.0
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype("int8")
    x2[::50] = np.nan  # missing values are imputed inside the program
    return pd.DataFrame(
        {
            "event_timestamp": pd.date_range("2026-01-01", periods=n, freq="min", tz="UTC"),
            "x1": x1,
            "x2": x2,
            "colour": colour,
            "label": y,
        }
    )


def transactions_frame(rows: int, seed: int) -> tuple[pd.DataFrame, list[str], list[str]]:
    """The bundled demo data as the validate step would hand it on (typed, with the entity and event time), and
    the transactions spec's numeric and categorical features: what a test trains a real bundle on."""
    from components.core.spec import load_spec
    from components.data.datagen import GenConfig, generate

    spec = load_spec("transactions")
    numeric = [f.name for f in spec.numeric]
    categorical = [c.name for c in spec.categorical]
    raw = generate(GenConfig(rows=rows, seed=seed))
    frame = pd.DataFrame(
        {
            "transaction_id": raw["transaction_id"].astype(str),
            "event_timestamp": pd.to_datetime(raw["event_time"], utc=True),
            **{n: raw[n].astype("float64") for n in numeric},
            **{c: raw[c].astype(str) for c in categorical},
            "label": raw["is_fraud"].astype("int8"),
        }
    )
    return frame, numeric, categorical


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalArtifact:
    """What a KFP artifact gives a step called directly: a path, metadata, and log_metric for Metrics."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.uri = str(path)
        self.metadata: dict[str, Any] = {}
        self.metrics: dict[str, float] = {}

    def log_metric(self, key: str, value: float) -> None:
        self.metrics[key] = value
