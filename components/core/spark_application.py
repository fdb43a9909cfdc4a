"""A data step's Spark work on a cluster: a SparkApplication (sparkoperator.k8s.io/v1beta2, Kubeflow Spark Operator
2.5.x) that the step creates with the kubernetes client and waits for.

KFP 2.17 cannot create custom resources from the DSL (kubeflow/pipelines#11636), so the step itself creates the
object, as the train step creates its TrainJob (components/training/trainjob.py). The driver runs the project's
entry module (components/data/spark_entry.py) in the Spark image; settings reach the driver and the executors
the way they reach pipeline steps: the `mlwf-settings` ConfigMap and the S3 Secret, by reference only.

Pure functions build the object and judge its status; `run_spark_application` is the thin loop that talks to
the API server. The name comes from the run id and the step, so a retried step finds the application its
previous attempt created and waits for it rather than starting a second one. Every wait has a deadline and
every API call a request timeout; a deadline passed deletes the application, so nothing keeps writing after
the step has failed.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from typing import Any

from components.core.settings import Settings

log = logging.getLogger(__name__)

GROUP, VERSION, PLURAL, KIND = "sparkoperator.k8s.io", "v1beta2", "sparkapplications", "SparkApplication"
REQUEST_TIMEOUT = (5, 30)  # (connect, read) seconds
# The operator names the driver pod `<name>-driver` and Spark names the driver's Service and the executor pods
# from the name plus suffixes; each must stay a DNS label (63), so the name is kept well short of that.
MAX_NAME = 40
CONFIG_MAP = "mlwf-settings"  # every key is a setting (components/core/settings.py); never a credential
SECRET_KEYS = {"mlwf-s3": ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}  # what the data steps read and write with
# Fixed ports, so the NetworkPolicy in manifests/base/spark.yaml can open exactly these between driver and executors:
# the driver's RPC endpoint, and the block managers (driver and executors) that serve shuffle and broadcast blocks.
DRIVER_PORT, BLOCK_MANAGER_PORT = 7078, 7079
POD_LABELS = {"app.kubernetes.io/part-of": "mlwf", "app.kubernetes.io/component": "spark"}
TMP_VOLUME = "tmp"  # the root filesystem is read-only: Python's and the JVM's temporary files go to an emptyDir

# applicationState.state (api/v1beta2/sparkapplication_types.go of the operator)
COMPLETED = "COMPLETED"
FAILED = ("FAILED", "SUBMISSION_FAILED")
# Every other state ("", SUBMITTED, RUNNING, PENDING_RERUN, INVALIDATING, SUCCEEDING, FAILING, UNKNOWN, or one a
# newer operator adds) is on the way to one of these: waited out. FAILING becomes FAILED once the driver pod ends.

Obj = dict[str, Any]


class SparkApplicationError(RuntimeError):
    """Creating or waiting for the SparkApplication failed; the message names the application and why."""


def spark_version() -> str:
    """The Spark the project pins (pyspark): the image's Spark must be the same release."""
    from components.core.spark import PYSPARK_PIN

    return PYSPARK_PIN.split("==", 1)[1]


def application_name(run_id: str, step: str) -> str:
    """A DNS-1035 name from the run id and the step: one application per step of a run, found again on a retry.

    A run id longer than fits is cut and given a short hash of the whole, so two long run ids sharing a prefix
    still get different names.
    """
    clean = re.sub(r"[^a-z0-9-]", "-", f"{step}-{run_id}".lower()).strip("-")
    name = f"mlwf-{clean}"
    if len(name) > MAX_NAME:
        digest = hashlib.sha256(f"{step}\0{run_id}".encode()).hexdigest()[:8]
        name = f"{name[: MAX_NAME - 9].rstrip('-')}-{digest}"
    if not re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name):
        raise ValueError(f"cannot make a SparkApplication name from step {step!r} and run id {run_id!r}: got {name!r}")
    return name


def _env() -> list[Obj]:
    env: list[Obj] = []
    for secret, keys in SECRET_KEYS.items():
        env += [{"name": key, "valueFrom": {"secretKeyRef": {"name": secret, "key": key, "optional": True}}} for key in keys]
    return env + [{"name": "PYTHONUNBUFFERED", "value": "1"}]


