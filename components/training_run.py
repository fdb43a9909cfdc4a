"""The train step's logic: fit, seal the bundle, track the run in MLflow and register the version.

A version is registered only after its run has logged everything; a rerun with identical inputs (data,
parameters, code) reuses the registered version and its bundle instead of training a duplicate.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from components import bundle as bundle_lib
from components import storage, tracking
from components.settings import get_settings
from components.spec import DatasetSpec
from components.train import TrainParams, build_bundle, params_dict, train_model

log = logging.getLogger(__name__)


def model_name(spec: DatasetSpec) -> str:
    return os.environ.get("MLWF_MODEL_NAME") or f"{spec.name}_classifier"


def inputs_fingerprint(train_path: str, params: TrainParams, feature_service: str, code: str) -> str:
    digest = hashlib.sha256()
    digest.update(storage.sha256_file(train_path).encode())
    digest.update(json.dumps(params_dict(params), sort_keys=True).encode())
    digest.update(feature_service.encode())
    digest.update(code.encode())
    return digest.hexdigest()


def model_card(spec: DatasetSpec, name: str, lineage: dict[str, Any], result: Any, train: pd.DataFrame) -> str:
    positives = int(train["label"].sum())
    return f"""# Model card: {name}

## Intended use
Scores `{spec.name}` records: the probability that `{spec.label}` is `{spec.positive}`. {spec.description}
Decisions use the threshold {result.threshold:.4f} (best F1 on the time-ordered validation split).
Not for use on populations or time periods unlike the training data without re-evaluation.

## Data
- Training rows: {len(train)} ({positives} positive, {positives / max(len(train), 1):.2%}),
  from {train['event_timestamp'].min()} to {train['event_timestamp'].max()}.
- Features ({len(spec.feature_names)}): {', '.join(spec.feature_names)}; FeatureService `{lineage['feature_service']}`.
- Dataset fingerprint: `{lineage['dataset_fingerprint'] or 'n/a'}`.

## Training
- Tabular network (signed-log + standardised numerics, embeddings for categoricals, MLP), on {result.device}.
- Best epoch {result.best_epoch}; validation ROC-AUC {result.validation_auc:.4f}.
- Code version `{lineage['code_version']}`.

## Evaluation
Test-period metrics, slices and the gate's verdict are in the evaluation report of the pipeline run
and in the MLflow run of this version.

## Limitations
Categories unseen in training share one slot; rows with missing numerics are imputed with training means.
"""


def run_training_step(
    spec: DatasetSpec,
    train_path: str,
    model_dir: str,
    params: TrainParams,
    feature_service: str,
    dataset_fingerprint: str,
) -> dict[str, Any]:
    """Train (or reuse) a model; write its bundle to `model_dir`; return what the pipeline records."""
    settings = get_settings()
    client = tracking.configure(settings)
    name = model_name(spec)
    code = tracking.code_version()
    fingerprint = inputs_fingerprint(train_path, params, feature_service, code)
    existing = tracking.find_version_by_inputs(client, name, fingerprint)
    if existing is not None:
        log.info("identical inputs already trained: reusing %s version %s", name, existing.version)
        with tempfile.TemporaryDirectory() as tmp:
            local = tracking.download_bundle(client, existing, tmp)
            bundle_lib.verify(local)
            storage.copy_dir(local, model_dir)
        return {"model_name": name, "version": str(existing.version), "run_id": existing.run_id, "reused": True,
                "bundle_sha256": bundle_lib.bundle_digest(model_dir), "source": existing.source}
    import mlflow

    train = pd.read_parquet(train_path)
    numeric = [f.name for f in spec.numeric]
    categorical = [c.name for c in spec.categorical]
    lineage = {
        "dataset": spec.name,
        "dataset_fingerprint": dataset_fingerprint,
        "training_set_sha256": storage.sha256_file(train_path),
        "feature_service": feature_service,
        "code_version": code,
        "inputs_fingerprint": fingerprint,
        "model_name": name,
    }
    with mlflow.start_run(run_name=f"train-{spec.name}") as run:
        mlflow.set_tags({
            "mlwf.dataset": spec.name,
            "mlwf.dataset_fingerprint": dataset_fingerprint,
            "mlwf.feature_service": feature_service,
            "mlflow.source.git.commit": code,
            "mlwf.image": settings.components_image,
            tracking.INPUTS_TAG: fingerprint,
        })
        mlflow.log_params(params_dict(params))
        mlflow.log_params({"rows_train": len(train), "features": ",".join(spec.feature_names),
                           "python": platform.python_version(), "torch": __import__("torch").__version__})

        def progress(row: dict[str, float]) -> None:
            log.info("epoch %d  loss %.4f  val_roc_auc %.4f  %.0f samples/s", row["epoch"], row["loss"], row["val_roc_auc"], row["samples_per_s"])
            mlflow.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))

        program, vocab, result = train_model(train, numeric, categorical, params, progress)
        mlflow.log_metrics({"best_epoch": result.best_epoch, "val_roc_auc_best": result.validation_auc,
                            "threshold": result.threshold, "train_samples_per_s": result.samples_per_second})
        mlflow.set_tag("mlwf.device", result.device)
        lineage["run_id"] = run.info.run_id
        card = model_card(spec, name, lineage, result, train)
        with tempfile.TemporaryDirectory() as tmp:
            staged = Path(tmp) / "bundle"
            digest = build_bundle(staged, program, vocab, result, train, numeric, categorical, lineage, card)
            mlflow.log_artifacts(str(staged), artifact_path="bundle")
            storage.copy_dir(str(staged), model_dir)
        source = f"{run.info.artifact_uri}/bundle"
        # Registered last, so no version ever points at a run that failed half-way.
        version = tracking.register(client, name, run.info.run_id, source,
                                    {tracking.INPUTS_TAG: fingerprint, tracking.BUNDLE_TAG: digest},
                                    f"{spec.name}: val ROC-AUC {result.validation_auc:.4f}")
        mlflow.set_tag("mlwf.model_version", version)
    return {"model_name": name, "version": version, "run_id": run.info.run_id, "reused": False,
            "bundle_sha256": digest, "source": source, "device": result.device,
            "epochs": len(result.history), "val_roc_auc": result.validation_auc}
