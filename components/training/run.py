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

from components.core import bundle as bundle_lib
from components.core import storage, tracking
from components.core.settings import get_settings
from components.core.spec import DatasetSpec
from components.training.card import model_card
from components.training.train import TrainParams, TrainResult, build_bundle, params_dict, train_model

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


def training_description(dataset: str, validation_auc: float, best_epoch: int) -> str:
    """A new version's description. The evaluate step keeps the first paragraph and replaces the rest with its verdict."""
    return (
        f"{dataset}: validation ROC-AUC {validation_auc:.4f} (best epoch {best_epoch}).\n\n"
        f"Not evaluated yet: the evaluate step writes the test-period metrics and the gate's verdict here."
    )


def environment() -> dict[str, str]:
    """What the run ran on: versions and the device, logged as MLflow parameters."""
    import torch

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": __import__("numpy").__version__,
        "cuda": str(torch.version.cuda or "none"),
        "platform": platform.platform(terse=True),
    }
    if torch.cuda.is_available():
        env.update(
            cudnn=str(torch.backends.cudnn.version()), gpu_count=str(torch.cuda.device_count()), device_name=torch.cuda.get_device_name(0)
        )
    else:
        env.update(gpu_count="0", device_name=platform.processor() or platform.machine())
    return env


def feature_service_version(feature_service: str) -> str:
    """`transactions_v3` -> "3": FeatureServices are versioned by name (components/features/store.py)."""
    tail = feature_service.rsplit("_v", 1)
    return tail[1] if len(tail) == 2 and tail[1].isdigit() else "unversioned"