def _container_security() -> Obj:
    """The "restricted" Pod Security Standard for the Spark container (the namespace enforces it)."""
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
        "readOnlyRootFilesystem": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _pod(settings: Settings, cores: int, memory: str) -> Obj:
    return {
        "cores": cores,
        "coreLimit": str(cores),
        "memory": memory,
        "labels": dict(POD_LABELS),
        "serviceAccount": settings.spark_service_account,
        "envFrom": [{"configMapRef": {"name": CONFIG_MAP}}],
        "env": _env(),
        "podSecurityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "securityContext": _container_security(),
        "volumeMounts": [{"name": TMP_VOLUME, "mountPath": "/tmp"}],
    }


def build_spark_application(name: str, namespace: str, arguments: list[str], settings: Settings) -> Obj:
    """The SparkApplication that runs the entry module with `arguments`; sizes and counts come from settings."""
    for what, value in (
        ("MLWF_SPARK_DRIVER_CORES", settings.spark_driver_cores),
        ("MLWF_SPARK_EXECUTOR_CORES", settings.spark_executor_cores),
        ("MLWF_SPARK_EXECUTOR_INSTANCES", settings.spark_executor_instances),
    ):
        if value < 1:
            raise ValueError(f"{what} must be at least 1, got {value}")
    driver = _pod(settings, settings.spark_driver_cores, settings.spark_driver_memory)
    executor = _pod(settings, settings.spark_executor_cores, settings.spark_executor_memory)
    executor["instances"] = settings.spark_executor_instances
    executor["deleteOnTermination"] = True
    spec: Obj = {
        "type": "Python",
        "pythonVersion": "3",
        "mode": "cluster",
        "sparkVersion": spark_version(),
        "image": settings.spark_image or settings.components_image,
        "imagePullPolicy": "IfNotPresent",
        "mainApplicationFile": settings.spark_main_file,
        "arguments": list(arguments),
        "sparkConf": {
            # what the results depend on: as components/core/spark.py's local session sets it
            "spark.sql.session.timeZone": "UTC",
            "spark.sql.ansi.enabled": "false",
            "spark.sql.execution.arrow.pyspark.enabled": "true",
            "spark.driver.port": str(DRIVER_PORT),
            "spark.driver.blockManager.port": str(BLOCK_MANAGER_PORT),
            "spark.blockManager.port": str(BLOCK_MANAGER_PORT),
            # no web UI: nothing to open in the NetworkPolicy, nothing listening that nobody reads
            "spark.ui.enabled": "false",
            # The steps use no PersistentVolumeClaims: without these the driver lists PVCs to reuse them, which
            # its Role does not (and need not) allow.
            "spark.kubernetes.driver.ownPersistentVolumeClaim": "false",
            "spark.kubernetes.driver.reusePersistentVolumeClaim": "false",
        },
        "volumes": [{"name": TMP_VOLUME, "emptyDir": {}}],
        "driver": driver,
        "executor": executor,
        # A failed application is not rerun by the operator: the step reports the driver's message and a KFP
        # retry of the step replaces it (create() below).
        "restartPolicy": {"type": "Never"},
        "timeToLiveSeconds": int(settings.spark_ttl_s),
    }
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {"name": name, "namespace": namespace, "labels": {**POD_LABELS}},
        "spec": spec,
    }


def verdict(obj: Obj) -> tuple[str, str]:
    """("complete" | "failed" | "waiting", detail) from the application's status."""
    status = obj.get("status") or {}
    app = status.get("applicationState") or {}
    state = str(app.get("state") or "")
    if state == COMPLETED:
        return "complete", COMPLETED
    if state in FAILED:
        pod = (status.get("driverInfo") or {}).get("podName")
        message = " ".join(str(app.get("errorMessage") or "no error message from the operator").split())
        return "failed", f"{state}{f' (driver pod {pod})' if pod else ''}: {message}"
    return "waiting", state.lower() or "not submitted yet"


def custom_objects_api(api_client: Any = None) -> Any:
    from components.core.kube import custom_objects_api as api

    return api(api_client, SparkApplicationError, " for the SparkApplication")


def _error(err: Any, what: str) -> SparkApplicationError:
    return SparkApplicationError(f"{what}: HTTP {err.status} {err.reason}: {str(err.body or '')[:300]}")


def _where(body: Obj) -> tuple[str, str]:
    return body["metadata"]["name"], body["metadata"]["namespace"]


