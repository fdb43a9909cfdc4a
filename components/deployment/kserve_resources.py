"""The InferenceService as data: the objects, the patches and the readiness verdicts of a KServe deploy (pure).

Nothing here talks to the API server: the objects are plain dicts (the JSON the API speaks), so each
rule can be tested on its own. components/deployment/kserve.py is the thin loop that sends these objects
and patches and polls with these verdicts.
"""

from __future__ import annotations

import json
from typing import Any

from components.core.settings import Settings
from components.deployment.rollout import DeployError

GROUP, API_VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
MODEL_FORMAT, MODEL_FORMAT_VERSION, RUNTIME = "mlwf-bundle", "1", "mlwf-bundle-runtime"
VERSION_ANNOTATION = "mlwf.io/model-version"
DIGEST_ANNOTATION = "mlwf.io/bundle-sha256"
# On the InferenceService while a Knative canary runs: the predictor that served before it (JSON). The spec's
# predictor then describes the canary, so without this a rerun could neither analyze nor restore the stable one.
STABLE_ANNOTATION = "mlwf.io/stable-predictor"
MODES = ("knative", "standard")
# A small tabular program: modest requests leave room on the node; the limits stop a runaway server.
RESOURCES = {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}}

Obj = dict[str, Any]
Verdict = tuple[str, str]  # ("ready" | "waiting" | "failed", what is still missing or why it failed)


# ---------------------------------------------------------------- objects and patches (pure)


def _serialize(obj: Any) -> Any:
    from kubernetes.client import ApiClient

    return ApiClient().sanitize_for_serialization(obj)  # camelCase keys, None fields dropped


def build_predictor(storage_uri: str, version: str, digest: str, settings: Settings) -> Obj:
    from kserve import V1beta1ModelFormat, V1beta1ModelSpec, V1beta1PredictorSpec
    from kubernetes.client import V1ResourceRequirements

    return _serialize(
        V1beta1PredictorSpec(
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
        )
    )


def build_isvc(name: str, namespace: str, predictor: Obj) -> Obj:
    from kserve import V1beta1InferenceService, V1beta1InferenceServiceSpec
    from kubernetes.client import V1ObjectMeta

    return _serialize(
        V1beta1InferenceService(
            api_version=f"{GROUP}/{API_VERSION}",
            kind="InferenceService",
            metadata=V1ObjectMeta(name=name, namespace=namespace, labels={"app.kubernetes.io/part-of": "mlwf"}),
            spec=V1beta1InferenceServiceSpec(predictor=predictor),
        )
    )


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


def stable_record(predictor: Obj) -> Obj:
    """What identifies a serving predictor: its storageUri and mlwf annotations (what a rollback restores)."""
    return {"storageUri": storage_uri_of(predictor), "annotations": dict(predictor.get("annotations") or {})}


def canary_patch(mode: str, predictor: Obj, percent: int, stable: Obj | None = None) -> Obj:
    if mode == "knative":
        # Only what changes: a new revision gets `percent`, the last rolled-out one keeps the rest.
        patch: Obj = {
            "spec": {
                "predictor": {
                    "canaryTrafficPercent": percent,
                    "annotations": predictor["annotations"],
                    "model": {"storageUri": storage_uri_of(predictor)},
                }
            }
        }
        if stable is not None:  # metadata only: it does not change the revision template
            patch["metadata"] = {"annotations": {STABLE_ANNOTATION: json.dumps(stable, sort_keys=True)}}
        return patch
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


# ---------------------------------------------------------------- where a rollout stands (pure)


def canary_state(mode: str, current: Obj, storage_uri: str) -> tuple[Obj, int | None]:
    """(the stable predictor's record, the percent an interrupted rollout of this storageUri reached, or None)."""
    spec = current.get("spec") or {}
    predictor = spec.get("predictor") or {}
    if mode == "standard":  # spec.predictor is stable until promotion; the canary is its own entry
        canaries = spec.get("canary") or []
        mine = canaries and storage_uri_of(canaries[0].get("predictor")) == storage_uri
        return stable_record(predictor), (int(canaries[0].get("trafficPercent") or 0) or None) if mine else None
    percent = predictor.get("canaryTrafficPercent")
    if percent is None:  # settled: the predictor is what serves
        return stable_record(predictor), None
    note = ((current.get("metadata") or {}).get("annotations") or {}).get(STABLE_ANNOTATION)
    if not note:
        raise DeployError(
            f"the InferenceService has canaryTrafficPercent {percent} but no {STABLE_ANNOTATION} annotation: "
            "it was not started by this pipeline; finish or roll back that canary first"
        )
    stable = json.loads(note)
    mine = storage_uri_of(predictor) == storage_uri
    return stable, (int(percent) or None) if mine else None
