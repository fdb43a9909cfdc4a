"""Cluster deploy: a KServe InferenceService, created once, then updated through a canary.

One call is one rollout, and a rerun converges to the same state:
  1. the bundle goes to <MLWF_MODEL_STORE>/<service>/v<version>/ (skipped when an earlier run put it there);
  2. GET the InferenceService: absent -> create it; predictor already on this storageUri -> unchanged;
     otherwise start a canary (Knative mode: canaryTrafficPercent; Standard mode: spec.canary[]);
  3. wait until the controller has really rolled the canary out, then promote it, or roll it back and raise.

Pure functions build the object, the patches and the readiness verdicts; `deploy_cluster` is the thin loop
that talks to the API server. Every wait has a deadline and every API call a request timeout.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from components import bundle as bundle_lib
from components import storage
from components.deploy import DeployError, service_name
from components.settings import Settings

log = logging.getLogger(__name__)

GROUP, API_VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
MODEL_FORMAT, MODEL_FORMAT_VERSION, RUNTIME = "mlwf-bundle", "1", "mlwf-bundle-runtime"
VERSION_ANNOTATION = "mlwf.io/model-version"
DIGEST_ANNOTATION = "mlwf.io/bundle-sha256"
MODES = ("knative", "standard")
# A small tabular program: modest requests leave room on the node; the limits stop a runaway server.
RESOURCES = {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}}
MAX_CONFLICT_RETRIES = 5
REQUEST_TIMEOUT = (5, 30)  # (connect, read) seconds: a stalled API server must not stall the step

Obj = dict[str, Any]
Verdict = tuple[str, str]  # ("ready" | "waiting" | "failed", what is still missing or why it failed)


# ---------------------------------------------------------------- the bundle in the model store


def model_store() -> str:
    store = os.environ.get("MLWF_MODEL_STORE", "").strip()
    if not storage.is_s3(store):
        raise DeployError(f"MLWF_MODEL_STORE must be an s3:// prefix the model servers can read, got {store!r}")
    return store.rstrip("/")


def upload_bundle(model_dir: str, store: str, name: str, version: str) -> str:
    """Put the bundle under <store>/<name>/v<version>/ once; returns that prefix (the storageUri).

    The trailing slash matters: KServe downloads every object under the prefix, and without it v1 would match v10.
    """
    prefix = f"{store}/{name}/v{version}/"
    manifest_uri = storage.join(prefix, bundle_lib.MANIFEST)
    manifest = (Path(model_dir) / bundle_lib.MANIFEST).read_bytes()
    if storage.exists(manifest_uri):
        if storage.read_bytes(manifest_uri) == manifest:
            return prefix  # an earlier run finished this upload (the manifest is always written last)
        raise DeployError(f"{prefix} already holds a different bundle for version {version}: "
                          "refusing to overwrite a model that may be serving; register a new version")
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / "bundle"
        shutil.copytree(model_dir, staged, ignore=shutil.ignore_patterns(bundle_lib.MANIFEST))
        storage.upload_dir(str(staged), prefix)
    # Last, so that a run killed mid-upload leaves no manifest and the next run uploads again.
    storage.write_bytes(manifest_uri, manifest)
    return prefix


# ---------------------------------------------------------------- objects and patches (pure)


def _serialize(obj: Any) -> Any:
    from kubernetes.client import ApiClient

    return ApiClient().sanitize_for_serialization(obj)  # camelCase keys, None fields dropped


def build_predictor(storage_uri: str, version: str, digest: str, settings: Settings) -> Obj:
    from kserve import V1beta1ModelFormat, V1beta1ModelSpec, V1beta1PredictorSpec
    from kubernetes.client import V1ResourceRequirements

    return _serialize(V1beta1PredictorSpec(
        # On the predictor, not the InferenceService: they change in the same revision as the storageUri, so every
        # revision (and a Standard-mode canary) says what it serves, and promoting does not start another revision.
        annotations={VERSION_ANNOTATION: str(version), DIGEST_ANNOTATION: digest},
        service_account_name=settings.kserve_service_account,  # holds the S3 secret the storage initializer uses
        model=V1beta1ModelSpec(
            name="kserve-container",  # the SDK's default "" would be sent as an empty container name
            model_format=V1beta1ModelFormat(name=MODEL_FORMAT, version=MODEL_FORMAT_VERSION),
            runtime=RUNTIME,
            storage_uri=storage_uri,
            resources=V1ResourceRequirements(**RESOURCES),
        ),
    ))


def build_isvc(name: str, namespace: str, predictor: Obj) -> Obj:
    from kserve import V1beta1InferenceService, V1beta1InferenceServiceSpec
    from kubernetes.client import V1ObjectMeta

    return _serialize(V1beta1InferenceService(
        api_version=f"{GROUP}/{API_VERSION}",
        kind="InferenceService",
        metadata=V1ObjectMeta(name=name, namespace=namespace, labels={"app.kubernetes.io/part-of": "mlwf"}),
        spec=V1beta1InferenceServiceSpec(predictor=predictor),
    ))


def storage_uri_of(predictor: Obj | None) -> str | None:
    return ((predictor or {}).get("model") or {}).get("storageUri")


def plan(current: Obj | None, storage_uri: str) -> str:
    """What this deploy has to do: "create", "unchanged" or "canary" (which also resumes an interrupted one)."""
    if current is None:
        return "create"
    spec = current.get("spec") or {}
    predictor = spec.get("predictor") or {}
    settled = predictor.get("canaryTrafficPercent") is None and not spec.get("canary")
    return "unchanged" if storage_uri_of(predictor) == storage_uri and settled else "canary"


def canary_patch(mode: str, predictor: Obj, percent: int) -> Obj:
    if mode == "knative":
        # Only what changes: a new revision gets `percent`, the last rolled-out one keeps the rest.
        return {"spec": {"predictor": {"canaryTrafficPercent": percent, "annotations": predictor["annotations"],
                                       "model": {"storageUri": storage_uri_of(predictor)}}}}
    # Standard mode ignores canaryTrafficPercent; it runs the entries of spec.canary beside the predictor.
    return {"spec": {"canary": [{"trafficPercent": percent, "predictor": predictor}]}}


def promote_patch(mode: str, current: Obj) -> Obj | None:
    """The patch that gives the canary all traffic, or None when the object says it is already promoted."""
    spec = current.get("spec") or {}
    if mode == "knative":
        if (spec.get("predictor") or {}).get("canaryTrafficPercent") is None:
            return None
        # An explicit null removes the field (JSON merge patch); the SDK's patch() drops None and would change nothing.
        return {"spec": {"predictor": {"canaryTrafficPercent": None}}}
    canaries = spec.get("canary") or []
    if not canaries:
        return None
    return {"spec": {"predictor": canaries[0]["predictor"], "canary": None}}


def rollback_patch(mode: str, previous: Obj | None) -> Obj:
    """Traffic back to what served before. `previous` is the old predictor, when this run saw it."""
    if mode == "standard":
        return {"spec": {"canary": None}}  # the primary predictor was never touched
    predictor: Obj = {"canaryTrafficPercent": 0}  # 0: all traffic to the last rolled-out revision
    if previous is not None:  # and the spec back to it, so the next deploy starts from what really serves
        predictor |= {"annotations": previous.get("annotations"), "model": {"storageUri": storage_uri_of(previous)}}
    return {"spec": {"predictor": predictor}}


# ---------------------------------------------------------------- readiness verdicts (pure)


def _condition(obj: Obj, kind: str) -> Obj:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind:
            return cond
    return {}


def _observed(obj: Obj) -> Verdict | None:
    """Waiting while the controller has not yet seen our latest spec (status would describe the old one)."""
    generation = (obj.get("metadata") or {}).get("generation") or 0
    observed = (obj.get("status") or {}).get("observedGeneration") or 0
    return ("waiting", f"observedGeneration {observed} < generation {generation}") if observed < generation else None


def rollout_verdict(obj: Obj) -> Verdict:
    if waiting := _observed(obj):
        return waiting
    ready = _condition(obj, "Ready")
    if ready.get("status") != "True":
        return "waiting", f"Ready={ready.get('status', 'absent')} {ready.get('reason', '')} {ready.get('message', '')}".strip()
    return "ready", ""


def _predictor_status(obj: Obj) -> Obj:
    return ((obj.get("status") or {}).get("components") or {}).get("predictor") or {}


def knative_canary_verdict(obj: Obj, percent: int) -> Verdict:
    if waiting := _observed(obj):
        return waiting
    comp = _predictor_status(obj)
    created, ready_rev = comp.get("latestCreatedRevision"), comp.get("latestReadyRevision")
    failure = ((obj.get("status") or {}).get("modelStatus") or {}).get("lastFailureInfo") or {}
    if created and created != ready_rev and failure.get("modelRevisionName") == created:
        return "failed", f"canary revision {created}: {failure.get('reason', '')} {failure.get('message', '')}".strip()
    # Ready=True alone proves nothing: Knative keeps the old revision serving while the new one fails.
    if (base := rollout_verdict(obj))[0] != "ready":
        return base
    if not created or created != ready_rev:
        return "waiting", f"canary revision {created} not ready (latest ready: {ready_rev})"
    traffic = comp.get("traffic") or []
    latest = [t for t in traffic if t.get("latestRevision") or t.get("tag") == "latest"]
    if not latest or latest[0].get("revisionName") != created or latest[0].get("percent") != percent:
        return "waiting", f"traffic does not yet send {percent}% to {created}: {traffic}"
    # Until Knative creates the new revision, "latest" still names the old one; the split must span two revisions.
    if not any(t.get("revisionName") not in (None, created) for t in traffic):
        return "waiting", f"no previous revision takes the remaining traffic: {traffic}"
    return "ready", ""


def standard_canary_verdict(obj: Obj, percent: int) -> Verdict:
    if waiting := _observed(obj):
        return waiting
    statuses = (obj.get("status") or {}).get("canaryStatuses") or []
    for entry in statuses:
        model = entry.get("modelStatus") or {}
        if model.get("transitionStatus") in ("BlockedByFailedLoad", "InvalidSpec"):
            info = model.get("lastFailureInfo") or {}
            return "failed", f"canary {entry.get('name')}: {model['transitionStatus']} {info.get('message', '')}".strip()
    if (base := rollout_verdict(obj))[0] != "ready":
        return base
    if _condition(obj, "CanaryPredictorReady").get("status") != "True":
        return "waiting", "CanaryPredictorReady is not True"
    if not statuses or not all(s.get("ready") for s in statuses) or statuses[0].get("trafficPercent") != percent:
        return "waiting", f"canary not ready with {percent}% of traffic: {statuses}"
    return "ready", ""


def promoted_verdict(mode: str, obj: Obj) -> Verdict:
    if (base := rollout_verdict(obj))[0] != "ready":
        return base
    status = obj.get("status") or {}
    if mode == "standard":
        return ("waiting", "canary still reported") if status.get("canaryStatuses") else ("ready", "")
    comp = _predictor_status(obj)
    latest = [t for t in comp.get("traffic") or [] if t.get("latestRevision")]
    if comp.get("latestCreatedRevision") != comp.get("latestReadyRevision") or not latest or latest[0].get("percent") != 100:
        return "waiting", f"latest revision does not take all traffic yet: {comp.get('traffic')}"
    return "ready", ""


def endpoint(obj: Obj, name: str, namespace: str) -> tuple[str, str]:
    status = obj.get("status") or {}
    # Both modes create a `<name>-predictor` Service; only used when the controller reports no URL.
    url = status.get("url") or (status.get("address") or {}).get("url") or f"http://{name}-predictor.{namespace}.svc.cluster.local"
    url = url.rstrip("/")
    return url, f"{url}/v1/models/{name}:predict"  # the runtime registers the model under the service name


# ---------------------------------------------------------------- the API client loop


def custom_objects_api(api_client: Any = None) -> Any:
    from kubernetes import client, config

    if api_client is None:
        try:
            config.load_incluster_config()
        except config.ConfigException as in_cluster:
            try:
                config.load_kube_config()
            except (config.ConfigException, OSError) as kubeconfig:
                raise DeployError("no Kubernetes credentials: in-cluster config failed "
                                  f"({in_cluster}) and kubeconfig failed ({kubeconfig})") from kubeconfig
        api_client = client.ApiClient()
    return client.CustomObjectsApi(api_client)


def _api_error(err: Any, what: str) -> DeployError:
    return DeployError(f"{what}: HTTP {err.status} {err.reason}: {str(err.body or '')[:300]}")


def _read(api: Any, name: str, namespace: str) -> Obj | None:
    from kubernetes.client.exceptions import ApiException

    try:
        return api.get_namespaced_custom_object(GROUP, API_VERSION, namespace, PLURAL, name, _request_timeout=REQUEST_TIMEOUT)
    except ApiException as err:
        if err.status == 404:
            return None
        raise _api_error(err, f"reading InferenceService {namespace}/{name}") from err


def _create(api: Any, namespace: str, body: Obj) -> tuple[Obj, bool]:
    """Create, or return what a concurrent deploy created first (409); (object, created by us)."""
    from kubernetes.client.exceptions import ApiException

    name = body["metadata"]["name"]
    for _ in range(MAX_CONFLICT_RETRIES):
        try:
            return api.create_namespaced_custom_object(GROUP, API_VERSION, namespace, PLURAL, body, _request_timeout=REQUEST_TIMEOUT), True
        except ApiException as err:
            if err.status != 409:
                raise _api_error(err, f"creating InferenceService {namespace}/{name}") from err
        if (existing := _read(api, name, namespace)) is not None:
            return existing, False
    raise DeployError(f"creating InferenceService {namespace}/{name}: still conflicting after {MAX_CONFLICT_RETRIES} tries")


def _patch(api: Any, name: str, namespace: str, current: Obj, make: Callable[[Obj], Obj | None]) -> Obj:
    """Merge-patch built from `current`; on 409 re-read and rebuild, a bounded number of times."""
    from kubernetes.client.exceptions import ApiException

    for _ in range(MAX_CONFLICT_RETRIES):
        body = make(current)
        if body is None:
            return current
        try:
            # CustomObjectsApi sends a dict as application/merge-patch+json, nulls included.
            return api.patch_namespaced_custom_object(GROUP, API_VERSION, namespace, PLURAL, name, body, _request_timeout=REQUEST_TIMEOUT)
        except ApiException as err:
            if err.status != 409:
                raise _api_error(err, f"patching InferenceService {namespace}/{name}") from err
        log.info("conflict patching %s/%s: re-reading and retrying", namespace, name)
        if (fresh := _read(api, name, namespace)) is None:
            raise DeployError(f"InferenceService {namespace}/{name} disappeared during the rollout")
        current = fresh
    raise DeployError(f"patching InferenceService {namespace}/{name}: still conflicting after {MAX_CONFLICT_RETRIES} tries")


def _wait(api: Any, name: str, namespace: str, verdict: Callable[[Obj], Verdict], timeout_s: float, poll_s: float) -> tuple[Obj | None, Verdict]:
    """Poll until the verdict is ready or failed, or the deadline passes (reported as failed)."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    deadline = time.monotonic() + timeout_s
    obj: Obj | None = None
    while True:
        try:
            obj = _read(api, name, namespace)
            result = verdict(obj) if obj is not None else ("failed", "the InferenceService was deleted")
        except HTTPError as err:  # connection trouble: worth waiting out
            result = ("waiting", f"API server unreachable: {err}")
        except DeployError as err:  # a 5xx is worth waiting out; a 4xx (say, Forbidden) will not go away
            transient = isinstance(err.__cause__, ApiException) and err.__cause__.status >= 500
            result = ("waiting" if transient else "failed", str(err))
        if result[0] != "waiting":
            return obj, result
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return obj, ("failed", f"not ready after {timeout_s:g}s: {result[1]}")
        time.sleep(min(poll_s, remaining))