def create(api: Any, body: Obj, timeout_s: float = 120.0, poll_s: float = 2.0) -> Obj:
    """Create the application; one already there under this name (a retried step) is taken as ours.

    Unless it failed: a retry is meant to run the work again, so a failed one (kept until then for its driver's
    log) is deleted and created anew.
    """
    from kubernetes.client.exceptions import ApiException

    name, namespace = _where(body)
    try:
        return api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body, _request_timeout=REQUEST_TIMEOUT)
    except ApiException as err:
        if err.status != 409:
            raise _error(err, f"creating SparkApplication {namespace}/{name}") from err
    existing = read(api, name, namespace)
    state, detail = verdict(existing)
    if state != "failed":
        log.info("SparkApplication %s/%s already exists (%s): waiting for it", namespace, name, detail)
        return existing
    log.info("SparkApplication %s/%s failed in an earlier attempt (%s): replacing it", namespace, name, detail)
    delete(api, name, namespace)
    deadline = time.monotonic() + timeout_s
    while True:  # deletion is asynchronous: the name is free once the object is gone
        try:
            return api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body, _request_timeout=REQUEST_TIMEOUT)
        except ApiException as err:
            if err.status != 409:
                raise _error(err, f"creating SparkApplication {namespace}/{name}") from err
        if time.monotonic() >= deadline:
            raise SparkApplicationError(f"SparkApplication {namespace}/{name}: the failed one was not deleted within {timeout_s:g}s")
        time.sleep(poll_s)


def read(api: Any, name: str, namespace: str) -> Obj:
    from kubernetes.client.exceptions import ApiException

    try:
        return api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, _request_timeout=REQUEST_TIMEOUT)
    except ApiException as err:
        if err.status == 404:
            raise SparkApplicationError(f"SparkApplication {namespace}/{name} disappeared while the step waited for it") from err
        raise _error(err, f"reading SparkApplication {namespace}/{name}") from err


def delete(api: Any, name: str, namespace: str) -> None:
    """Delete the application (the operator's owner references take the driver and executor pods with it)."""
    from kubernetes.client.exceptions import ApiException

    try:
        api.delete_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name, propagation_policy="Foreground", _request_timeout=REQUEST_TIMEOUT
        )
    except ApiException as err:
        if err.status != 404:
            raise _error(err, f"deleting SparkApplication {namespace}/{name}") from err


def wait(api: Any, name: str, namespace: str, timeout_s: float, poll_s: float = 10.0) -> Obj:
    """Poll until COMPLETED (returned) or FAILED (raised with the driver's message); API 5xx and connection
    trouble are waited out. Past the deadline the application is deleted, then the wait raises."""
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
        except SparkApplicationError as err:
            if not (isinstance(err.__cause__, ApiException) and err.__cause__.status >= 500):
                raise
            state, detail = "waiting", str(err)
        if state == "complete":
            log.info("SparkApplication %s/%s completed", namespace, name)
            return obj
        if state == "failed":
            raise SparkApplicationError(f"SparkApplication {namespace}/{name} failed: {detail}")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            # Stop the work: a driver still running after the step gave up could commit output nobody checks.
            try:
                delete(api, name, namespace)
                stopped = "deleted"
            except SparkApplicationError as err:
                stopped = f"could not delete it ({err})"
            raise SparkApplicationError(f"SparkApplication {namespace}/{name} not complete after {timeout_s:g}s ({detail}): {stopped}")
        time.sleep(min(poll_s, remaining))


def run_spark_application(body: Obj, timeout_s: float, api_client: Any = None, poll_s: float = 10.0) -> Obj:
    """Create the application (or find the one a previous attempt created) and wait for it to complete."""
    api = custom_objects_api(api_client)
    name, namespace = _where(body)
    spec = body["spec"]
    log.info(
        "SparkApplication %s/%s: driver %s core(s)/%s, %d executor(s) x %s core(s)/%s, image %s",
        namespace,
        name,
        spec["driver"]["cores"],
        spec["driver"]["memory"],
        spec["executor"]["instances"],
        spec["executor"]["cores"],
        spec["executor"]["memory"],
        spec["image"],
    )
    create(api, body, poll_s=min(poll_s, 2.0))
    return wait(api, name, namespace, timeout_s, poll_s)
