"""Cluster deploy: a KServe InferenceService, created once, then updated through a canary.

One call is one rollout, and a rerun converges to the same state:
  1. the bundle goes to <MLWF_MODEL_STORE>/<service>/v<version>/ (skipped when an earlier run put it there);
  2. GET the InferenceService: absent -> create it; predictor already on this storageUri -> unchanged;
     otherwise start a canary (Knative mode: canaryTrafficPercent; Standard mode: spec.canary[]);
  3. move the canary through the traffic steps (MLWF_CANARY_STEPS, default 10 -> 25 -> 50 -> 100): after each,
     wait until the controller really serves that split, then analyze canary vs stable from Prometheus and the
     request logs (components/deployment/rollout.py, components/deployment/canary_analysis.py); promote after the last step, or roll back
     and raise. A rerun resumes an interrupted rollout at the percent the spec holds.

The pipeline's ServiceAccount may only get, list, watch, create and patch InferenceServices: this module sends
GET, POST and merge-PATCH, never PUT or DELETE.

Pure functions build the object, the patches and the readiness verdicts (components/deployment/kserve_resources.py);
this module is the thin loop that talks to the API server (`deploy_cluster`, ClusterCanary). Every wait has a
deadline and every API call a request timeout.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.core import bundle as bundle_lib
from components.core import storage
from components.core.paths import log_root, service_name
from components.core.settings import Settings
from components.deployment import rollout
from components.deployment.kserve_resources import (
    API_VERSION,
    GROUP,
    MODES,
    PLURAL,
    Obj,
    Verdict,
    build_isvc,
    build_predictor,
    canary_patch,
    canary_state,
    endpoint,
    knative_canary_verdict,
    plan,
    promote_patch,
    promoted_verdict,
    rollback_patch,
    rollout_verdict,
    standard_canary_verdict,
)
from components.deployment.rollout import DeployError

log = logging.getLogger(__name__)

MAX_CONFLICT_RETRIES = 5
REQUEST_TIMEOUT = (5, 30)  # (connect, read) seconds: a stalled API server must not stall the step


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
        raise DeployError(
            f"{prefix} already holds a different bundle for version {version}: "
            "refusing to overwrite a model that may be serving; register a new version"
        )
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / "bundle"
        shutil.copytree(model_dir, staged, ignore=shutil.ignore_patterns(bundle_lib.MANIFEST))
        storage.upload_dir(str(staged), prefix)
    # Last, so that a run killed mid-upload leaves no manifest and the next run uploads again.
    storage.write_bytes(manifest_uri, manifest)
    return prefix


# ---------------------------------------------------------------- the API client loop


def custom_objects_api(api_client: Any = None) -> Any:
    from components.core.kube import custom_objects_api as api

    return api(api_client, DeployError, "")


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


def _wait(
    api: Any, name: str, namespace: str, verdict: Callable[[Obj], Verdict], timeout_s: float, poll_s: float
) -> tuple[Obj | None, Verdict]:
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


def deploy_cluster(
    model_dir: str,
    model_name: str,
    version: str,
    settings: Settings,
    api_client: Any = None,
    timeout_s: float = 600,
    poll_s: float = 2.0,
    analyzer: Any = None,
    sleep: Callable[[float], None] = time.sleep,
    expected_psi: float = 0.0,
) -> dict[str, str]:
    """Serve the bundle in `model_dir` as `version` of `model_name`; returns url, predict_url, isvc and action.

    `timeout_s` bounds each wait (first rollout, each canary step, promotion); `analyzer` observes a version over
    a window (default: Prometheus at MLWF_PROMETHEUS_URL plus the request logs); `sleep` waits out each window.
    Raises DeployError naming the problem; a canary that fails, is not ready in time or fails its analyses is
    rolled back first, so the caller never moves the `champion` alias for it.
    """
    name, namespace, mode = service_name(model_name), settings.kserve_namespace, settings.kserve_mode
    if mode not in MODES:
        raise DeployError(f"MLWF_KSERVE_MODE must be one of {MODES}, got {mode!r}")
    try:
        policy = rollout.policy_from_settings(settings, expected_psi)
    except ValueError as err:
        raise DeployError(str(err)) from err
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

    if analyzer is None and not settings.prometheus_url:
        raise DeployError("MLWF_PROMETHEUS_URL is not set: the canary analysis reads the model servers' metrics from Prometheus")
    stable, start_percent = canary_state(mode, current, storage_uri)
    what = f"canary v{version} of {namespace}/{name}"
    log.info("%s: steps %s from %s (%s mode), stable %s", what, policy.steps, start_percent or "the start", mode, stable["storageUri"])
    backend = ClusterCanary(
        api=api,
        name=name,
        namespace=namespace,
        mode=mode,
        predictor=predictor,
        stable=stable,
        stable_version=version_label(stable["storageUri"]),
        canary_version=version_label(model_dir),
        analyzer=analyzer or default_analyzer(settings, name, namespace),
        timeout_s=timeout_s,
        poll_s=poll_s,
        sleep=sleep,
        obj=current,
    )
    report = rollout.run_rollout(backend, policy, what, start_percent=start_percent)
    out = result(backend.obj, "canary-promoted")
    out["rollout"] = report.summary()
    return out


# ---------------------------------------------------------------- the progressive canary on a cluster


def version_label(bundle: str) -> str:
    """The `version` label the runtime will put on this bundle's series: from a local dir or an s3:// prefix."""
    signature = json.loads(storage.read_bytes(storage.join(bundle, bundle_lib.SIGNATURE)))
    manifest = storage.read_bytes(storage.join(bundle, bundle_lib.MANIFEST))
    return bundle_lib.served_version(signature, hashlib.sha256(manifest).hexdigest())


