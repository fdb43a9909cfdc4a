"""Model server speed on loopback: this project's runtime beside stock KServe and a bare Starlette endpoint.

One bundle (trained here on generated data), four servers, each its own process (tree) on 127.0.0.1:
  (a) this project's server (`python -m serving`, defaults: traced program, request logging on, metrics);
  (a2) the same with `--workers 2` (KServe's multiprocess mode: two REST worker processes on one port);
  (b) the anchor: KServe's stock ModelServer (REST only, 1 worker) with a minimal kserve.Model calling the
      bundle's `predict_proba` (only its bind address is moved to loopback); it honours the binary tensor
      extension as KServe does (binary inputs decoded by KServe, binary outputs when asked);
  (c) a bare Starlette + orjson endpoint doing the same work as (b), on uvicorn: the framework floor.
The same single-row V2 JSON request is sent for a fixed time, by `wrk` when it is installed (C, one thread: it
leaves the server most of a 2-core machine) else by a small asyncio load generator (raw HTTP/1.1 keep-alive
sockets; it needs about as much CPU as the server, so its figures are lower). Throughput is taken at 8
connections (saturated); latency at 2 connections, below saturation: at saturation p99 is mostly queueing
(connections / throughput), whatever the server does. Rounds alternate between the servers; medians over rounds.
MLWF_BENCH_LOADGEN=python forces the Python generator.
Then 1,000-row batches are sent one at a time, in rounds alternating between (a) and (b): V2 JSON, V1 JSON,
and V2 in the binary tensor extension (raw inputs after the JSON header, binary outputs asked for).
Throughput of (a2) beside (a) shows what a second worker buys on this machine (wrk's own thread takes a core).
Run: `python -m benchmarks.run --quick --only serving`.

`python -m benchmarks.bench_serving stock|bare MODEL_DIR PORT` runs anchor (b) or (c) by itself.
"""

from __future__ import annotations

import asyncio
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness import Figure

MODEL = "bench"
CONNECTIONS = 8  # throughput: enough connections to saturate one server process
LIGHT_CONNECTIONS = 2  # latency: below saturation, so p99 is the server's work, not its queue
HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- the bundle and the requests


def build_bundle(directory: str, rows: int = 3000) -> list[dict[str, Any]]:
    """Train a small real bundle on generated transactions; returns a few rows of raw feature values."""
    import pandas as pd

    from components.core.spec import load_spec
    from components.data.datagen import GenConfig, generate
    from components.training.train import TrainParams, train_model
    from components.training.train import build_bundle as seal

    spec = load_spec("transactions")
    df = generate(GenConfig(rows=rows, seed=11))
    numeric = [f.name for f in spec.numeric]
    categorical = [c.name for c in spec.categorical]
    frame = pd.DataFrame(
        {
            "transaction_id": df["transaction_id"],
            "event_timestamp": pd.to_datetime(df["event_time"], utc=True),
            **{n: df[n].astype(float) for n in numeric},
            **{c: df[c].astype(str) for c in categorical},
            "label": df["is_fraud"].astype("int8"),
        }
    )
    program, vocab, result = train_model(frame, numeric, categorical, TrainParams(epochs=3, seed=1))
    lineage = {"dataset": spec.name, "feature_service": f"{spec.name}_v1", "model_name": MODEL, "inputs_fingerprint": "benchmark0000"}
    seal(directory, program, vocab, result, frame, numeric, categorical, lineage, "benchmark bundle\n")
    return frame[numeric + categorical].head(1000).to_dict("records")


def v2_body(rows: list[dict[str, Any]], numeric: list[str], categorical: list[str]) -> bytes:
    import orjson

    inputs = [{"name": n, "shape": [len(rows)], "datatype": "FP64", "data": [float(r[n]) for r in rows]} for n in numeric]
    inputs += [{"name": c, "shape": [len(rows)], "datatype": "BYTES", "data": [r[c] for r in rows]} for c in categorical]
    return orjson.dumps({"inputs": inputs})


