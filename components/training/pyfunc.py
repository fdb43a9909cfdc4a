"""Make a sealed bundle an MLflow model too: MLmodel (pyfunc flavour), signature and input example at its root.

The bundle's files stay where they are: the pyfunc flavour's `loader_module` (components/core/pyfunc.py) loads the
bundle root with the ordinary bundle loader, so the run's `bundle` artifact folder, which the registry's versions
point at, loads both ways: `bundle.load(dir)` for serving and evaluation, `mlflow.pyfunc.load_model("models:/
<name>@champion")` for anyone with MLflow. The registry's version page reads the schema and the example from here.

The MLflow files are sealed with the bundle: after writing them, their sha256 are added to manifest.json beside the
core files' (which are first verified, so a tampered bundle is never re-sealed), so the bundle's digest
(bundle.bundle_digest) covers them and the pyfunc loader refuses an edited MLmodel. The caller must therefore take
the bundle digest AFTER this call. bundle.verify, which checks the core files, is unaffected.

Signature: every feature of signature.json, in its order: numeric features as `double`, categorical as `string`, all
required columns (a missing value inside a column is fine: NaN or None, as the server takes null). MLflow refuses
int64 columns for a double input ("Can not safely convert int64 to float64"): cast integer features to float first.
Outputs: `probability` (double) and `label` (long, probability >= the bundle's threshold), as the server answers.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path
from typing import Any

from components.core import bundle as bundle_lib
from components.core.pyfunc import LABEL, MLMODEL, PROBABILITY, flavour_metadata
from components.core.storage import sha256_file

LOADER_MODULE = "components.core.pyfunc"
MAX_EXAMPLE_ROWS = 5  # enough to show the shape of a request; the example is stored in the registry in clear


def model_signature(features: list[dict[str, Any]]) -> Any:
    """signature.json's features -> an MLflow ModelSignature (inputs in the bundle's order, the server's outputs)."""
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    types = {"numeric": "double", "categorical": "string"}
    unknown = [f"{f['name']} ({f['type']})" for f in features if f["type"] not in types]
    if unknown:
        raise bundle_lib.BundleError(f"no MLflow column type for feature(s) {unknown}: expected numeric or categorical")
    inputs = Schema([ColSpec(types[f["type"]], f["name"]) for f in features])
    outputs = Schema([ColSpec("double", PROBABILITY), ColSpec("long", LABEL)])
    return ModelSignature(inputs=inputs, outputs=outputs)


def example_frame(example: Any, features: list[dict[str, Any]]) -> Any:
    """The first rows of `example`, only the features, typed as the signature says (so the example validates)."""
    import pandas as pd

    names = [f["name"] for f in features]
    missing = [n for n in names if n not in example.columns]
    if missing:
        raise bundle_lib.BundleError(f"input example lacks feature column(s) {missing}")
    if len(example) == 0:
        raise bundle_lib.BundleError("input example has no rows")
    complete = example[names].dropna()
    # Complete rows where there are enough: MLflow writes NaN as a bare `NaN`, which strict JSON readers refuse.
    rows = (complete if len(complete) >= min(MAX_EXAMPLE_ROWS, len(example)) else example[names]).head(MAX_EXAMPLE_ROWS)
    rows = rows.reset_index(drop=True)
    out = {}
    for f in features:
        column = rows[f["name"]]
        if f["type"] == "numeric":
            out[f["name"]] = pd.to_numeric(column, errors="raise").astype("float64")
        else:
            out[f["name"]] = pd.Series([None if pd.isna(v) else str(v) for v in column.tolist()], dtype=object)
    return pd.DataFrame(out)


def write_mlflow_model(bundle_dir: str | Path, example: Any) -> None:
    """Write MLmodel (pyfunc flavour naming components.core.pyfunc), the signature and the input example at the
    bundle root, then add their sha256 to the manifest. `example`: a DataFrame holding at least the features (the
    first MAX_EXAMPLE_ROWS rows are kept). The bundle digest changes: read bundle.bundle_digest after this call."""
    import mlflow.pyfunc
    from mlflow.models import Model
    from mlflow.models.utils import _save_example  # MLflow's own writer of input_example.json + serving_input_example.json

    root = Path(bundle_dir)
    digests = bundle_lib.verify(root)  # never extend the seal of a bundle whose core files do not match it
    signature = json.loads((root / bundle_lib.SIGNATURE).read_text())
    features = signature["features"]
    # The core files' entries (optional ones included when sealed), without the MLflow entries of an earlier call.
    core = {name: digest for name, digest in digests.items() if name in bundle_lib.BUNDLE_FILES}
    # The MLflow model's id comes from the core files' digests: the same bundle always names the same model.
    core_digest = hashlib.sha256(json.dumps(core, sort_keys=True).encode()).hexdigest()
    model = Model(model_uuid=uuid.UUID(hex=core_digest[:32]).hex, signature=model_signature(features))
    model.metadata = flavour_metadata(root)
    saved = _save_example(model, example_frame(example, features), str(root))
    mlflow.pyfunc.add_to_model(model, loader_module=LOADER_MODULE)  # no `data`: MLflow passes the model root, the bundle
    model.save(str(root / MLMODEL))
    written = [MLMODEL]
    if saved is not None:
        written += [saved.info[key] for key in ("artifact_path", "serving_input_path") if saved.info.get(key)]
    sealed = {**core, **{name: sha256_file(root / name) for name in written}}
    (root / bundle_lib.MANIFEST).write_text(json.dumps({"sha256": sealed}, indent=2, sort_keys=True))
