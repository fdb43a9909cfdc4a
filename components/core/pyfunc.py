"""The bundle as an MLflow pyfunc model: the loader module its MLmodel file names.

A bundle directory is itself an MLflow model directory (components/training/pyfunc.py writes the MLmodel file, the
signature and the input example at the bundle root, beside model.pt2): `mlflow.pyfunc.load_model(
"models:/<name>@champion")` imports this module and calls `_load_pyfunc(<bundle root>)`. It lives in core, not in
training, for the reason bundle.py does: loading needs the bundle loader, numpy, pandas and torch, no training code,
so any environment that can import `components.core` (the serving image included) can load the model.

What predict returns mirrors the model server's answer: a DataFrame with `probability` (float64, the calibrated
probability of the positive class, what bundle.predict_proba returns) and `label` (int64, probability >= the
bundle's decision threshold, as serving/model.py computes it). The label costs one comparison per row.

Integrity: bundle.load verifies the core files against manifest.json; here every other file the manifest lists
(MLmodel, the input example files) is checked too, so an MLmodel edited after sealing (say, its signature loosened)
is refused. One limit, inherent to the pyfunc format: MLflow reads MLmodel to find this loader before any of our
code runs, so an MLmodel rewritten to name another loader module is never seen here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from components.core import bundle as bundle_lib
from components.core.storage import sha256_file

MLMODEL = "MLmodel"
PROBABILITY = "probability"
LABEL = "label"


def verify_mlflow_files(directory: str | Path) -> dict[str, str]:
    """Check the core bundle (bundle.verify) and every MLflow file the manifest lists; raises BundleError naming the file."""
    root = Path(directory)
    digests = bundle_lib.verify(root)
    if MLMODEL not in digests:
        raise bundle_lib.BundleError(f"bundle manifest does not list {MLMODEL}: {root} was not sealed as an MLflow model")
    for name, digest in sorted(digests.items()):
        if name in bundle_lib.BUNDLE_FILES:
            continue  # checked by bundle.verify
        path = root / name
        if not path.is_file():
            raise bundle_lib.BundleError(f"bundle file missing: {name} in {root}")
        if sha256_file(path) != digest:
            raise bundle_lib.BundleError(f"bundle file {name} does not match its sha256 in {bundle_lib.MANIFEST}: refusing to load {root}")
    return digests


class BundleModel:
    """What MLflow's PyFuncModel wraps: predict(DataFrame of the features) -> DataFrame(probability, label)."""

    def __init__(self, bundle: bundle_lib.Bundle) -> None:
        self.bundle = bundle

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> Any:
        import numpy as np
        import pandas as pd

        if params:
            raise bundle_lib.BundleError(f"this model takes no inference parameters, got {sorted(params)}")
        if isinstance(model_input, dict):
            model_input = pd.DataFrame(model_input)
        if not isinstance(model_input, pd.DataFrame):
            raise bundle_lib.BundleError(
                f"expected a pandas DataFrame with the columns {self.bundle.feature_names}, got {type(model_input).__name__}"
            )
        missing = [name for name in self.bundle.feature_names if name not in model_input.columns]
        if missing:
            raise bundle_lib.BundleError(f"missing feature column(s) {missing}; the model needs {self.bundle.feature_names}")
        probabilities = self.bundle.predict_proba(bundle_lib.columns_from_frame(model_input, self.bundle.feature_names))
        labels = (probabilities >= self.bundle.threshold).astype(np.int64)
        return pd.DataFrame({PROBABILITY: probabilities, LABEL: labels}, index=model_input.index)


def _load_pyfunc(data_path: str) -> BundleModel:
    """MLflow's entry point (the pyfunc flavour's loader_module contract): the bundle root -> a predictable model."""
    root = Path(data_path)
    verify_mlflow_files(root)
    return BundleModel(bundle_lib.load(root))


def flavour_metadata(directory: str | Path) -> dict[str, Any]:
    """The bundle facts worth showing beside the MLflow model: format, threshold, output meaning."""
    signature = json.loads((Path(directory) / bundle_lib.SIGNATURE).read_text())
    return {
        "mlwf_bundle_format": signature.get("format", ""),
        "mlwf_threshold": float(signature["threshold"]),
        "mlwf_outputs": f"{PROBABILITY}: {signature.get('output', {}).get('meaning', 'probability')}; {LABEL}: {PROBABILITY} >= threshold",
    }