def binary_body(rows: list[dict[str, Any]], numeric: list[str], categorical: list[str]) -> tuple[bytes, int]:
    """A V2 request in the binary tensor extension (as KServe's and Triton's clients send it), asking for
    binary outputs; returns the body and its JSON header's length."""
    import orjson

    specs, raw = [], []
    for name in numeric:
        data = np.asarray([float(r[name]) for r in rows], dtype="<f8").tobytes()
        specs.append({"name": name, "shape": [len(rows)], "datatype": "FP64", "parameters": {"binary_data_size": len(data)}})
        raw.append(data)
    for name in categorical:
        data = b"".join(len(v).to_bytes(4, "little") + v for v in (str(r[name]).encode() for r in rows))
        specs.append({"name": name, "shape": [len(rows)], "datatype": "BYTES", "parameters": {"binary_data_size": len(data)}})
        raw.append(data)
    head = orjson.dumps({"inputs": specs, "parameters": {"binary_data_output": True}})
    return head + b"".join(raw), len(head)


def http_request(path: str, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    fields = headers or {"Content-Type": "application/json"}
    head = f"POST {path} HTTP/1.1\r\nHost: {HOST}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items())
    return (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body


# ---------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class Server:
    def __init__(self, name: str, cmd: list[str], port: int, ready_path: str, log_path: Path, env: dict[str, str]) -> None:
        self.name, self.port, self.ready_path = name, port, ready_path
        self._log = open(log_path, "wb")
        self.process = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)

    def wait_ready(self, timeout: float = 120.0) -> None:
        import requests

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} server exited with code {self.process.returncode}; see {self._log.name}")
            try:
                if requests.get(f"http://{HOST}:{self.port}{self.ready_path}", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} server not ready after {timeout:.0f}s; see {self._log.name}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._log.close()


# ---------------------------------------------------------------- load generator


async def _one_connection(
    port: int, request: bytes, start: float, deadline: float, latencies: list[float], statuses: dict[int, int]
) -> int:
    reader, writer = await asyncio.open_connection(HOST, port)
    done = 0
    try:
        while True:
            t0 = time.perf_counter()
            if t0 >= deadline:
                return done
            writer.write(request)
            head = await read_response(reader)
            t1 = time.perf_counter()
            status = int(head[9:12])
            statuses[status] = statuses.get(status, 0) + 1
            if t0 >= start:  # requests sent during the warm-up are not measured
                latencies.append(t1 - t0)
                done += 1
    finally:
        writer.close()


async def _load(port: int, request: bytes, seconds: float, connections: int, warmup: float) -> dict[str, float]:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    now = time.perf_counter()
    start, deadline = now + warmup, now + warmup + seconds
    done = await asyncio.gather(*[_one_connection(port, request, start, deadline, latencies, statuses) for _ in range(connections)])
    elapsed = time.perf_counter() - start
    bad = {s: c for s, c in statuses.items() if s != 200}
    if bad:
        raise RuntimeError(f"server on port {port} answered non-200 statuses {bad}")
    arr = np.asarray(latencies) * 1000
    return {"rps": sum(done) / elapsed, "p50_ms": float(np.percentile(arr, 50)), "p99_ms": float(np.percentile(arr, 99))}


_WRK_SCRIPT = """
local f = io.open(os.getenv("MLWF_BENCH_BODY"), "rb")
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
function done(summary, latency, requests)
  io.write(string.format("MLWF %d %d %d %d %d %d %d\\n", summary.requests, summary.duration,
    summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max))
end
"""


def wrk_path() -> str | None:
    """wrk (C, one thread) when installed: a load generator that needs far less CPU than the server it measures."""
    import shutil

    return None if os.environ.get("MLWF_BENCH_LOADGEN") == "python" else shutil.which("wrk")


