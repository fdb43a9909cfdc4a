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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from components.core import bundle as bundle_lib
from components.core import storage, tracking
from components.core.settings import get_settings
from components.core.spec import DatasetSpec
from components.training.card import model_card
from components.training.pyfunc import write_mlflow_model
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


def training_description(dataset: str, validation_auc: float, best_epoch: int, family: str = "network") -> str:
    """A new version's description. The evaluate step keeps the first paragraph and replaces the rest with its verdict."""
    detail = {"network": f" (best epoch {best_epoch})", "lightgbm": f" ({best_epoch} trees)"}.get(family, "")
    return (
        f"{dataset} ({family}): validation ROC-AUC {validation_auc:.4f}{detail}.\n\n"
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


def family_fingerprint(base: str, family: str) -> str:
    """The network keeps the fingerprint it always had (its earlier versions stay reusable); other families add their name."""
    return base if family == "network" else hashlib.sha256(f"{base}:{family}".encode()).hexdigest()


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
    families: tuple[str, ...] | list[str] = ("network",),
) -> dict[str, Any]:
    """Train (or reuse) one model per family; write the bundles to `model_dir`; return what the pipeline records.

    One family: its bundle is `model_dir` itself and the MLflow run is its run. Several (the candidates the evaluate
    step chooses from): `model_dir/<family>/` each, listed in `model_dir/candidates.json`, one parent run with a
    child run per candidate, and each candidate registered as a version tagged with its family. A candidate that
    fails is recorded as refused with its reason and the others still compete.

    `nodes` > 1 trains the network in a Kubeflow Trainer TrainJob (`gpus_per_node` GPUs on each); on one node, a pod
    with several GPUs trains it on all of them with DistributedDataParallel (torchrun), else in this process.
    `pipeline_run` (the KFP run id) and `pipeline_run_name` name and tag the MLflow run; empty outside a pipeline.
    """
    from components.core.candidates import CANDIDATES_FILE, check_families
    from components.training.train import split_validation

    families = check_families(families)
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
    base_fingerprint = inputs_fingerprint(train_path, params, feature_service, code)
    several = len(families) > 1

    def target(family: str) -> str:
        return storage.join(model_dir, family) if several else model_dir

    existing = {f: tracking.find_version_by_inputs(client, name, family_fingerprint(base_fingerprint, f)) for f in families}
    if all(v is not None for v in existing.values()):
        entries: list[dict[str, Any]] = [_reuse(client, f, existing[f], target(f), name) for f in families]
        return _outcome(name, entries, str(entries[0]["run_id"]), model_dir, several, reused=True)
    import mlflow
    from mlflow.data.pandas_dataset import from_pandas

    train = pd.read_parquet(train_path)
    # A data set too small to hold out a calibration tail fails here, in seconds, before any candidate trains.
    split_validation(train.sort_values("event_timestamp", kind="stable").reset_index(drop=True), params)
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
        **tracking.pipeline_run_tags(settings, pipeline_run, pipeline_run_name),
    }
    if not several:
        tags[tracking.INPUTS_TAG] = base_fingerprint
    if settings.step_image:  # no image tag at all for a local run (see lineage["image"])
        tags[tracking.IMAGE_TAG] = settings.step_image
    if nodes > 1:  # the ranks ran in the TrainJob's image, which build_trainjob took from this setting
        tags["mlwf.trainjob_image"] = settings.trainjob_image
    context = _Context(spec, train, train_path, params, lineage, tags, client, name, nodes, gpus_per_node, nproc, api_client, pipeline_run)
    # Named "training" until the version exists; renamed once it is registered, at the end of the run.
    with mlflow.start_run(run_name=tracking.run_name(spec.name, None, pipeline_run)) as run:
        mlflow.set_tags({**tags, "mlwf.candidates": ",".join(families)})
        mlflow.log_params(params_dict(params))
        mlflow.log_params(
            {
                "rows_train": len(train),
                "features": ",".join(spec.feature_names),
                "families": ",".join(families),
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
        entries = []
        for family in families:
            found = existing[family]
            if found is not None:
                log.info("%s: identical inputs already trained: reusing version %s", family, found.version)
                entries.append(_reuse(client, family, found, target(family), name))
                continue
            fingerprint = family_fingerprint(base_fingerprint, family)
            if not several:
                entries.append(_train_candidate(context, family, fingerprint, target(family), nested=False))
                continue
            try:
                with mlflow.start_run(run_name=f"{spec.name} · {family}", nested=True):
                    entries.append(_train_candidate(context, family, fingerprint, target(family), nested=True))
            except Exception as err:  # one family's failure is a refused candidate, not a failed training
                reason = f"{type(err).__name__}: {err}".splitlines()[0][:500]
                log.warning("%s: refused: %s", family, reason)
                entries.append({"family": family, "refused": reason})
        if not any(e.get("version") for e in entries):
            raise RuntimeError("every candidate failed to train: " + "; ".join(f"{e['family']}: {e['refused']}" for e in entries))
        versions = ", ".join(f"{e['family']} v{e['version']}" for e in entries if e.get("version"))
        if several:
            mlflow.log_text(json.dumps(entries, indent=2, default=str), CANDIDATES_FILE)
            mlflow.set_tags({"mlflow.runName": f"{tracking.run_name(spec.name, None, pipeline_run)} · {versions}"[:250]})
        return _outcome(name, entries, run.info.run_id, model_dir, several, reused=False)


def _outcome(name: str, entries: list[dict[str, Any]], run_id: str, model_dir: str, several: bool, reused: bool) -> dict[str, Any]:
    """What the step records: the first trained candidate's fields (one family: the model's), and every candidate."""
    from components.core.candidates import CANDIDATES_FILE

    if several:
        storage.write_bytes(storage.join(model_dir, CANDIDATES_FILE), json.dumps(entries, indent=2, default=str).encode())
    first = next(e for e in entries if e.get("version"))
    out = {**{k: v for k, v in first.items() if k != "refused"}, "model_name": name, "run_id": run_id, "reused": reused}
    if several:
        out["candidates"] = ", ".join(f"{e['family']} v{e['version']}" if e.get("version") else f"{e['family']} refused" for e in entries)
    return out


def _reuse(client: Any, family: str, existing: Any, model_dir: str, name: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        local = tracking.download_bundle(client, existing, tmp)
        bundle_lib.verify(local)
        storage.copy_dir(local, model_dir)
    return {
        "family": family,
        "version": str(existing.version),
        "run_id": existing.run_id,
        "reused": True,
        "bundle_sha256": bundle_lib.bundle_digest(model_dir),
        "source": existing.source,
    }


@dataclass(frozen=True)
class _Context:
    """What every candidate of one training run shares."""

    spec: DatasetSpec
    train: pd.DataFrame
    train_path: str
    params: TrainParams
    lineage: dict[str, Any]
    tags: dict[str, Any]
    client: Any
    name: str
    nodes: int
    gpus_per_node: int
    nproc: int
    api_client: Any
    pipeline_run: str


def _train_candidate(ctx: _Context, family: str, fingerprint: str, model_dir: str, nested: bool) -> dict[str, Any]:
    """Train one family in the active MLflow run, seal its bundle, log it and register it as a version."""
    import mlflow

    from components.core.threads import cpu_budget

    spec, params = ctx.spec, ctx.params
    numeric = [f.name for f in spec.numeric]
    categorical = [c.name for c in spec.categorical]
    run = mlflow.active_run()
    assert run is not None
    lineage = {**ctx.lineage, "family": family, "inputs_fingerprint": fingerprint, "run_id": run.info.run_id}
    if nested:
        mlflow.set_tags({**ctx.tags, tracking.INPUTS_TAG: fingerprint, "mlwf.family": family})
        mlflow.log_params({**params_dict(params), "family": family})
    else:
        mlflow.set_tags({"mlwf.family": family})

    def progress(row: dict[str, float]) -> None:
        log.info(
            "epoch %d  loss %.4f  val_roc_auc %.4f  %.0f samples/s", row["epoch"], row["loss"], row["val_roc_auc"], row["samples_per_s"]
        )
        mlflow.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))

    extra: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / "bundle"
        if family == "network" and (ctx.nodes > 1 or ctx.nproc > 1):
            result, _ = _train_data_parallel(
                spec, ctx.train_path, params, lineage, staged, ctx.nodes, ctx.gpus_per_node, ctx.nproc, ctx.api_client
            )
            for row in result.history:  # the ranks do not talk to MLflow: their history is logged here
                progress(row)
        else:
            if family == "network":
                program, vocab, result = train_model(ctx.train, numeric, categorical, params, progress)
            elif family == "lightgbm":
                from components.training.families import train_lightgbm_family

                program, vocab, result, extra = train_lightgbm_family(ctx.train, numeric, categorical, params, cpu_budget())
            else:
                from components.training.families import train_logistic_family

                program, vocab, result, extra = train_logistic_family(ctx.train, numeric, categorical, params)
            card = model_card(spec, ctx.name, lineage, result, ctx.train)
            build_bundle(staged, program, vocab, result, ctx.train, numeric, categorical, lineage, card)
        # Every bundle is also an MLflow Model (pyfunc), so models:/<name>@champion loads in MLflow as it serves;
        # its files join the manifest, so the digest is read after.
        write_mlflow_model(staged, ctx.train)
        digest = bundle_lib.bundle_digest(staged)
        mlflow.log_metrics(
            {
                "best_epoch": result.best_epoch,
                "val_roc_auc_best": result.validation_auc,
                "threshold": result.threshold,
                "train_samples_per_s": result.samples_per_second,
                "epochs_run": len(result.history),
                **{k: float(v) for k, v in extra.items() if isinstance(v, (int, float))},
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
        ctx.client,
        ctx.name,
        run.info.run_id,
        source,
        {tracking.INPUTS_TAG: fingerprint, tracking.BUNDLE_TAG: digest, "mlwf.family": family},
        training_description(spec.name, result.validation_auc, result.best_epoch, family),
    )
    name = tracking.run_name(spec.name, version, ctx.pipeline_run)
    mlflow.set_tags({"mlwf.model_version": version, "mlflow.runName": f"{name} · {family}" if nested else name})
    return {
        "family": family,
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
