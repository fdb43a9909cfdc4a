"""Training on several nodes: a Kubeflow Trainer TrainJob (trainer.kubeflow.org/v1alpha1) that the train step
creates and waits for.

The TrainJob runs `torchrun -m components.training.distributed` on every node of the referenced
ClusterTrainingRuntime (default `torch-distributed`, whose torch plugin sets the PET_* rendezvous variables
torchrun reads). Nodes read the training set from, and rank 0 writes the bundle and result to, a work
prefix every node can reach (on a cluster: under the s3:// state directory). Settings and credentials
reach the nodes the way they reach pipeline steps: from the `mlwf-settings` ConfigMap and the Secrets, by
reference only. GPU tolerations and the node selector come from settings, through a runtime patch of the
node pods.

Pure functions build the object and judge its status; `run_trainjob` is the thin loop that talks to the API
server. Every wait has a deadline and every API call a request timeout.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

from components.core.settings import Settings

log = logging.getLogger(__name__)

GROUP, VERSION, PLURAL, KIND = "trainer.kubeflow.org", "v1alpha1", "trainjobs", "TrainJob"
NODE_JOB = "node"  # the replicated job (and container) of the torch-distributed runtime that runs the trainer
PATCH_MANAGER = "mlwf.io/train-step"
REQUEST_TIMEOUT = (5, 30)  # (connect, read) seconds
MAX_NAME = 63
# What the steps read on a cluster: the same ConfigMap keys and Secrets as the pipeline's tasks.
CONFIG_MAP = "mlwf-settings"
CONFIG_KEYS = ("MLWF_PROFILE", "MLWF_STATE_DIR", "MLFLOW_TRACKING_URI", "MLWF_MLFLOW_EXPERIMENT", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION")
SECRET_KEYS = {"mlwf-s3": ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}

Obj = dict[str, Any]


class TrainJobError(RuntimeError):
    """Creating or waiting for the TrainJob failed; the message names the job and why."""


def job_name(run_id: str) -> str:
    """A DNS-1035 name from the MLflow run id: one TrainJob per training run, so a retry finds its own."""
    clean = re.sub(r"[^a-z0-9-]", "-", run_id.lower()).strip("-")
    return f"mlwf-train-{clean}"[:MAX_NAME].rstrip("-")


def _env() -> list[Obj]:
    env: list[Obj] = [
        {"name": key, "valueFrom": {"configMapKeyRef": {"name": CONFIG_MAP, "key": key, "optional": True}}} for key in CONFIG_KEYS
    ]
    for secret, keys in SECRET_KEYS.items():
        env += [{"name": key, "valueFrom": {"secretKeyRef": {"name": secret, "key": key, "optional": True}}} for key in keys]
    return env + [{"name": "PYTHONUNBUFFERED", "value": "1"}]


def build_trainjob(
    name: str,
    namespace: str,
    image: str,
    module_args: list[str],
    nodes: int,
    gpus_per_node: int,
    settings: Settings,
    cpu: str = "4",
    memory: str = "16Gi",
) -> Obj:
    """The TrainJob: `nodes` nodes, one process per GPU (one process on a CPU node), rank 0 writes the result."""
    if nodes < 1:
        raise ValueError(f"a TrainJob needs at least one node, got {nodes}")
    if gpus_per_node < 0:
        raise ValueError(f"gpus_per_node must be >= 0, got {gpus_per_node}")
    limits: Obj = {"cpu": cpu, "memory": memory}
    if gpus_per_node:
        limits["nvidia.com/gpu"] = str(gpus_per_node)
    trainer: Obj = {
        "image": image,
        "command": ["torchrun"],
        "args": ["-m", "components.training.distributed", *module_args],
        "numNodes": nodes,
        "numProcPerNode": max(gpus_per_node, 1),
        "resourcesPerNode": {"limits": limits, "requests": dict(limits)},
        "env": _env(),
    }
    spec: Obj = {
        "runtimeRef": {"apiGroup": GROUP, "kind": "ClusterTrainingRuntime", "name": settings.trainjob_runtime},
        "trainer": trainer,
        "activeDeadlineSeconds": int(settings.trainjob_timeout_s),
    }
    pod: Obj = {}
    if gpus_per_node and settings.gpu_tolerations:
        pod["tolerations"] = [dict(t) for t in settings.gpu_tolerations]
    if gpus_per_node and settings.gpu_node_selector:
        pod["nodeSelector"] = dict(settings.gpu_node_selector)
    if settings.trainjob_service_account:
        pod["serviceAccountName"] = settings.trainjob_service_account
    if pod:
        replicated = {"name": NODE_JOB, "template": {"spec": {"template": {"spec": pod}}}}
        spec["runtimePatches"] = [
            {"manager": PATCH_MANAGER, "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [replicated]}}}}
        ]
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/part-of": "mlwf", "app.kubernetes.io/component": "train"},
        },
        "spec": spec,
    }


def verdict(obj: Obj) -> tuple[str, str]:
    """("complete" | "failed" | "waiting", detail) from the TrainJob's status conditions."""
    conditions = {c.get("type"): c for c in (obj.get("status") or {}).get("conditions") or []}
    for kind, state in (("Failed", "failed"), ("Complete", "complete")):
        condition = conditions.get(kind)
        if condition and condition.get("status") == "True":
            return state, f"{condition.get('reason', kind)}: {condition.get('message', '')}".strip(": ")
    if (conditions.get("Suspended") or {}).get("status") == "True":
        return "waiting", "suspended (waiting for quota or a resume)"
    return "waiting", "running" if conditions else "not started yet"