def load_wrk(wrk: str, port: int, path: str, body: bytes, seconds: float, connections: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as tmp:
        Path(tmp, "body.json").write_bytes(body)
        Path(tmp, "post.lua").write_text(_WRK_SCRIPT)
        env = {**os.environ, "MLWF_BENCH_BODY": str(Path(tmp, "body.json"))}
        for warm in (True, False):  # a short unmeasured run first, as the Python generator's warm-up
            out = subprocess.run(
                [
                    wrk,
                    "-t1",
                    f"-c{connections}",
                    f"-d{1 if warm else seconds:.0f}s",
                    "-s",
                    str(Path(tmp, "post.lua")),
                    f"http://{HOST}:{port}{path}",
                ],
                capture_output=True,
                text=True,
                env=env,
                timeout=seconds + 30,
            )
        line = next((text for text in out.stdout.splitlines() if text.startswith("MLWF ")), None)
        if out.returncode != 0 or line is None:
            raise RuntimeError(f"wrk failed (rc {out.returncode}): {out.stdout[-500:]} {out.stderr[-500:]}")
        requests, duration_us, errors, p50, p99, p999, top = (int(v) for v in line.split()[1:])
        if errors:
            raise RuntimeError(f"server on port {port}: {errors} failed requests or non-2xx answers under wrk")
        return {
            "rps": requests / (duration_us / 1e6),
            "p50_ms": p50 / 1000,
            "p99_ms": p99 / 1000,
            "p999_ms": p999 / 1000,
            "max_ms": top / 1000,
        }


def load(port: int, request: bytes, seconds: float, connections: int = CONNECTIONS, warmup: float = 0.5) -> dict[str, float]:
    try:
        import uvloop

        return uvloop.run(_load(port, request, seconds, connections, warmup))
    except ImportError:
        return asyncio.run(_load(port, request, seconds, connections, warmup))


# ---------------------------------------------------------------- the benchmark


def run(quick: bool) -> list[Figure]:
    import orjson

    from components.core.spec import load_spec

    spec = load_spec("transactions")
    numeric = [f.name for f in spec.numeric]
    categorical = [c.name for c in spec.categorical]
    seconds, rounds, batches = (2.0, 2, 10) if quick else (5.0, 3, 40)
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        bundle_dir = str(Path(tmp, "bundle"))
        rows = build_bundle(bundle_dir)
        single = v2_body(rows[:1], numeric, categorical)
        binary, header_length = binary_body(rows[:1000], numeric, categorical)
        env = {**os.environ, "MLWF_STATE_DIR": str(Path(tmp, "state")), "PYTHONUNBUFFERED": "1"}
        py = sys.executable
        ports = {k: free_port() for k in ("project", "workers", "stock", "bare")}
        project = [py, "-m", "serving", "--model_name", MODEL, "--model_dir", bundle_dir, "--bind_host", HOST]
        ready = f"/v2/models/{MODEL}/ready"
        servers = {
            "project": Server(
                "project", [*project, "--http_port", str(ports["project"])], ports["project"], ready, Path(tmp, "project.log"), env
            ),
            "workers": Server(
                "workers",
                [*project, "--http_port", str(ports["workers"]), "--workers", "2"],
                ports["workers"],
                ready,
                Path(tmp, "workers.log"),
                env,
            ),
            "stock": Server(
                "stock",
                [py, "-m", "benchmarks.bench_serving", "stock", bundle_dir, str(ports["stock"])],
                ports["stock"],
                ready,
                Path(tmp, "stock.log"),
                env,
            ),
            "bare": Server(
                "bare",
                [py, "-m", "benchmarks.bench_serving", "bare", bundle_dir, str(ports["bare"])],
                ports["bare"],
                "/ready",
                Path(tmp, "bare.log"),
                env,
            ),
        }
        path = f"/v2/models/{MODEL}/infer"
        batch_requests = {
            "v2": http_request(path, v2_body(rows[:1000], numeric, categorical)),
            "v1": http_request(f"/v1/models/{MODEL}:predict", orjson.dumps({"instances": rows[:1000]})),
            # What KServe's InferenceRESTClient sends in binary mode.
            "binary": http_request(
                path, binary, {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(header_length)}
            ),
        }
        try:
            for server in servers.values():
                server.wait_ready()
            wait_workers(Path(tmp, "workers.log"), 2)
            single_req = http_request(path, single)
            wrk = wrk_path()

            def measure(server: Server, connections: int, duration: float = seconds) -> dict[str, float]:
                if wrk:
                    return load_wrk(wrk, server.port, path, single, duration, connections)
                return load(server.port, single_req, duration, connections)

            light_seconds = float(math.ceil(seconds / 2))
            results: dict[str, list[dict[str, float]]] = {k: [] for k in servers}
            light: dict[str, list[dict[str, float]]] = {k: [] for k in servers}
            batch_ms: dict[str, dict[str, list[float]]] = {k: {"project": [], "stock": []} for k in batch_requests}
            for _ in range(rounds):  # alternate, so drift in machine load hits every server alike
                for name, server in servers.items():
                    results[name].append(measure(server, CONNECTIONS))
                    if name != "workers":  # two shorter latency runs a round: more chances of a quiet one
                        light[name] += [measure(server, LIGHT_CONNECTIONS, light_seconds) for _ in range(2)]
                for kind, request in batch_requests.items():
                    for name in ("project", "stock"):
                        batch_ms[kind][name].append(load_sequential(servers[name].port, request, batches))
        finally:
            for server in servers.values():
                server.stop()
    med = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in results.items()}
    med_light = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in light.items() if rs}
    # Other processes on a shared machine only ever add latency: the quietest run is the server's own tail.
    quiet = {name: min(rs, key=lambda r: r["p99_ms"]) for name, rs in light.items() if rs}
    batch = {kind: {name: statistics.median(v) for name, v in by.items()} for kind, by in batch_ms.items()}
    a, b, c, w = med["project"], med["stock"], med["bare"], med["workers"]
    la, lb, lc = quiet["project"], quiet["stock"], quiet["bare"]
    gen = "wrk (1 thread)" if wrk else "a Python asyncio load generator (wrk not installed)"
    common = (
        f"{seconds:.0f}s x {rounds} rounds, medians; V2 JSON, one row, loopback, load from {gen}; "
        "project server with its defaults (request log of every row, metrics)"
    )
    note = f"{CONNECTIONS} connections (saturated), " + common
    note_light = (
        f"{LIGHT_CONNECTIONS} connections (below saturation), p99 of the quietest of {2 * rounds} runs of "
        f"{light_seconds:.0f}s per server (median of runs: project {med_light['project']['p99_ms']:.2f} ms, stock "
        f"{med_light['stock']['p99_ms']:.2f} ms, bare {med_light['bare']['p99_ms']:.2f} ms); V2 JSON, one row, loopback, "
        f"load from {gen}; project server with its defaults (request log of every row, metrics)"
    )
    batch_note = (
        f"median over {rounds} rounds (alternating servers) of the median of {batches} sequential requests "
        "on one connection; every row request-logged by the project server"
    )
    cores = os.cpu_count() or 1

    def batch_figure(kind: str, label: str, extra: str = "") -> Figure:
        p, s = batch[kind]["project"], batch[kind]["stock"]
        return Figure(
            "serving",
            f"1,000-row {label} batch latency (ms)",
            p,
            s,
            "stock KServe ModelServer",
            False,
            "<= 10 ms and below stock",
            p <= 10.0 and p < s,
            extra + batch_note,
        )

    return [
        Figure(
            "serving",
            "single-row V2 throughput (req/s)",
            a["rps"],
            b["rps"],
            "stock KServe ModelServer",
            True,
            ">= 4x stock KServe",
            a["rps"] >= 4 * b["rps"],
            note,
        ),
        Figure(
            "serving",
            f"single-row V2 p99 latency at {LIGHT_CONNECTIONS} connections (ms)",
            la["p99_ms"],
            lb["p99_ms"],
            "stock KServe ModelServer",
            False,
            "<= 1.5 ms",
            la["p99_ms"] <= 1.5,
            f"bare Starlette p99 {lc['p99_ms']:.2f} ms; project {la['rps']:,.0f} req/s, p50 {la['p50_ms']:.2f} ms; " + note_light,
        ),
        Figure(
            "serving",
            f"single-row V2 p99 latency at {CONNECTIONS} connections (ms)",
            a["p99_ms"],
            b["p99_ms"],
            "stock KServe ModelServer",
            False,
            "informational: queueing at saturation",
            None,
            f"bare Starlette p99 {c['p99_ms']:.2f} ms (at saturation p99 ~ connections / throughput); " + note,
        ),
        Figure(
            "serving",
            "single-row V2 p50 latency (ms)",
            a["p50_ms"],
            b["p50_ms"],
            "stock KServe ModelServer",
            False,
            "lower than stock",
            a["p50_ms"] < b["p50_ms"],
            note,
        ),
        Figure(
            "serving",
            "single-row V2 throughput vs bare Starlette (req/s)",
            a["rps"],
            c["rps"],
            "bare Starlette + orjson, same bundle call",
            True,
            "informational: the framework floor",
            None,
            f"bare p50 {c['p50_ms']:.2f} ms, p99 {c['p99_ms']:.2f} ms; " + note,
        ),
        Figure(
            "serving",
            "single-row V2 throughput, --workers 2 (req/s)",
            w["rps"],
            a["rps"],
            "this server, 1 worker",
            True,
            "informational: scaling with workers",
            None,
            f"{cores} cores shared by both workers, the load generator and the parent; p50 {w['p50_ms']:.2f} ms, "
            f"p99 {w['p99_ms']:.2f} ms; /metrics sums both workers; " + note,
        ),
        batch_figure("v2", "V2 JSON"),
        batch_figure("v1", "V1 JSON"),
        batch_figure(
            "binary",
            "V2 binary-tensor",
            "binary tensor extension both ways (FP64 and BYTES inputs, FP64/INT64 outputs), stock KServe's own binary path as the anchor; ",
        ),
    ]


