"""Kubeflow Pipelines from here: the client, run arguments (--arg NAME=VALUE, GPU placement, a retraining's
training arguments) and the recurring monitoring run."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def kfp_client(host: str, namespace: str) -> Any:
    """kfp.Client with, in order: a bearer token (KFP_TOKEN), a session cookie (KFP_COOKIE), the in-cluster
    ServiceAccount token (audience pipelines.kubeflow.org), else no credentials."""
    import kfp

    token, cookie = os.environ.get("KFP_TOKEN"), os.environ.get("KFP_COOKIE")
    if token:
        return kfp.Client(host=host, namespace=namespace, existing_token=token)
    if cookie:
        return kfp.Client(host=host, namespace=namespace, cookies=cookie)
    if Path("/var/run/secrets/kubeflow/pipelines/token").exists():
        from kfp.client import ServiceAccountTokenVolumeCredentials

        return kfp.Client(host=host, namespace=namespace, credentials=ServiceAccountTokenVolumeCredentials())
    return kfp.Client(host=host, namespace=namespace)


def parse_arguments(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"--arg takes NAME=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def with_gpu_placement(package: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """Fill the train step's GPU tolerations and node selector from settings, unless given as --arg.

    Only for a package that has those parameters (the training pipeline); the node selector stays empty
    for a CPU run (gpu_count 0), where it would only keep the pod off CPU nodes.
    """
    import yaml

    from pipelines.training import gpu_placement_arguments

    with open(package) as handle:
        spec = next(yaml.safe_load_all(handle))
    params = spec.get("root", {}).get("inputDefinitions", {}).get("parameters", {})
    if "gpu_tolerations" not in params:
        return arguments
    default_count = int(params.get("gpu_count", {}).get("defaultValue", 1))
    return {**gpu_placement_arguments(int(arguments.get("gpu_count", default_count))), **arguments}


def training_arguments(base: dict[str, Any], pairs: list[str]) -> dict[str, Any]:
    """Training pipeline arguments for a retraining; `NAME=200` becomes 200.0 where the pipeline takes a Float
    (kfp rejects an int for a float input)."""
    from pipelines.training import training_pipeline

    types = {name: spec.type for name, spec in training_pipeline.component_spec.inputs.items()}
    out = {**base, **parse_arguments(pairs)}
    unknown = sorted(set(out) - set(types))
    if unknown:
        raise ValueError(f"the training pipeline has no parameter(s) {unknown}; it takes {sorted(types)}")
    return {k: float(v) if types[k] == "Float" and isinstance(v, int) else v for k, v in out.items()}


def cron_with_seconds(expression: str) -> str:
    """KFP recurring runs take a 6-field cron (seconds first); a usual 5-field one gets second 0."""
    fields = expression.split()
    if len(fields) == 5:
        return " ".join(["0", *fields])
    if len(fields) == 6:
        return " ".join(fields)
    raise ValueError(f"--cron takes 5 fields (minute hour day month weekday) or 6 (seconds first), got {expression!r}")


def schedule_monitoring(
    client: Any, package: str, cron: str, experiment: str, job_name: str, params: dict[str, Any], namespace: str
) -> Any:
    """A recurring run of the monitoring package: one run at a time, no backfill of missed slots."""
    found = client.create_experiment(name=experiment, namespace=namespace)  # returns the existing one by name
    return client.create_recurring_run(
        experiment_id=found.experiment_id,
        job_name=job_name,
        cron_expression=cron_with_seconds(cron),
        pipeline_package_path=package,
        params=params,
        max_concurrency=1,
        no_catchup=True,
        enable_caching=False,
    )