def default_analyzer(settings: Settings, name: str, namespace: str) -> Any:
    from components.deployment.canary_analysis import ClusterAnalyzer, Prometheus

    return ClusterAnalyzer(Prometheus(settings.prometheus_url), namespace, name, log_root(settings))


@dataclass
class ClusterCanary:
    """rollout.Backend for one InferenceService: percents through patches, observations from the analyzer."""

    api: Any
    name: str
    namespace: str
    mode: str
    predictor: Obj  # the canary's
    stable: Obj  # stable_record() of what served before
    stable_version: str
    canary_version: str
    analyzer: Any  # .observe(version, window_s) -> rollout.Observation
    timeout_s: float
    poll_s: float
    sleep: Callable[[float], None] = time.sleep
    obj: Obj = field(default_factory=dict)

    def _current(self) -> Obj:
        if not self.obj:
            self.obj = _read(self.api, self.name, self.namespace) or {}
        return self.obj

    def set_traffic(self, percent: int) -> None:
        self.obj = _patch(
            self.api, self.name, self.namespace, self._current(), lambda _: canary_patch(self.mode, self.predictor, percent, self.stable)
        )
        check = knative_canary_verdict if self.mode == "knative" else standard_canary_verdict
        obj, (state, detail) = _wait(self.api, self.name, self.namespace, lambda o: check(o, percent), self.timeout_s, self.poll_s)
        if obj is not None:
            self.obj = obj
        if state != "ready":
            raise DeployError(detail)

    def observe(self, percent: int, seconds: float) -> tuple[rollout.Observation, rollout.Observation]:
        self.sleep(seconds)  # the window: traffic flows at this split while we wait
        return self.analyzer.observe(self.stable_version, seconds), self.analyzer.observe(self.canary_version, seconds)

    def checkpoint(self, percent: int, failures: int) -> None:
        pass  # the percent is in the spec; a rerun starts counting failed analyses afresh

    def promote(self) -> None:
        self.obj = _patch(self.api, self.name, self.namespace, self._current(), lambda cur: promote_patch(self.mode, cur))
        obj, (state, detail) = _wait(
            self.api, self.name, self.namespace, lambda o: promoted_verdict(self.mode, o), self.timeout_s, self.poll_s
        )
        if state != "ready" or obj is None:
            # No automatic rollback here: the old revision no longer takes traffic, and bringing it back would be
            # another untested rollout. The message says where things stand.
            raise DeployError(f"{self.namespace}/{self.name} v{self.canary_version} was promoted but is not ready: {detail}")
        self.obj = obj

    def rollback(self) -> None:
        previous = {"annotations": self.stable["annotations"], "model": {"storageUri": self.stable["storageUri"]}}
        self.obj = _patch(self.api, self.name, self.namespace, self._current(), lambda _: rollback_patch(self.mode, previous))