def wait_workers(log_path: Path, count: int, timeout: float = 120.0) -> None:
    """A --workers server answers once one worker is up; measure only when all of them are."""
    deadline = time.monotonic() + timeout
    while log_path.read_text(errors="replace").count("Application startup complete") < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{count} workers not started after {timeout:.0f}s; see {log_path}")
        time.sleep(0.2)


async def read_response(reader: asyncio.StreamReader) -> bytes:
    """One HTTP/1.1 response read whole (Content-Length or chunked, as stock KServe sends binary answers); its head."""
    head = await reader.readuntil(b"\r\n\r\n")
    lower = head.lower()
    if b"\r\ncontent-length:" in lower:  # at a line start: Inference-Header-Content-Length is another header
        at = lower.index(b"\r\ncontent-length:") + 17
        await reader.readexactly(int(lower[at : lower.index(b"\r\n", at)]))
        return head
    if b"transfer-encoding: chunked" not in lower:
        raise RuntimeError(f"response with neither Content-Length nor chunked encoding: {head[:200]!r}")
    while True:
        size = int((await reader.readuntil(b"\r\n")).strip(), 16)
        await reader.readexactly(size + 2)  # the chunk and its CRLF (the last, empty chunk: just the CRLF)
        if size == 0:
            return head


def load_sequential(port: int, request: bytes, count: int) -> float:
    """Median latency (ms) of `count` requests sent one after another on one connection."""

    async def go() -> float:
        latencies: list[float] = []
        statuses: dict[int, int] = {}
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            for i in range(count + 2):
                t0 = time.perf_counter()
                writer.write(request)
                head = await read_response(reader)
                lower = head.lower()
                statuses[int(head[9:12])] = statuses.get(int(head[9:12]), 0) + 1
                if i >= 2:  # two warm-up requests
                    latencies.append((time.perf_counter() - t0) * 1000)
        finally:
            writer.close()
        if set(statuses) != {200}:
            raise RuntimeError(f"server on port {port} answered {statuses} to 1,000-row batches")
        if b"inference-header-content-length" in request.lower() and b"inference-header-content-length" not in lower:
            raise RuntimeError(f"server on port {port} did not answer a binary request with binary outputs")
        return statistics.median(latencies)

    return asyncio.run(go())


