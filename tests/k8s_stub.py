"""An HTTP-level stub of the Kubernetes API server for InferenceServices, on 127.0.0.1.

It records every request (method, path, content type, JSON body), serves GET/POST/PATCH/PUT under
/apis/serving.kserve.io/v1beta1/namespaces/{ns}/inferenceservices[/{name}], and answers anything else with a
4xx that it also records in `rejections`, so a client that strays fails loudly. Every object it stores is
validated against the InferenceService CRD schema carried in manifests/crds/schemas, strictly (unknown fields
are rejected, like `kubectl --validate=strict`), so a misspelt field is a 422 rather than silently pruned.

Status plays back what KServe's controller does: a spec change bumps metadata.generation, and only after
`ready_after` GETs does status catch up (observedGeneration, Ready, revisions, traffic, canaryStatuses).
Switches: `canary_never_ready` (a new storageUri never becomes ready: Knative keeps Ready=True with all
traffic on the old revision), `canary_fails` (the same, plus a model-load failure in status), and
`conflict_once` ("POST", "PATCH" or "PUT": the first such request gets 409 Conflict and changes nothing).

    with KubeStub(mode="knative") as stub:
        api_client = kubernetes.client.ApiClient(kubernetes.client.Configuration(host=stub.url))
"""

from __future__ import annotations

import copy
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import urlsplit

from tests.contract.manifest_tools import crd_validator

PATH = re.compile(r"^/apis/serving\.kserve\.io/v1beta1/namespaces/([a-z0-9-]+)/inferenceservices(?:/([a-z0-9-]+))?$")
CONTENT_TYPES = {"POST": "application/json", "PUT": "application/json", "PATCH": "application/merge-patch+json"}


@dataclass
class Recorded:
    method: str
    path: str
    query: str
    content_type: str | None
    body: Any  # parsed JSON, or None
    raw: bytes
    status: int = 0  # what the stub answered


@dataclass
class _Controller:
    """What the simulated controller remembers about one InferenceService between reconciles."""

    gets_since_change: int = 0
    revisions: list[tuple[str, str]] = field(default_factory=list)  # (revision name, predictor template)
    latest_ready: str | None = None
    rolled_out: str | None = None
    previous_rolled_out: str | None = None


def isvc_validator() -> Any:
    """The strict InferenceService v1beta1 validator; raises (never skips) when its carried schema is missing."""
    return crd_validator("serving.kserve.io", "v1beta1", "InferenceService")


def validation_errors(obj: Any) -> list[str]:
    errors = sorted(isvc_validator().iter_errors(obj), key=lambda e: list(e.absolute_path))
    return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors]


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: null deletes, objects merge, everything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