def deploy_cluster(model_dir: str, model_name: str, version: str, settings: Settings, api_client: Any = None,
                   timeout_s: float = 600, poll_s: float = 2.0) -> dict[str, str]:
    """Serve the bundle in `model_dir` as `version` of `model_name`; returns url, predict_url, isvc and action.

    `timeout_s` bounds each wait (first rollout, canary, promotion). Raises DeployError naming the problem;
    a canary that fails or is not ready in time is rolled back first.
    """
    name, namespace, mode = service_name(model_name), settings.kserve_namespace, settings.kserve_mode
    if mode not in MODES:
        raise DeployError(f"MLWF_KSERVE_MODE must be one of {MODES}, got {mode!r}")
    if not 0 < settings.canary_percent < 100:
        raise DeployError(f"MLWF_CANARY_PERCENT must be between 1 and 99, got {settings.canary_percent}")
    store = model_store()
    api = custom_objects_api(api_client)  # before the upload: without credentials there is nothing to upload for
    bundle_lib.verify(model_dir)
    storage_uri = upload_bundle(model_dir, store, name, version)
    predictor = build_predictor(storage_uri, version, bundle_lib.bundle_digest(model_dir), settings)

    def result(obj: Obj, action: str) -> dict[str, str]:
        url, predict_url = endpoint(obj, name, namespace)
        log.info("InferenceService %s/%s v%s: %s, serving at %s", namespace, name, version, action, url)
        return {"url": url, "predict_url": predict_url, "isvc": name, "action": action, "storage_uri": storage_uri}

    current = _read(api, name, namespace)
    created = False
    if current is None:
        current, created = _create(api, namespace, build_isvc(name, namespace, predictor))
    if created or plan(current, storage_uri) == "unchanged":
        obj, (state, detail) = _wait(api, name, namespace, rollout_verdict, timeout_s, poll_s)
        if state != "ready" or obj is None:
            raise DeployError(f"InferenceService {namespace}/{name} v{version} is not ready: {detail}")
        return result(obj, "created" if created else "unchanged")

    # A run that finds its own canary already in the spec resumes it; it then cannot know the old storageUri.
    old = (current.get("spec") or {}).get("predictor")
    previous = old if storage_uri_of(old) != storage_uri else None
    percent = settings.canary_percent
    log.info("InferenceService %s/%s: canary v%s with %d%% of traffic (%s mode)", namespace, name, version, percent, mode)
    _patch(api, name, namespace, current, lambda _: canary_patch(mode, predictor, percent))
    check = knative_canary_verdict if mode == "knative" else standard_canary_verdict
    obj, (state, detail) = _wait(api, name, namespace, lambda o: check(o, percent), timeout_s, poll_s)
    if state != "ready" or obj is None:
        reason = f"canary v{version} of {namespace}/{name} failed: {detail}"
        if obj is None:
            raise DeployError(reason)
        try:
            _patch(api, name, namespace, obj, lambda _: rollback_patch(mode, previous))
        except DeployError as err:
            raise DeployError(f"{reason}; the rollback failed too: {err}") from err
        raise DeployError(f"{reason}; rolled back to the previous version")

    obj = _patch(api, name, namespace, obj, lambda cur: promote_patch(mode, cur))
    obj, (state, detail) = _wait(api, name, namespace, lambda o: promoted_verdict(mode, o), timeout_s, poll_s)
    if state != "ready" or obj is None:
        # No automatic rollback here: the old revision no longer takes traffic, and bringing it back would be
        # another untested rollout. The message says where things stand.
        raise DeployError(f"{namespace}/{name} v{version} was promoted but is not ready: {detail}")
    return result(obj, "canary-promoted")