def _local_processes() -> int:
    """One process per GPU of this pod; torchrun is worth its start-up only with more than one."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 1


def _train_data_parallel(
    spec: DatasetSpec,
    train_path: str,
    params: TrainParams,
    lineage: dict[str, Any],
    staged: Path,
    nodes: int,
    gpus_per_node: int,
    nproc: int,
    api_client: Any,
) -> tuple[TrainResult, str]:
    """Train with torchrun on this node's GPUs, or with a TrainJob on `nodes` nodes; rank 0's bundle lands in `staged`."""
    from components.training import distributed

    settings = get_settings()
    if nodes > 1:
        from components.training import trainjob

        name = trainjob.job_name(str(lineage["run_id"]))
        work = storage.join(settings.state_dir, "trainjobs", name)
        remote_train = storage.join(work, "train.parquet")
        storage.write_bytes(remote_train, Path(train_path).read_bytes())
        args = distributed.module_arguments(spec, remote_train, work, params, lineage)
        body = trainjob.build_trainjob(name, settings.trainjob_namespace, settings.trainjob_image, args, nodes, gpus_per_node, settings)
        trainjob.run_trainjob(body, settings.trainjob_timeout_s, api_client)
        result = distributed.read_result(work)
        storage.download_dir(storage.join(work, distributed.BUNDLE), str(staged))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            result = distributed.run_local(nproc, spec, train_path, tmp, params, lineage)
            storage.copy_dir(str(Path(tmp) / distributed.BUNDLE), str(staged))
    bundle_lib.verify(staged)  # it crossed processes (and maybe S3): check every digest before logging it
    return result, bundle_lib.bundle_digest(staged)


def run_training_step(
    spec: DatasetSpec,
    train_path: str,
    model_dir: str,
    params: TrainParams,
    feature_service: str,
    dataset_fingerprint: str,
    nodes: int = 1,
    gpus_per_node: int = 1,
    api_client: Any = None,
    pipeline_run: str = "",
    pipeline_run_name: str = "",
) -> dict[str, Any]:
    """Train (or reuse) a model; write its bundle to `model_dir`; return what the pipeline records.

    `nodes` > 1 trains in a Kubeflow Trainer TrainJob (`gpus_per_node` GPUs on each); on one node, a pod with
    several GPUs trains on all of them with DistributedDataParallel (torchrun), else in this process.
    `pipeline_run` (the KFP run id) and `pipeline_run_name` name and tag the MLflow run; empty outside a pipeline.
    """
    if nodes < 1:
        raise ValueError(f"nodes must be at least 1, got {nodes}")
    settings = get_settings()
    if nodes > 1 and not storage.is_s3(settings.state_dir):
        from components.training.trainjob import TrainJobError

        raise TrainJobError(
            f"training on {nodes} nodes needs MLWF_STATE_DIR on s3:// (every node reads the training set "
            f"and rank 0 writes the bundle there), got {settings.state_dir!r}"
        )
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
        return {
            "model_name": name,
            "version": str(existing.version),
            "run_id": existing.run_id,
            "reused": True,
            "bundle_sha256": bundle_lib.bundle_digest(model_dir),
            "source": existing.source,
        }
    import mlflow
    from mlflow.data.pandas_dataset import from_pandas

    train = pd.read_parquet(train_path)
    numeric = [f.name for f in spec.numeric]
    categorical = [c.name for c in spec.categorical]
    training_sha = storage.sha256_file(train_path)
    lineage = {
        "dataset": spec.name,
        "dataset_fingerprint": dataset_fingerprint,
        "training_set_sha256": training_sha,
        "feature_service": feature_service,
        "feature_service_version": feature_service_version(feature_service),
        "code_version": code,
        # The image this step really ran in, or None: a kfp.local run or a direct call runs in this
        # virtualenv, and the configured release tag (settings.components_image) would be a claim, not a fact.
        "image": settings.step_image or None,
        "inputs_fingerprint": fingerprint,
        "model_name": name,
    }
    nproc = _local_processes() if nodes == 1 else max(gpus_per_node, 1)
    pipeline_run = tracking.pipeline_run_id(pipeline_run)
    tags = {
        "mlwf.dataset": spec.name,
        "mlwf.dataset_fingerprint": dataset_fingerprint,
        "mlwf.training_set_sha256": training_sha,
        "mlwf.feature_service": feature_service,
        "mlwf.feature_service_version": lineage["feature_service_version"],
        "mlflow.source.git.commit": code,
        "mlwf.code_version": code,
        tracking.INPUTS_TAG: fingerprint,
        **tracking.pipeline_run_tags(settings, pipeline_run, pipeline_run_name),
    }
    if settings.step_image:  # no image tag at all for a local run (see lineage["image"])
        tags[tracking.IMAGE_TAG] = settings.step_image
    if nodes > 1:  # the ranks ran in the TrainJob's image, which build_trainjob took from this setting
        tags["mlwf.trainjob_image"] = settings.trainjob_image
    # Named "training" until the version exists; renamed once it is registered, at the end of the run.
    with mlflow.start_run(run_name=tracking.run_name(spec.name, None, pipeline_run)) as run:
        mlflow.set_tags(tags)
        mlflow.log_params(params_dict(params))
        mlflow.log_params(
            {
                "rows_train": len(train),
                "features": ",".join(spec.feature_names),
                "nodes": nodes,
                "processes_per_node": nproc,
                "feature_service": feature_service,
                "dataset_fingerprint": dataset_fingerprint,
                "code_version": code,
            }
        )
        mlflow.log_params({f"env.{k}": v for k, v in environment().items()})
        dataset = from_pandas(train, source=train_path, targets="label", name=feature_service, digest=training_sha[:32])
        mlflow.log_input(dataset, context="training", tags={"dataset_fingerprint": dataset_fingerprint[:250]})
        lineage["run_id"] = run.info.run_id

        def progress(row: dict[str, float]) -> None:
            log.info(
                "epoch %d  loss %.4f  val_roc_auc %.4f  %.0f samples/s", row["epoch"], row["loss"], row["val_roc_auc"], row["samples_per_s"]
            )
            mlflow.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))

        with tempfile.TemporaryDirectory() as tmp:
            staged = Path(tmp) / "bundle"
            if nodes > 1 or nproc > 1:
                result, digest = _train_data_parallel(spec, train_path, params, lineage, staged, nodes, gpus_per_node, nproc, api_client)
                for row in result.history:  # the ranks do not talk to MLflow: their history is logged here
                    progress(row)
            else:
                program, vocab, result = train_model(train, numeric, categorical, params, progress)
                card = model_card(spec, name, lineage, result, train)
                digest = build_bundle(staged, program, vocab, result, train, numeric, categorical, lineage, card)
            mlflow.log_metrics(
                {
                    "best_epoch": result.best_epoch,
                    "val_roc_auc_best": result.validation_auc,
                    "threshold": result.threshold,
                    "train_samples_per_s": result.samples_per_second,
                    "epochs_run": len(result.history),
                }
            )
            calibration = result.calibration or {}
            mlflow.log_metrics(
                {
                    f"calibration_{k}": float(v)
                    for k, v in calibration.items()
                    if k in ("ece_before", "ece_after", "rows", "positives", "f1", "expected_cost")
                }
            )
            mlflow.set_tags(
                {
                    "mlwf.device": result.device,
                    "mlwf.world_size": str(result.world_size),
                    "mlwf.calibration": str(calibration.get("method", "none")),
                }
            )
            mlflow.log_artifacts(str(staged), artifact_path="bundle")
            storage.copy_dir(str(staged), model_dir)
        source = f"{run.info.artifact_uri}/bundle"
        # Registered last, so no version ever points at a run that failed half-way.
        version = tracking.register(
            client,
            name,
            run.info.run_id,
            source,
            {tracking.INPUTS_TAG: fingerprint, tracking.BUNDLE_TAG: digest},
            training_description(spec.name, result.validation_auc, result.best_epoch),
        )
        mlflow.set_tags({"mlwf.model_version": version, "mlflow.runName": tracking.run_name(spec.name, version, pipeline_run)})
    return {
        "model_name": name,
        "version": version,
        "run_id": run.info.run_id,
        "reused": False,
        "bundle_sha256": digest,
        "source": source,
        "device": result.device,
        "world_size": result.world_size,
        "epochs": len(result.history),
        "val_roc_auc": result.validation_auc,
    }