class KubeStub:
    def __init__(
        self,
        mode: str = "knative",
        ready_after: int = 2,
        canary_never_ready: bool = False,
        canary_fails: bool = False,
        conflict_once: str | None = None,
    ) -> None:
        if mode not in ("knative", "standard"):
            raise ValueError(f"mode must be knative or standard, got {mode!r}")
        isvc_validator()  # fail at construction, loudly, when the schema is missing
        self.mode, self.ready_after = mode, ready_after
        self.canary_never_ready, self.canary_fails, self.conflict_once = canary_never_ready, canary_fails, conflict_once
        self.requests: list[Recorded] = []
        self.rejections: list[str] = []
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self._controllers: dict[tuple[str, str], _Controller] = {}
        self._lock = threading.Lock()
        self._resource_version = 0
        self._server: ThreadingHTTPServer | None = None

    # ------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the stub first"
        return f"http://127.0.0.1:{self._server.server_port}"

    def start(self) -> Self:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                stub._handle(self)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _serve

            def log_message(self, *args: Any) -> None:  # keep pytest output clean
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        # A short poll interval: shutdown() waits for the loop to notice, once per stub.
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------ what tests read

    def calls(self, *methods: str) -> list[Recorded]:
        return [r for r in self.requests if not methods or r.method in methods]

    def sequence(self) -> list[tuple[str, int]]:
        return [(r.method, r.status) for r in self.requests]

    def get(self, name: str, namespace: str) -> dict[str, Any]:
        return copy.deepcopy(self.objects[(namespace, name)])

    # ------------------------------------------------------------ HTTP

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        content_type = (handler.headers.get("Content-Type") or "").split(";")[0].strip() or None
        record = Recorded(handler.command, parts.path, parts.query, content_type, None, raw)
        with self._lock:
            self.requests.append(record)
            status, body = self._route(record)
            record.status = status
        data = json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def _reject(self, record: Recorded, code: int, reason: str, message: str) -> tuple[int, dict[str, Any]]:
        self.rejections.append(f"{record.method} {record.path}: {code} {message}")
        return code, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "message": message, "code": code}

    def _route(self, record: Recorded) -> tuple[int, dict[str, Any]]:
        match = PATH.match(record.path)
        if not match:
            return self._reject(record, 404, "NotFound", f"the stub serves no {record.path}")
        namespace, name = match.groups()
        if record.method not in ("GET", "POST", "PATCH", "PUT") or (record.method == "POST") == (name is not None):
            return self._reject(record, 405, "MethodNotAllowed", f"{record.method} not served on {record.path}")
        if record.method != "GET":
            expected = CONTENT_TYPES[record.method]
            if record.content_type != expected:
                return self._reject(
                    record, 415, "UnsupportedMediaType", f"{record.method} needs Content-Type {expected}, got {record.content_type}"
                )
            try:
                record.body = json.loads(record.raw)
            except ValueError as err:
                return self._reject(record, 400, "BadRequest", f"body is not JSON: {err}")
            if self.conflict_once == record.method:
                self.conflict_once = None
                return 409, {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "status": "Failure",
                    "reason": "Conflict",
                    "message": "the object has been modified; please apply your changes to the latest version",
                    "code": 409,
                }
        if record.method == "POST":
            name = (record.body.get("metadata") or {}).get("name") or ""
            if (record.body.get("metadata") or {}).get("namespace") not in (None, namespace):
                return self._reject(record, 400, "BadRequest", "metadata.namespace does not match the path")
        key = (namespace, name)
        current = self.objects.get(key)
        if record.method == "GET":
            if current is None:
                return 404, {
                    "kind": "Status",
                    "status": "Failure",
                    "reason": "NotFound",
                    "code": 404,
                    "message": f'inferenceservices.serving.kserve.io "{name}" not found',
                }
            self._tick(key)
            return 200, copy.deepcopy(self.objects[key])
        if record.method == "POST":
            if current is not None:
                return 409, {
                    "kind": "Status",
                    "status": "Failure",
                    "reason": "AlreadyExists",
                    "code": 409,
                    "message": f'inferenceservices.serving.kserve.io "{name}" already exists',
                }
            new = copy.deepcopy(record.body)
            new.pop("status", None)
            new["metadata"] |= {"namespace": namespace, "generation": 1, "uid": f"uid-{name}"}
            return self._store(record, key, new, None)
        if current is None:
            return self._reject(record, 404, "NotFound", f"{name} does not exist")
        if record.method == "PUT":
            sent = (record.body.get("metadata") or {}).get("resourceVersion")
            if sent != current["metadata"]["resourceVersion"]:
                return 409, {
                    "kind": "Status",
                    "status": "Failure",
                    "reason": "Conflict",
                    "code": 409,
                    "message": f"resourceVersion {sent} is stale",
                }
            new = {**copy.deepcopy(record.body), "status": copy.deepcopy(current.get("status", {}))}
        else:
            new = merge_patch(current, record.body)
        new["metadata"]["generation"] = current["metadata"]["generation"] + (new.get("spec") != current.get("spec"))
        return self._store(record, key, new, current)

    def _store(self, record: Recorded, key: tuple[str, str], new: dict[str, Any], old: dict[str, Any] | None) -> tuple[int, dict[str, Any]]:
        errors = validation_errors(new)
        if errors:
            return self._reject(record, 422, "Invalid", "InferenceService is invalid: " + "; ".join(errors[:5]))
        self._resource_version += 1
        new["metadata"]["resourceVersion"] = str(self._resource_version)
        new.setdefault("status", {})
        self.objects[key] = new
        controller = self._controllers.setdefault(key, _Controller())
        if old is None or new["metadata"]["generation"] != old["metadata"]["generation"]:
            controller.gets_since_change = 0
        return (201 if old is None else 200), copy.deepcopy(new)

    # ------------------------------------------------------------ the simulated controller

    def _tick(self, key: tuple[str, str]) -> None:
        obj, controller = self.objects[key], self._controllers[key]
        if obj["status"].get("observedGeneration", 0) >= obj["metadata"]["generation"]:
            return
        controller.gets_since_change += 1
        if controller.gets_since_change >= self.ready_after:
            self._reconcile(obj, controller)
            errors = validation_errors(obj)
            assert not errors, f"the stub's own status breaks the CRD schema: {errors}"

    def _broken(self, storage_uri: str | None, serving_uri: str | None) -> bool:
        """A storageUri other than the one already serving is the canary the switches break."""
        return (self.canary_never_ready or self.canary_fails) and serving_uri is not None and storage_uri != serving_uri

    def _reconcile(self, obj: dict[str, Any], controller: _Controller) -> None:
        name, namespace = obj["metadata"]["name"], obj["metadata"]["namespace"]
        spec, status = obj["spec"], obj["status"]
        status.update(
            observedGeneration=obj["metadata"]["generation"],
            url=f"http://{name}.{namespace}.example.com",
            address={"url": f"http://{name}-predictor.{namespace}.svc.cluster.local"},
        )
        conditions = [{"type": "PredictorReady", "status": "True"}, {"type": "Ready", "status": "True"}]
        predictor = spec["predictor"]
        if self.mode == "knative":
            template = json.dumps({k: v for k, v in predictor.items() if k != "canaryTrafficPercent"}, sort_keys=True)
            if not controller.revisions or controller.revisions[-1][1] != template:
                controller.revisions.append((f"{name}-predictor-{len(controller.revisions) + 1:05d}", template))
            created = controller.revisions[-1][0]
            templates = dict(controller.revisions)
            serving_uri = json.loads(templates[controller.rolled_out])["model"]["storageUri"] if controller.rolled_out else None
            broken = self._broken(predictor["model"].get("storageUri"), serving_uri)
            if not broken:
                controller.latest_ready = created
            percent = predictor.get("canaryTrafficPercent")
            if percent is not None and controller.rolled_out is not None:
                traffic = [
                    {"tag": "latest", "latestRevision": True, "revisionName": controller.latest_ready, "percent": percent},
                    {"tag": "prev", "latestRevision": False, "revisionName": controller.rolled_out, "percent": 100 - percent},
                ]
            else:
                if controller.rolled_out != controller.latest_ready:
                    controller.previous_rolled_out, controller.rolled_out = controller.rolled_out, controller.latest_ready
                traffic = [{"latestRevision": True, "revisionName": controller.latest_ready, "percent": 100}]
            components = {
                "latestCreatedRevision": created,
                "latestReadyRevision": controller.latest_ready,
                "latestRolledoutRevision": controller.rolled_out,
                "traffic": traffic,
                "url": f"http://{name}-predictor.{namespace}.example.com",
            }
            if controller.previous_rolled_out:
                components["previousRolledoutRevision"] = controller.previous_rolled_out
            status["components"] = {"predictor": components}
            if broken and self.canary_fails:
                status["modelStatus"] = {
                    "transitionStatus": "BlockedByFailedLoad",
                    "lastFailureInfo": {
                        "reason": "ModelLoadFailed",
                        "message": "bundle failed its sha256 check",
                        "modelRevisionName": created,
                    },
                }
            else:
                status.pop("modelStatus", None)
        else:
            status["components"] = {"predictor": {"url": f"http://{name}-predictor.{namespace}.example.com"}}
            canaries = spec.get("canary") or []
            serving_uri = predictor["model"].get("storageUri")
            statuses = []
            for index, canary in enumerate(canaries):
                broken = self._broken(canary["predictor"]["model"].get("storageUri"), serving_uri)
                model_status: dict[str, Any] = {"transitionStatus": "InProgress" if broken else "UpToDate"}
                if broken and self.canary_fails:
                    model_status = {
                        "transitionStatus": "BlockedByFailedLoad",
                        "lastFailureInfo": {"reason": "ModelLoadFailed", "message": "bundle failed its sha256 check"},
                    }
                statuses.append(
                    {
                        "name": f"{name}-predictor-canary-{index}",
                        "ready": not broken,
                        "trafficPercent": canary["trafficPercent"],
                        "modelStatus": model_status,
                    }
                )
            if statuses:
                status["canaryStatuses"] = statuses
                ready = "True" if all(s["ready"] for s in statuses) else "False"
                conditions.append({"type": "CanaryPredictorReady", "status": ready})
            else:
                status.pop("canaryStatuses", None)
        status["conditions"] = conditions


