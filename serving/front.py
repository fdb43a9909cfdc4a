"""The lean ASGI front of the model server: guards every request, and serves this model's inference itself.

KServe's FastAPI stack (pydantic models, dependency injection, DataPlane, timing middleware) costs about
0.5 ms a request and answers 500 to several client mistakes (shared/FACTS.md). This front sits before it:

- every POST: a body over `max_body_bytes` -> 413 (checked on Content-Length and while reading), a body
  that is not `application/json` -> 415, malformed JSON -> 400 naming the problem;
- `POST /v1/models/{name}:predict` and `POST /v2/models/{name}[/versions/{v}]/infer` for this model, and its
  V2 metadata, are answered here: parse (serving/requests.py), `BundleModel.infer`, orjson. Client mistakes
  are 4xx with {"error": message}; not ready -> 503; an unexpected failure -> 500 and the server goes on;
- `/docs`, `/redoc` and `/openapi.json` are not served;
- everything else (health, readiness, model lists, other models, `/metrics`) goes to KServe's app.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable

import orjson
from kserve.errors import ModelNotReady
from kserve.metrics import PREDICT_HIST_TIME

from serving.model import BundleModel, Scored, v1_response
from serving.online import FeatureStoreUnavailable
from serving.requests import Batch, RequestError, Schema, parse_v1, parse_v2

log = logging.getLogger("mlwf.serving.access")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

HIDDEN = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
INLINE_BODY_BYTES = 256 * 1024  # bodies up to this size (about 1,500 V2 rows) are parsed on the event loop
_JSON = (b"content-type", b"application/json")


class HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ClientGone(Exception):
    """The client disconnected before sending its whole body: nobody to answer."""


class FrontApp:
    def __init__(self, model: BundleModel, app: ASGIApp, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
                 log_requests: bool = False) -> None:
        if max_body_bytes <= 0:
            raise ValueError(f"max_body_bytes must be positive, got {max_body_bytes}")
        self.model = model
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.log_requests = log_requests
        name = model.name
        self._v1 = f"/v1/models/{name}:predict"
        self._v2 = f"/v2/models/{name}/infer"
        self._v2_meta = f"/v2/models/{name}"
        self._versioned = f"/v2/models/{name}/versions/"
        self._predict_hist = PREDICT_HIST_TIME.labels(model_name=name)

    # ------------------------------------------------------------ routing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        method: str = scope["method"]
        if method == "POST":
            if path == self._v2:
                await self._infer(scope, receive, send, "v2")
                return
            if path == self._v1:
                await self._infer(scope, receive, send, "v1")
                return
            if path.startswith(self._versioned) and path.endswith("/infer"):
                version = path[len(self._versioned):-len("/infer")]
                await self._infer(scope, receive, send, "v2", version)
                return
            await self._guarded(scope, receive, send)
            return
        if path == self._v2 or path == self._v1:
            await _respond(send, 405, {"error": f"{method} is not allowed on {path}: use POST"}, [(b"allow", b"POST")])
            return
        if path in HIDDEN:
            await _respond(send, 404, {"error": f"{path} is not served"})
            return
        if method == "GET" and (path == self._v2_meta or (path.startswith(self._versioned) and "/" not in path[len(self._versioned):])):
            await self._metadata(send, path[len(self._versioned):] if path.startswith(self._versioned) else None)
            return
        if method in ("PUT", "PATCH"):
            await self._guarded(scope, receive, send)
            return
        await self._forward(scope, receive, send)

    # ------------------------------------------------------------ inference

    async def _infer(self, scope: Scope, receive: Receive, send: Send, protocol: str, version: str | None = None) -> None:
        started = time.perf_counter()
        model = self.model
        request_id = None
        content_type = content_length = None
        for key, value in scope["headers"]:
            if key == b"content-type":
                content_type = value
            elif key == b"content-length":
                content_length = value
            elif key == b"x-request-id":
                request_id = value.decode("latin-1")
        batch: Batch | None = None
        try:
            if not model.ready or model.stats is None:
                raise HTTPError(503, f"model {model.name!r} is not ready")
            if version is not None and version != model.version:
                raise HTTPError(404, f"model {model.name!r} has no version {version!r}; this server serves version {model.version!r}")
            _check_content_type(content_type)
            body = await self._read_body(receive, content_length)
            if len(body) <= INLINE_BODY_BYTES:
                batch = _parse(body, protocol, model.schema)
            else:  # a big batch: parse off the event loop so small requests and probes keep flowing
                batch = await asyncio.get_running_loop().run_in_executor(None, _parse, body, protocol, model.schema)
            scoring_started = time.perf_counter()
            scored = await model.infer(batch, request_id)
            self._predict_hist.observe(time.perf_counter() - scoring_started)
            payload = _v2_body(model, batch, scored) if protocol == "v2" else orjson.dumps(v1_response(scored, model.version))
        except ClientGone:
            return
        except HTTPError as err:
            await self._fail(send, protocol, started, err.status, err.message, scope, request_id)
            return
        except RequestError as err:
            await self._fail(send, protocol, started, err.status, str(err), scope, request_id)
            return
        except (ModelNotReady, FeatureStoreUnavailable) as err:
            await self._fail(send, protocol, started, 503, str(err), scope, request_id)
            return
        except Exception as err:  # a bug or a broken program: answer 500, log it, keep serving
            log.exception("inference failed", extra={"path": scope["path"], "request_id": request_id})
            await self._fail(send, protocol, started, 500, f"internal error while scoring: {type(err).__name__}", scope, request_id)
            return
        headers = [_JSON, (b"content-length", str(len(payload)).encode())]
        rid = scored.request_id
        if len(rid) <= 200 and rid.isascii() and rid.isprintable():  # echoed only when it cannot break the header
            headers.append((b"x-request-id", rid.encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": payload})
        elapsed = time.perf_counter() - started
        model.stats.success(protocol, elapsed, batch.rows)
        if self.log_requests:
            log.info("request", extra={"path": scope["path"], "status": 200, "rows": batch.rows,
                                       "request_id": scored.request_id, "latency_ms": round(elapsed * 1000, 3)})

    async def _fail(self, send: Send, protocol: str, started: float, status: int, message: str, scope: Scope,
                    request_id: str | None) -> None:
        await _respond(send, status, {"error": message})
        elapsed = time.perf_counter() - started
        if self.model.stats is not None:
            self.model.stats.failure(protocol, elapsed, status)
        log.log(logging.ERROR if status >= 500 else logging.WARNING, "request refused",
                extra={"path": scope["path"], "status": status, "error": message, "request_id": request_id,
                       "latency_ms": round(elapsed * 1000, 3)})

    async def _metadata(self, send: Send, version: str | None) -> None:
        model = self.model
        if not model.ready:
            await _respond(send, 503, {"error": f"model {model.name!r} is not ready"})
        elif version is not None and version != model.version:
            await _respond(send, 404, {"error": f"model {model.name!r} has no version {version!r}; this server serves version {model.version!r}"})
        else:
            await _respond(send, 200, model.metadata())

    async def _read_body(self, receive: Receive, content_length: bytes | None) -> bytes:
        limit = self.max_body_bytes
        if content_length is not None:
            try:
                declared = int(content_length)
            except ValueError:
                raise HTTPError(400, f"invalid content-length {content_length[:20]!r}") from None
            if declared > limit:
                raise HTTPError(413, f"request body of {declared} bytes is over the limit of {limit} bytes")
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone()
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > limit:
                raise HTTPError(413, f"request body is over the limit of {limit} bytes")
            if not message.get("more_body", False):
                if not chunks:
                    return chunk
                chunks.append(chunk)
                return b"".join(chunks)
            chunks.append(chunk)

    # ------------------------------------------------------------ everything else

    async def _guarded(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Size, content type and JSON checks for KServe's other POST routes, then the body replayed to it."""
        content_type = content_length = None
        for key, value in scope["headers"]:
            if key == b"content-type":
                content_type = value
            elif key == b"content-length":
                content_length = value
        try:
            body = await self._read_body(receive, content_length)
            if body:
                _check_content_type(content_type)
                parse_json(body)
        except ClientGone:
            return
        except (HTTPError, RequestError) as err:
            status = err.status
            message = err.message if isinstance(err, HTTPError) else str(err)
            await _respond(send, status, {"error": message})
            log.warning("request refused", extra={"path": scope["path"], "status": status, "error": message})
            return
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self._forward(scope, replay, send)

    async def _forward(self, scope: Scope, receive: Receive, send: Send) -> None:
        """KServe's app; if it raises after all, answer 500 once (unless it already answered) and go on."""
        started = False

        async def tracking_send(message: dict[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as err:
            log.exception("unhandled error", extra={"path": scope["path"]})
            if not started:
                await _respond(send, 500, {"error": f"internal error: {type(err).__name__}"})


# ---------------------------------------------------------------- helpers


def _check_content_type(content_type: bytes | None) -> None:
    if content_type is None:
        raise HTTPError(415, "missing content-type: send the body as application/json")
    media = content_type.split(b";", 1)[0].strip().lower()
    if media != b"application/json":
        raise HTTPError(415, f"unsupported content-type {content_type.decode('latin-1')[:60]!r}: send application/json")


def parse_json(body: bytes) -> Any:
    if not body:
        raise HTTPError(400, "empty request body: send a JSON document")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as err:
        near = body[max(err.pos - 1, 0): err.pos + 9]
        if b"NaN" in near or b"Infinity" in near:
            raise HTTPError(400, "NaN and Infinity are not valid JSON and feature values must be finite; send null for a missing value") from None
        if "infinity" in str(err):
            raise HTTPError(400, f"a number in the body is too large for a float64: {err}") from None
        raise HTTPError(400, f"malformed JSON: {err}") from None


def _parse(body: bytes, protocol: str, schema: Schema) -> Batch:
    document = parse_json(body)
    return parse_v2(document, schema) if protocol == "v2" else parse_v1(document, schema)


def _v2_body(model: BundleModel, batch: Batch, scored: Scored) -> bytes:
    n = batch.rows
    outputs = []
    for name in batch.outputs:
        if name == "probability":
            outputs.append({"name": "probability", "datatype": "FP64", "shape": [n], "data": scored.probabilities})
        else:
            outputs.append({"name": "label", "datatype": "INT64", "shape": [n], "data": scored.labels})
    return orjson.dumps({"id": batch.request_id or scored.request_id, "model_name": model.name,
                         "model_version": model.version, "outputs": outputs}, option=orjson.OPT_SERIALIZE_NUMPY)


async def _respond(send: Send, status: int, content: Any, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = orjson.dumps(content)
    await send({"type": "http.response.start", "status": status,
                "headers": [_JSON, (b"content-length", str(len(body)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})
