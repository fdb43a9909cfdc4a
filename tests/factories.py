"""Factories the tests share (synthetic frames, small specs), so no test module imports another.

Small and seeded: the same call gives the same frame, and a model trained on it learns in a few epochs.
"""

from __future__ import annotations

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