class PrometheusStub:
    """Prometheus's instant-query API (GET /api/v1/query) on 127.0.0.1, answering only the exact queries it is given.

    `answers` maps the full PromQL text to a number (a one-sample vector) or None (an empty vector). Any other
    query, a missing `time` parameter or another path is answered 400 and kept in `rejections`, so a query the
    code builds differently from what a test spells out fails the test. Every query is kept in `queries`.
    """

    def __init__(self, answers: dict[str, float | None] | None = None) -> None:
        self.answers: dict[str, float | None] = dict(answers or {})
        self.queries: list[str] = []
        self.rejections: list[str] = []
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the stub first"
        return f"http://127.0.0.1:{self._server.server_port}"

    def start(self) -> Self:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, body = stub._answer(self.path)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def _answer(self, raw_path: str) -> tuple[int, dict[str, Any]]:
        from urllib.parse import parse_qs

        parts = urlsplit(raw_path)
        params = parse_qs(parts.query)
        query = (params.get("query") or [""])[0]
        self.queries.append(query)
        if parts.path != "/api/v1/query" or "time" not in params:
            self.rejections.append(f"{raw_path}: not an instant query with a time")
            return 400, {"status": "error", "errorType": "bad_data", "error": "expected /api/v1/query with query and time"}
        if query not in self.answers:
            self.rejections.append(f"unexpected query: {query}")
            return 400, {"status": "error", "errorType": "bad_data", "error": f"the stub does not know {query!r}"}
        value = self.answers[query]
        at = float(params["time"][0])
        result = [] if value is None else [{"metric": {}, "value": [at, repr(float(value))]}]
        return 200, {"status": "success", "data": {"resultType": "vector", "result": result}}