def custom_objects_api(api_client: Any = None) -> Any:
    from components.core.kube import custom_objects_api as api

    return api(api_client, TrainJobError, " for the TrainJob")


def _error(err: Any, what: str) -> TrainJobError:
    return TrainJobError(f"{what}: HTTP {err.status} {err.reason}: {str(err.body or '')[:300]}")


def create(api: Any, body: Obj) -> Obj:
    """Create the TrainJob; one that already exists under this name (a retried step) is taken as ours."""
    from kubernetes.client.exceptions import ApiException

    name, namespace = body["metadata"]["name"], body["metadata"]["namespace"]
    try:
        return api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body, _request_timeout=REQUEST_TIMEOUT)
    except ApiException as err:
        if err.status != 409:
            raise _error(err, f"creating TrainJob {namespace}/{name}") from err
    log.info("TrainJob %s/%s already exists: waiting for it", namespace, name)
    return read(api, name, namespace)


def read(api: Any, name: str, namespace: str) -> Obj:
    from kubernetes.client.exceptions import ApiException

    try:
        return api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, _request_timeout=REQUEST_TIMEOUT)
    except ApiException as err:
        if err.status == 404:
            raise TrainJobError(f"TrainJob {namespace}/{name} disappeared while the train step waited for it") from err
        raise _error(err, f"reading TrainJob {namespace}/{name}") from err


def wait(api: Any, name: str, namespace: str, timeout_s: float, poll_s: float = 10.0) -> Obj:
    """Poll until Complete (returned) or Failed (raised); API 5xx and connection trouble are waited out."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    deadline = time.monotonic() + timeout_s
    detail = "not read yet"
    while True:
        try:
            obj = read(api, name, namespace)
            state, detail = verdict(obj)
        except HTTPError as err:
            state, detail = "waiting", f"API server unreachable: {err}"
        except TrainJobError as err:
            if not (isinstance(err.__cause__, ApiException) and err.__cause__.status >= 500):
                raise
            state, detail = "waiting", str(err)
        if state == "complete":
            log.info("TrainJob %s/%s complete (%s)", namespace, name, detail)
            return obj
        if state == "failed":
            raise TrainJobError(f"TrainJob {namespace}/{name} failed: {detail}")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TrainJobError(f"TrainJob {namespace}/{name} not complete after {timeout_s:g}s: {detail}")
        time.sleep(min(poll_s, remaining))


def run_trainjob(body: Obj, timeout_s: float, api_client: Any = None, poll_s: float = 10.0) -> Obj:
    """Create the TrainJob (or find the one a previous attempt created) and wait for it to complete."""
    api = custom_objects_api(api_client)
    name, namespace = body["metadata"]["name"], body["metadata"]["namespace"]
    log.info(
        "TrainJob %s/%s: %d node(s) x %d process(es), runtime %s",
        namespace,
        name,
        body["spec"]["trainer"]["numNodes"],
        body["spec"]["trainer"]["numProcPerNode"],
        body["spec"]["runtimeRef"]["name"],
    )
    create(api, body)
    return wait(api, name, namespace, timeout_s, poll_s)