# ---------------------------------------------------------------- anchors (run as their own processes)


def _bundle_columns(bundle: Any, inputs: list[dict[str, Any]]) -> dict[str, list[Any]]:
    columns = {t["name"]: t["data"] for t in inputs}
    missing = [n for n in bundle.feature_names if n not in columns]
    if missing:
        raise ValueError(f"missing inputs {missing}")
    return columns


def serve_stock(model_dir: str, port: int) -> None:
    """KServe's ModelServer as shipped, REST only; its RESTServer is moved to 127.0.0.1, nothing else changes."""
    import kserve
    import kserve.model_server as ms
    from kserve.protocol.infer_type import InferOutput, InferResponse
    from kserve.protocol.rest.server import RESTServer

    from components.core import bundle as bundle_lib

    class LoopbackRESTServer(RESTServer):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.config.host = HOST

    class StockBundleModel(kserve.Model):
        def load(self) -> bool:
            self.bundle = bundle_lib.load(model_dir)
            self.ready = True
            return True

        async def predict(self, payload: Any, headers: Any = None, response_headers: Any = None) -> Any:
            if isinstance(payload, dict):  # V1: {"instances": [{feature: value}]}
                rows = payload["instances"]
                probs = self.bundle.predict_proba({n: [r[n] for r in rows] for n in self.bundle.feature_names})
                return {"predictions": [{"probability": float(p), "label": int(p >= self.bundle.threshold)} for p in probs]}
            columns = {t.name: t.data for t in payload.inputs}  # binary inputs: decoded by KServe into data
            probs = self.bundle.predict_proba(columns)
            labels = (probs >= self.bundle.threshold).astype(int)
            return InferResponse(
                response_id=payload.id or "0",
                model_name=self.name,
                infer_outputs=[
                    InferOutput(name="probability", shape=[len(probs)], datatype="FP64", data=probs.tolist()),
                    InferOutput(name="label", shape=[len(labels)], datatype="INT64", data=labels.tolist()),
                ],
                use_binary_outputs=payload.use_binary_outputs,
            )

    import torch

    torch.set_num_threads(1)  # the same as the project's server, so the model call costs the same
    ms.RESTServer = LoopbackRESTServer  # type: ignore[misc]
    model = StockBundleModel(MODEL)
    model.load()
    ms.ModelServer(http_port=port, enable_grpc=False).start([model])


