"""A simple scikit-learn baseline, trained on the same train split and scored on the same test split.

It answers "is the network worth it?": the report puts its metrics and per-row latency beside the
bundle's (the accuracy-versus-latency trade). It is never deployed; it gates when the policy sets
`baseline.max_regression` (the model may be worse than it by at most that much on the same test rows). Like the
network it picks its decision threshold by best F1 on the latest rows of the training set, so the two
are compared at thresholds chosen the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from components.core.bundle import columns_from_frame
from components.core.spec import EVENT_TIMESTAMP, LABEL
from components.core.stats import best_f1_threshold

VALIDATION_FRACTION = 0.15  # the network's default validation split (TrainParams.validation_fraction)


def _signed_log(x: Any) -> Any:
    """The network's numeric transform: tames heavy tails without knowing the units."""
    return np.sign(x) * np.log1p(np.abs(x))


@dataclass
class BaselineModel:
    kind: str
    numeric: list[str]
    categorical: list[str]
    pipeline: Any  # a fitted sklearn Pipeline
    threshold: float

    @property
    def feature_names(self) -> list[str]:
        return self.numeric + self.categorical

    def frame(self, columns: Mapping[str, Sequence[Any]]) -> pd.DataFrame:
        """Raw column values (None for missing), as the bundle takes them -> the frame the pipeline was fit on."""
        data: dict[str, Any] = {}
        for name in self.numeric:
            data[name] = np.asarray([np.nan if v is None else v for v in columns[name]], dtype=np.float64)
        for name in self.categorical:
            data[name] = np.asarray(["<missing>" if v is None else str(v) for v in columns[name]], dtype=object)
        return pd.DataFrame(data)

    def predict_proba(self, columns: Mapping[str, Sequence[Any]]) -> np.ndarray:
        """Same call shape as Bundle.predict_proba, so both are timed by the same per-row loop."""
        return self.pipeline.predict_proba(self.frame(columns))[:, 1].astype(np.float64)


def _pipeline(kind: str, numeric: list[str], categorical: list[str], seed: int) -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, OrdinalEncoder, StandardScaler

    if kind == "logistic_regression":
        numeric_steps = make_pipeline(FunctionTransformer(_signed_log), SimpleImputer(strategy="mean"), StandardScaler())
        prep = ColumnTransformer(
            [
                ("numeric", numeric_steps, numeric),
                ("categorical", OneHotEncoder(handle_unknown="infrequent_if_exist", min_frequency=5), categorical),
            ]
        )
        model = LogisticRegression(max_iter=1000, C=1.0)
    elif kind == "hist_gradient_boosting":
        # Codes for categories; unseen ones become -1, which the trees treat as missing.
        prep = ColumnTransformer(
            [
                ("numeric", "passthrough", numeric),
                (
                    "categorical",
                    OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1, encoded_missing_value=-1),
                    categorical,
                ),
            ]
        )
        flags = [False] * len(numeric) + [True] * len(categorical)
        model = HistGradientBoostingClassifier(max_iter=200, learning_rate=0.1, categorical_features=flags, random_state=seed)
    else:
        raise ValueError(f"unknown baseline kind {kind!r}: use logistic_regression or hist_gradient_boosting")
    return Pipeline([("prep", prep), ("model", model)])


def fit_baseline(
    train: pd.DataFrame, numeric: list[str], categorical: list[str], kind: str = "logistic_regression", seed: int = 42
) -> BaselineModel:
    """Fit on the earlier rows of `train`, choose the threshold on its latest rows (time order, as the network does)."""
    if train[LABEL].nunique() < 2:
        raise ValueError("the training set has only one class: cannot fit the baseline")
    ordered = train.sort_values(EVENT_TIMESTAMP, kind="stable") if EVENT_TIMESTAMP in train else train
    cut = int(len(ordered) * (1 - VALIDATION_FRACTION))
    fit_df, val_df = ordered.iloc[:cut], ordered.iloc[cut:]
    if fit_df[LABEL].nunique() < 2 or val_df[LABEL].nunique() < 2:
        fit_df = val_df = ordered  # too small to split by time and keep both classes on each side
    model = BaselineModel(kind, list(numeric), list(categorical), _pipeline(kind, list(numeric), list(categorical), seed), 0.5)
    model.pipeline.fit(model.frame(columns_from_frame(fit_df, model.feature_names)), fit_df[LABEL].to_numpy(dtype=int))
    val_p = model.predict_proba(columns_from_frame(val_df, model.feature_names))
    model.threshold = best_f1_threshold(val_df[LABEL].to_numpy(dtype=int), val_p)
    return model
