"""The lean ASGI front of the model server: guards every request, and serves this model's inference itself.

KServe's FastAPI stack (pydantic models, dependency injection, DataPlane, timing middleware) costs about
0.5 ms a request and answers 500 to several client mistakes (shared/FACTS.md). This front sits before it:

- every POST: a body over `max_body_bytes` -> 413 (checked on Content-Length and while reading, and after
  a gzip/deflate Content-Encoding is undone), a declared type other than `application/json` -> 415, malformed
  JSON -> 400 naming the problem. A body with no Content-Type is taken if it parses as JSON (Triton's
  tritonclient.http sends none); the binary tensor extension is known by its Inference-Header-Content-Length
  header whatever the Content-Type says (KServe's client says application/octet-stream);
- `POST /v1/models/{name}:predict` and `POST /v2/models/{name}[/versions/{v}]/infer` for this model, and its
  V2 metadata, are answered here (and the explain verb, `:explain` and `/explain`, parsed the same way, with
  serving/explain.py's bodies; it is not counted in the inference metrics, which the canary analysis reads): parse (serving/requests.py, serving/v2.py, serving/binary.py),
  `BundleModel.infer`, orjson. Client mistakes are 4xx with {"error": message}; not ready -> 503; an
  unexpected failure -> 500 and the server goes on;
- `/docs`, `/redoc` and `/openapi.json` are not served;
- everything else (health, readiness, model lists, other models, `/metrics`) goes to KServe's app.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from kserve.errors import ModelNotReady
from kserve.metrics import PREDICT_HIST_TIME

from components.features.online import FeatureStoreUnavailable
from serving import binary
from serving import explain as explain_bodies
from serving.model import BundleModel, v1_body
from serving.observability import multiprocess_dir, multiprocess_exposition
from serving.requests import Batch, RequestError, Schema, parse_v1
from serving.v2 import parse_v2, response_body

log = logging.getLogger("mlwf.serving.access")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

HIDDEN = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
INLINE_BODY_BYTES = 256 * 1024  # bodies up to this size (about 1,500 V2 rows) are parsed on the event loop
_JSON = (b"content-type", b"application/json")
_OCTET = (b"content-type", b"application/octet-stream")
_DECOMPRESS = {b"gzip": 16 + zlib.MAX_WBITS, b"x-gzip": 16 + zlib.MAX_WBITS, b"deflate": zlib.MAX_WBITS}


class HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ClientGone(Exception):
    """The client disconnected before sending its whole body: nobody to answer."""


class FrontApp:
    def __init__(self, model: BundleModel, app: ASGIApp, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, log_requests: bool = False) -> None:
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
        self._v1_explain = f"/v1/models/{name}:explain"
        self._v2_explain = f"/v2/models/{name}/explain"
        self._verbs = frozenset({self._v1, self._v2, self._v1_explain, self._v2_explain})
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
                version = path[len(self._versioned) : -len("/infer")]
                await self._infer(scope, receive, send, "v2", version)
                return
            if path == self._v1_explain or path == self._v2_explain:
                await self._infer(scope, receive, send, "v1" if path == self._v1_explain else "v2", explain=True)
                return
            if path.startswith(self._versioned) and path.endswith("/explain"):
                version = path[len(self._versioned) : -len("/explain")]
                await self._infer(scope, receive, send, "v2", version, explain=True)
                return
            await self._guarded(scope, receive, send)
            return
        if path in self._verbs:
            await _respond(send, 405, {"error": f"{method} is not allowed on {path}: use POST"}, [(b"allow", b"POST")])
            return
        if path in HIDDEN:
            await _respond(send, 404, {"error": f"{path} is not served"})
            return
        if method == "GET" and (path == self._v2_meta or (path.startswith(self._versioned) and "/" not in path[len(self._versioned) :])):
            await self._metadata(send, path[len(self._versioned) :] if path.startswith(self._versioned) else None)
            return
        if method in ("PUT", "PATCH"):
            await self._guarded(scope, receive, send)
            return
        if path == "/metrics" and method == "GET" and multiprocess_dir() is not None:
            await self._metrics(scope, send)
            return
        await self._forward(scope, receive, send)

    async def _metrics(self, scope: Scope, send: Send) -> None:
        """With several worker processes: every process's samples, not only this one's (KServe's route)."""
        accept = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"accept"), None)
        body, content_type = await asyncio.get_running_loop().run_in_executor(None, multiprocess_exposition, accept)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    # ------------------------------------------------------------ inference

    async def _infer(
        self, scope: Scope, receive: Receive, send: Send, protocol: str, version: str | None = None, explain: bool = False
    ) -> None:
        started = time.perf_counter()
        model = self.model
        request_id = None
        content_type = content_length = binary_length = encoding = None
        for key, value in scope["headers"]:
            if key == b"content-type":
                content_type = value
            elif key == b"content-length":
                content_length = value
            elif key == b"x-request-id":
                request_id = value.decode("latin-1")
            elif key == binary.HEADER:
                binary_length = value
            elif key == b"content-encoding":
                encoding = value
        batch: Batch | None = None
        header_length: int | None = None
        try:
            if not model.ready or model.stats is None:
                raise HTTPError(503, f"model {model.name!r} is not ready")
            if version is not None and version != model.version:
                raise HTTPError(404, f"model {model.name!r} has no version {version!r}; this server serves version {model.version!r}")
            if explain:
                model.check_explainable()
            _check_content_type(content_type, binary_length)
            if binary_length is not None and protocol != "v2":
                raise HTTPError(400, "the binary tensor extension (Inference-Header-Content-Length) is for V2 requests")
            body = await self._read_body(receive, content_length)
            if encoding is not None:
                body = decompress(body, encoding, self.max_body_bytes)
            args = (body, protocol, model.schema, binary_length, content_type is None)
            if len(body) <= INLINE_BODY_BYTES:
                batch = _parse(*args)
            else:  # a big batch: parse off the event loop so small requests and probes keep flowing
                batch = await asyncio.get_running_loop().run_in_executor(None, _parse, *args)
            if explain:
                explanation = await model.explain_batch(batch)
                rid = request_id or batch.request_id or model.new_request_id()
                if protocol == "v2":
                    payload = explain_bodies.v2_body(model.name, model.version, rid, explanation)
                else:
                    payload = explain_bodies.v1_body(explanation, model.threshold, model.version)
            else:
                scoring_started = time.perf_counter()
                scored = await model.infer(batch, request_id)
                self._predict_hist.observe(time.perf_counter() - scoring_started)
                rid = scored.request_id
                if protocol == "v2":
                    payload, header_length = response_body(model.name, model.version, rid, batch, scored.probabilities, scored.labels)
                else:
                    payload = v1_body(scored, model.version)
        except ClientGone:
            return
        except HTTPError as err:
            await self._fail(send, protocol, started, err.status, err.message, scope, request_id, not explain)
            return
        except RequestError as err:
            await self._fail(send, protocol, started, err.status, str(err), scope, request_id, not explain)
            return
        except (ModelNotReady, FeatureStoreUnavailable) as err:
            await self._fail(send, protocol, started, 503, str(err), scope, request_id, not explain)
            return
        except Exception as err:  # a bug or a broken program: answer 500, log it, keep serving
            log.exception("inference failed", extra={"path": scope["path"], "request_id": request_id})
            await self._fail(
                send,
                protocol,
                started,
                500,
                f"internal error while {'explaining' if explain else 'scoring'}: {type(err).__name__}",
                scope,
                request_id,
                not explain,
            )
            return
        headers = [_JSON if header_length is None else _OCTET, (b"content-length", str(len(payload)).encode())]
        if header_length is not None:
            headers.append((binary.HEADER, str(header_length).encode()))
        if len(rid) <= 200 and rid.isascii() and rid.isprintable():  # echoed only when it cannot break the header
            headers.append((b"x-request-id", rid.encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": payload})
        elapsed = time.perf_counter() - started
        if not explain:
            model.stats.success(protocol, elapsed, batch.rows)
        if self.log_requests:
            log.info(
                "request",
                extra={
                    "path": scope["path"],
                    "status": 200,
                    "rows": batch.rows,
                    "request_id": rid,
                    "latency_ms": round(elapsed * 1000, 3),
                },
            )

    async def _fail(
        self,
        send: Send,
        protocol: str,
        started: float,
        status: int,
        message: str,
        scope: Scope,
        request_id: str | None,
        count: bool = True,
    ) -> None:
        await _respond(send, status, {"error": message})
        elapsed = time.perf_counter() - started
        if count and self.model.stats is not None:
            self.model.stats.failure(protocol, elapsed, status)
        log.log(
            logging.ERROR if status >= 500 else logging.WARNING,
            "request refused",
            extra={
                "path": scope["path"],
                "status": status,
                "error": message,
                "request_id": request_id,
                "latency_ms": round(elapsed * 1000, 3),
            },
        )

    async def _metadata(self, send: Send, version: str | None) -> None:
        model = self.model
        if not model.ready:
            await _respond(send, 503, {"error": f"model {model.name!r} is not ready"})
        elif version is not None and version != model.version:
            await _respond(
                send, 404, {"error": f"model {model.name!r} has no version {version!r}; this server serves version {model.version!r}"}
            )
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
        content_type = content_length = binary_length = None
        for key, value in scope["headers"]:
            if key == b"content-type":
                content_type = value
            elif key == b"content-length":
                content_length = value
            elif key == binary.HEADER:
                binary_length = value
        try:
            body = await self._read_body(receive, content_length)
            if body:
                _check_content_type(content_type, binary_length)
                if binary_length is None:  # KServe decodes the binary extension of other models itself
                    _parse_json(body, content_type is None)
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


def _check_content_type(content_type: bytes | None, binary_length: bytes | None) -> None:
    """JSON, or no declared type (the body must then parse as JSON); binary requests are known by their header."""
    if content_type is None or binary_length is not None:
        return
    media = content_type.split(b";", 1)[0].strip().lower()
    if media != b"application/json":
        raise HTTPError(415, f"unsupported content-type {content_type.decode('latin-1')[:60]!r}: send application/json")


def parse_json(body: bytes) -> Any:
    if not body:
        raise HTTPError(400, "empty request body: send a JSON document")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as err:
        near = body[max(err.pos - 1, 0) : err.pos + 9]
        if b"NaN" in near or b"Infinity" in near:
            raise HTTPError(
                400, "NaN and Infinity are not valid JSON and feature values must be finite; send null for a missing value"
            ) from None
        if "infinity" in str(err):
            raise HTTPError(400, f"a number in the body is too large for a float64: {err}") from None
        raise HTTPError(400, f"malformed JSON: {err}") from None


def _parse_json(body: bytes, undeclared: bool) -> Any:
    """A body sent without a Content-Type that is not JSON either is of a type this server does not take: 415."""
    try:
        return parse_json(body)
    except HTTPError as err:
        if undeclared and body.lstrip()[:1] not in (b"{", b"["):  # JSON with a mistake keeps its 400
            raise HTTPError(415, f"missing content-type, and the body is not JSON ({err.message}): send application/json") from None
        raise


def _parse(body: bytes, protocol: str, schema: Schema, binary_length: bytes | None, undeclared: bool) -> Batch:
    if binary_length is not None:
        head, tail = binary.split(body, binary_length)
        document = parse_json(head)
        binary.attach_inputs(document, tail)
        return parse_v2(document, schema)
    document = _parse_json(body, undeclared)
    return parse_v2(document, schema) if protocol == "v2" else parse_v1(document, schema)


def decompress(body: bytes, encoding: bytes, limit: int) -> bytes:
    """Undo a gzip or deflate Content-Encoding (tritonclient can compress requests); the limit holds after it."""
    name = encoding.strip().lower()
    if name in (b"", b"identity"):
        return body
    wbits = _DECOMPRESS.get(name)
    if wbits is None:
        raise HTTPError(415, f"unsupported content-encoding {encoding.decode('latin-1')[:30]!r}: send gzip, deflate or none")
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(body, limit + 1)  # bounded: a small bomb cannot allocate past the limit
    except zlib.error as err:
        raise HTTPError(400, f"the body is not valid {name.decode()} data: {err}") from None
    if len(out) > limit:
        raise HTTPError(413, f"request body is over the limit of {limit} bytes once decompressed")
    if not inflater.eof:
        raise HTTPError(400, f"the {name.decode()} body is cut off")
    return out


async def _respond(send: Send, status: int, content: Any, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = orjson.dumps(content)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [_JSON, (b"content-length", str(len(body)).encode()), *(headers or [])],
        }
    )
    await send({"type": "http.response.body", "body": body})