def serve_bare(model_dir: str, port: int) -> None:
    """Starlette + orjson on uvicorn, one route doing the anchor's work: the least a Python server can do."""
    import orjson
    import torch
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from components.core import bundle as bundle_lib

    torch.set_num_threads(1)
    bundle = bundle_lib.load(model_dir)

    async def infer(request: Request) -> Response:
        body = orjson.loads(await request.body())
        probs = bundle.predict_proba(_bundle_columns(bundle, body["inputs"]))
        labels = (probs >= bundle.threshold).astype(np.int64)
        out = {
            "id": body.get("id", "0"),
            "model_name": MODEL,
            "outputs": [
                {"name": "probability", "datatype": "FP64", "shape": [len(probs)], "data": probs},
                {"name": "label", "datatype": "INT64", "shape": [len(labels)], "data": labels},
            ],
        }
        return Response(orjson.dumps(out, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")

    async def ready(request: Request) -> Response:
        return Response(b"{}", media_type="application/json")

    app = Starlette(routes=[Route(f"/v2/models/{MODEL}/infer", infer, methods=["POST"]), Route("/ready", ready)])
    uvicorn.run(app, host=HOST, port=port, log_level="warning", access_log=False)


if __name__ == "__main__":
    kind, directory, port_arg = sys.argv[1:4]
    {"stock": serve_stock, "bare": serve_bare}[kind](directory, int(port_arg))
