"""The model server for real: `python -m serving` on 127.0.0.1 with a bundle trained here on generated data
and a local Feast store built here, answering well-formed and malformed V1/V2 REST and gRPC requests.

Every client mistake must come back as a 4xx that names the problem, and the server must keep serving;
metrics must count it, and sampled request logs must reach disk while the server runs and at shutdown.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import requests

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
MODEL = "clf"
MAX_BODY = 200_000


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Served:
    url: str
    grpc_port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    log_root: Path
    bundle_dir: Path
    state: Path
    offline: pd.DataFrame  # feature rows by transaction_id, as training saw them
    bundle: Any
    features: list[str]

    def post(self, path: str, body: Any = None, raw: bytes | None = None, headers: dict[str, str] | None = None) -> requests.Response:
        data = raw if raw is not None else json.dumps(body).encode()
        hdrs = {"content-type": "application/json"} if headers is None else headers
        return requests.post(self.url + path, data=data, headers=hdrs, timeout=30)


def _start(bundle_dir: Path, state: Path, log_root: Path, log_path: Path, *extra: str) -> tuple[subprocess.Popen[bytes], str, int]:
    port, grpc_port = _free_port(), _free_port()
    cmd = [sys.executable, "-m", "serving", "--model_name", MODEL, "--model_dir", str(bundle_dir), "--http_port", str(port),
           "--bind_host", "127.0.0.1", "--grpc_port", str(grpc_port), "--max_request_bytes", str(MAX_BODY),
           "--request_log_root", str(log_root), *extra]
    env = {**os.environ, "MLWF_STATE_DIR": str(state), "MLWF_PROFILE": "local"}
    with open(log_path, "ab") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    return process, f"http://127.0.0.1:{port}", grpc_port


def _wait_ready(process: subprocess.Popen[bytes], url: str, log_path: Path) -> None:
    from components.deployment.local import wait_ready

    wait_ready(url, MODEL, process, log_path, timeout=120)


def _stop(process: subprocess.Popen[bytes]) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
            raise
    return int(process.returncode)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from components.core import bundle as bundle_lib
    from components.data.datagen import GenConfig, generate
    from components.features.store import build_features
    from components.core.settings import get_settings
    from components.core.spec import load_spec
    from components.training.train import TrainParams, build_bundle, train_model

    tmp = tmp_path_factory.mktemp("serving")
    state = tmp / "state"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLWF_STATE_DIR", str(state))
        mp.setenv("MLWF_PROFILE", "local")
        for var in ("MLWF_FEAST_REGISTRY", "MLWF_FEAST_ONLINE", "MLWF_FEAST_OFFLINE_ROOT"):
            mp.delenv(var, raising=False)
        spec = load_spec("transactions")
        numeric = [f.name for f in spec.numeric]
        categorical = [c.name for c in spec.categorical]
        raw = generate(GenConfig(rows=600, seed=5))
        valid = pd.DataFrame({
            "transaction_id": raw["transaction_id"].astype(str),
            "event_timestamp": pd.to_datetime(raw["event_time"], utc=True),
            **{n: raw[n].astype("float64") for n in numeric},
            **{c: raw[c].astype(str) for c in categorical},
            "label": raw["is_fraud"].astype("int8"),
        })
        outcome = build_features(spec, valid, get_settings())
        program, vocab, result = train_model(outcome.train, numeric, categorical, TrainParams(epochs=2, seed=3))
        bundle_dir = tmp / "bundle"
        lineage = {"dataset": spec.name, "feature_service": outcome.service, "model_name": MODEL,
                   "inputs_fingerprint": "itest0123456789"}
        build_bundle(bundle_dir, program, vocab, result, outcome.train, numeric, categorical, lineage, "test bundle\n")
    log_root, log_path = tmp / "request_logs", tmp / "server.log"
    process, url, grpc_port = _start(bundle_dir, state, log_root, log_path, "--request_log_flush_s", "0.3",
                                     "--entity_lookup", "eager")
    try:
        _wait_ready(process, url, log_path)
        offline = pd.concat([outcome.train, outcome.test]).set_index("transaction_id")
        yield Served(url, grpc_port, process, log_path, log_root, bundle_dir, state, offline,
                     bundle_lib.load(bundle_dir), numeric + categorical)
    finally:
        _stop(process)


def v1_row(s: Served, key: str) -> dict[str, Any]:
    row = s.offline.loc[key, s.features].to_dict()
    return {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items()}


def v2_inputs(s: Served, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    numeric = set(s.bundle.numeric)
    return [{"name": f, "shape": [len(rows)], "datatype": "FP64" if f in numeric else "BYTES", "data": [r[f] for r in rows]}
            for f in s.features]


def expected(s: Served, rows: list[dict[str, Any]]) -> np.ndarray:
    return s.bundle.predict_proba({f: [r[f] for r in rows] for f in s.features})


V1 = f"/v1/models/{MODEL}:predict"
V2 = f"/v2/models/{MODEL}/infer"


def test_v1_and_v2_answers_match_the_bundle(served: Served) -> None:
    keys = served.offline.index[:40].tolist()
    rows = [v1_row(served, k) for k in keys]
    v1 = served.post(V1, {"instances": rows})
    assert v1.status_code == 200, v1.text
    v1_probs = [p["probability"] for p in v1.json()["predictions"]]
    v2 = served.post(V2, {"id": "batch-1", "inputs": v2_inputs(served, rows)})
    assert v2.status_code == 200, v2.text
    body = v2.json()
    assert body["id"] == "batch-1" and body["model_name"] == MODEL and body["model_version"] == "itest0123456"
    outputs = {o["name"]: o for o in body["outputs"]}
    assert outputs["probability"]["shape"] == [40] and outputs["label"]["datatype"] == "INT64"
    want = expected(served, rows)
    np.testing.assert_allclose(v1_probs, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(outputs["probability"]["data"], want, rtol=1e-5, atol=1e-6)
    assert outputs["label"]["data"] == [int(p >= served.bundle.threshold) for p in want]
    no_id = served.post(V2, {"inputs": v2_inputs(served, rows[:1])})  # stock KServe answers 500 here
    assert no_id.status_code == 200 and no_id.json()["id"]


def _bad_cases(s: Served) -> list[tuple[str, str, dict[str, Any]]]:
    good = v1_row(s, s.offline.index[0])
    inputs = v2_inputs(s, [good])
    amount = s.bundle.numeric[0]
    def v2_with(**change: Any) -> bytes:
        tensors = [dict(t, **change) if t["name"] == amount else t for t in inputs]
        return json.dumps({"inputs": tensors}).encode()
    big = json.dumps({"instances": [good] * 2000}).encode()
    assert len(big) > MAX_BODY
    J = {"content-type": "application/json"}
    return [
        # (what, expected "status: message part", request kwargs)
        ("malformed JSON", "400:malformed JSON", dict(path=V1, raw=b'{"instances": [')),
        ("empty body", "400:empty request body", dict(path=V2, raw=b"")),
        ("no content type", "415:missing content-type", dict(path=V2, raw=json.dumps({"inputs": inputs}).encode(), headers={})),
        ("wrong content type", "415:unsupported content-type", dict(path=V1, raw=b'{"instances": []}', headers={"content-type": "text/plain"})),
        ("ragged V2 data", "400:ragged", dict(path=V2, raw=v2_with(shape=[2, 1], data=[[1.0], [2.0, 3.0]]))),
        ("ragged V1 rows", "400:has 2 values", dict(path=V1, raw=json.dumps({"instances": [[1.0, 2.0]]}).encode())),
        ("V2 shape mismatch", "400:declares shape [3]", dict(path=V2, raw=v2_with(shape=[3]))),
        ("V2 rank", "400:shape [n] or [n, 1]", dict(path=V2, raw=v2_with(shape=[1, 2]))),
        ("V2 string data", f"400:'{amount}' (row 0) must be a number", dict(path=V2, raw=v2_with(data=["12.5"]))),
        ("V2 wrong datatype", "400:must be a number type", dict(path=V2, raw=v2_with(datatype="BYTES"))),
        ("V1 string value", f"400:'{amount}' (row 0) must be a number", dict(path=V1, raw=json.dumps({"instances": [dict(good, **{amount: "x"})]}).encode())),
        ("V1 string instances", "400:non-empty list of rows", dict(path=V1, raw=b'{"instances": "abc"}')),
        ("V2 string inputs", "400:non-empty list of tensors", dict(path=V2, raw=b'{"inputs": "abc"}')),
        ("unknown feature", "400:unknown feature(s) ['colour']", dict(path=V1, raw=json.dumps({"instances": [dict(good, colour="red")]}).encode())),
        ("missing feature", f"400:missing feature(s) ['{amount}']", dict(path=V1, raw=json.dumps({"instances": [{k: v for k, v in good.items() if k != amount}]}).encode())),
        ("unknown V2 input", "400:unknown input(s) ['colour']", dict(path=V2, raw=json.dumps({"inputs": [*inputs, {"name": "colour", "shape": [1], "datatype": "BYTES", "data": ["red"]}]}).encode())),
        ("unknown entity", "404:unknown transaction_id 'no-such-tx'", dict(path=V1, raw=b'{"instances": [{"transaction_id": "no-such-tx"}]}')),
        ("NaN literal", "400:NaN and Infinity are not valid JSON", dict(path=V1, raw=json.dumps({"instances": [dict(good, **{amount: float("nan")})]}).encode())),
        ("Infinity literal", "400:NaN and Infinity are not valid JSON", dict(path=V2, raw=v2_with(data=[float("inf")]))),
        ("huge number", "400:too large for a float64", dict(path=V2, raw=v2_with(data=[1]).replace(b"[1]", b"[1e999]"))),
        ("over the size limit", f"413:over the limit of {MAX_BODY} bytes", dict(path=V1, raw=big)),
        ("over the limit, chunked", f"413:over the limit of {MAX_BODY} bytes", dict(path=V1, chunks=[big[:150_000], big[150_000:]])),
        ("unknown model", "404:does not exist", dict(path="/v2/models/nope/infer", raw=json.dumps({"inputs": inputs}).encode())),
        ("unknown version", "404:has no version 'v9'", dict(path=f"/v2/models/{MODEL}/versions/v9/infer", raw=json.dumps({"inputs": inputs}).encode())),
        ("JSON that is not an object", "400:must be a JSON object", dict(path=V2, raw=b"[1, 2]")),
    ]


def test_every_malformed_request_gets_a_4xx_naming_it_and_the_server_keeps_serving(served: Served) -> None:
    problems = []
    for what, want, req in _bad_cases(served):
        status, message = want.split(":", 1)
        if "chunks" in req:
            resp = requests.post(served.url + req["path"], data=iter(req["chunks"]),
                                 headers={"content-type": "application/json"}, timeout=30)
        else:
            resp = served.post(req["path"], raw=req["raw"], headers=req.get("headers"))
        try:
            error = resp.json().get("error", "")
        except ValueError:
            error = resp.text
        if resp.status_code != int(status) or message not in error:
            problems.append(f"{what}: HTTP {resp.status_code} {error!r}, wanted {status} with {message!r}")
    assert not problems, "\n".join(problems)
    for path in ("/docs", "/openapi.json", "/redoc"):
        assert requests.get(served.url + path, timeout=5).status_code == 404
    assert requests.get(served.url + V1, timeout=5).status_code == 405
    good = served.post(V1, {"instances": [v1_row(served, served.offline.index[0])]})
    assert good.status_code == 200 and 0.0 <= good.json()["predictions"][0]["probability"] <= 1.0
    assert served.process.poll() is None


def test_metadata_and_readiness_come_from_the_signature(served: Served) -> None:
    meta = requests.get(f"{served.url}/v2/models/{MODEL}", timeout=5).json()
    assert [i["name"] for i in meta["inputs"]] == served.features
    assert {i["name"]: i["datatype"] for i in meta["inputs"]}["channel"] == "BYTES"
    assert [o["name"] for o in meta["outputs"]] == ["probability", "label"]
    assert meta["versions"] == ["itest0123456"] and meta["parameters"]["entity_key"] == "transaction_id"
    assert requests.get(f"{served.url}/v2/models/{MODEL}/ready", timeout=5).json() == {"name": MODEL, "ready": True}
    assert requests.get(f"{served.url}/v2/health/ready", timeout=5).status_code == 200


def test_entity_keys_read_the_training_features_from_the_online_store(served: Served) -> None:
    keys = served.offline.index[100:103].tolist()
    want = expected(served, [v1_row(served, k) for k in keys])
    v1 = served.post(V1, {"instances": [{"transaction_id": k} for k in keys]})
    assert v1.status_code == 200, v1.text
    np.testing.assert_allclose([p["probability"] for p in v1.json()["predictions"]], want, rtol=1e-5, atol=1e-6)
    v2 = served.post(V2, {"inputs": [{"name": "transaction_id", "shape": [3], "datatype": "BYTES", "data": keys}]})
    assert v2.status_code == 200, v2.text
    np.testing.assert_allclose(v2.json()["outputs"][0]["data"], want, rtol=1e-5, atol=1e-6)
    refused = served.post(V1, {"instances": [{"transaction_id": keys[0]}, {"transaction_id": "tx-unknown-9"}]})
    assert refused.status_code == 404 and "'tx-unknown-9'" in refused.json()["error"]


def _samples(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(url + "/metrics", timeout=5).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for fam in text_string_to_metric_families(text) for s in fam.samples}


def _value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return sum(v for (n, lab), v in samples.items() if n == name and labels.items() <= dict(lab).items())


def test_metrics_count_requests_errors_and_latency(served: Served) -> None:
    before = _samples(served.url)
    row = v1_row(served, served.offline.index[1])
    assert served.post(V1, {"instances": [row, row]}).status_code == 200
    assert served.post(V2, raw=b"{oops").status_code == 400
    after = _samples(served.url)
    base = {"model": MODEL, "version": "itest0123456"}
    ok = dict(base, protocol="v1", status_class="2xx")
    assert _value(after, "mlwf_inference_requests_total", **ok) == _value(before, "mlwf_inference_requests_total", **ok) + 1
    bad = dict(base, protocol="v2", code="400")
    assert _value(after, "mlwf_inference_errors_total", **bad) == _value(before, "mlwf_inference_errors_total", **bad) + 1
    assert _value(after, "mlwf_inference_rows_total", **base) == _value(before, "mlwf_inference_rows_total", **base) + 2
    lat = dict(base, protocol="v1")
    assert _value(after, "mlwf_inference_latency_seconds_count", **lat) == _value(before, "mlwf_inference_latency_seconds_count", **lat) + 1
    # KServe's own predict histogram (the PrometheusRule's alert reads it) moves too.
    assert _value(after, "request_predict_seconds_count", model_name=MODEL) > _value(before, "request_predict_seconds_count", model_name=MODEL)


def _logged(root: Path, since: datetime) -> pd.DataFrame:
    from components.core.request_log import read_window

    return read_window(str(root), MODEL, since, datetime.now(timezone.utc) + timedelta(minutes=1))


def test_request_logs_reach_disk_while_serving(served: Served) -> None:
    since = datetime.now(timezone.utc) - timedelta(seconds=1)
    rid = f"log-{uuid.uuid4().hex[:8]}"
    key = served.offline.index[5]
    row = v1_row(served, key)
    assert served.post(V1, {"instances": [row]}, headers={"content-type": "application/json", "x-request-id": rid}).status_code == 200
    assert served.post(V1, {"instances": [{"transaction_id": key}]}, headers={"content-type": "application/json", "x-request-id": rid + "-key"}).status_code == 200
    deadline = time.monotonic() + 15
    frame = pd.DataFrame()
    while time.monotonic() < deadline:  # the server flushes every 0.3 s
        frame = _logged(served.log_root, since)
        if {rid, rid + "-key"} <= set(frame.get("request_id", [])):
            break
        time.sleep(0.2)
    mine = frame[frame["request_id"] == rid]
    assert len(mine) == 1, f"request {rid} not in the request log; log has {len(frame)} rows"
    assert mine["version"].iloc[0] == "itest0123456" and mine["entity"].iloc[0] is None
    assert mine[f"f.{served.bundle.numeric[0]}"].iloc[0] == row[served.bundle.numeric[0]]
    keyed = frame[frame["request_id"] == rid + "-key"]
    assert keyed["entity"].iloc[0] == key and keyed["f.channel"].iloc[0] == row["channel"]  # looked-up values logged


def test_grpc_v2_infer_and_its_errors(served: Served) -> None:
    import grpc
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc

    rows = [v1_row(served, k) for k in served.offline.index[10:13]]
    numeric = set(served.bundle.numeric)

    def tensor(name: str, values: list[Any], datatype: str | None = None) -> Any:
        kind = datatype or ("FP64" if name in numeric else "BYTES")
        contents = pb.InferTensorContents(fp64_contents=values) if kind == "FP64" else pb.InferTensorContents(
            bytes_contents=[str(v).encode() for v in values])
        return pb.ModelInferRequest.InferInputTensor(name=name, datatype=kind, shape=[len(values)], contents=contents)

    with grpc.insecure_channel(f"127.0.0.1:{served.grpc_port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ModelReady(pb.ModelReadyRequest(name=MODEL), timeout=10).ready
        inputs = [tensor(f, [r[f] for r in rows]) for f in served.features]
        reply = stub.ModelInfer(pb.ModelInferRequest(model_name=MODEL, id="g-1", inputs=inputs), timeout=10)
        assert reply.id == "g-1"
        probs = {o.name: o for o in reply.outputs}["probability"].contents.fp64_contents
        np.testing.assert_allclose(list(probs), expected(served, rows), rtol=1e-5, atol=1e-6)
        bad = [tensor(f, [r[f] for r in rows], "BYTES") if f in numeric else tensor(f, [r[f] for r in rows]) for f in served.features]
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(pb.ModelInferRequest(model_name=MODEL, inputs=bad), timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "must be a number type" in err.value.details()
        # The binary form: raw_input_contents (little-endian FP64; BYTES as 4-byte length + bytes).
        raw, specs = [], []
        for f in served.features:
            values = [r[f] for r in rows]
            if f in numeric:
                raw.append(np.asarray(values, dtype="<f8").tobytes())
            else:
                raw.append(b"".join(len(str(v).encode()).to_bytes(4, "little") + str(v).encode() for v in values))
            specs.append(pb.ModelInferRequest.InferInputTensor(name=f, datatype="FP64" if f in numeric else "BYTES", shape=[len(values)]))
        binary = stub.ModelInfer(pb.ModelInferRequest(model_name=MODEL, inputs=specs, raw_input_contents=raw), timeout=10)
        assert binary.raw_output_contents, "raw inputs get raw outputs"
        np.testing.assert_allclose(np.frombuffer(binary.raw_output_contents[0], dtype="<f8"), list(probs), rtol=1e-6)
        keyed = stub.ModelInfer(pb.ModelInferRequest(model_name=MODEL, inputs=[tensor("transaction_id", [served.offline.index[10]])]), timeout=10)
        assert list({o.name: o for o in keyed.outputs}["probability"].contents.fp64_contents) == pytest.approx([probs[0]], rel=1e-5)
    assert served.post(V1, {"instances": [rows[0]]}).status_code == 200  # REST still serves


def test_model_not_ready_answers_503_in_process() -> None:
    from starlette.testclient import TestClient

    from serving.front import FrontApp
    from serving.model import BundleModel

    async def kserve_app(scope: Any, receive: Any, send: Any) -> None:  # never reached: the front answers
        raise AssertionError("the front must answer inference for its own model")

    client = TestClient(FrontApp(BundleModel(MODEL, "/nonexistent"), kserve_app))
    resp = client.post(V2, content=b'{"inputs": []}', headers={"content-type": "application/json"})
    assert resp.status_code == 503 and "not ready" in resp.json()["error"]
    assert client.get(f"/v2/models/{MODEL}").status_code == 503


def test_tampered_bundle_is_refused(served: Served, tmp_path: Path) -> None:
    import shutil

    from components.core.bundle import BundleError
    from serving.model import BundleModel

    tampered = tmp_path / "tampered"
    shutil.copytree(served.bundle_dir, tampered)
    signature = json.loads((tampered / "signature.json").read_text())
    signature["threshold"] = 0.01
    (tampered / "signature.json").write_text(json.dumps(signature))
    model = BundleModel(MODEL, str(tampered))
    with pytest.raises(BundleError, match="signature.json does not match its sha256"):
        model.load()
    assert not model.ready


def test_request_log_sink_flushes_on_close(tmp_path: Path) -> None:
    from serving.request_sink import RequestLogSink
    from serving.requests import Schema, columns_from_rows

    schema = Schema(("amount",), ("channel",))
    sink = RequestLogSink(str(tmp_path), MODEL, schema.names, schema.numeric, flush_interval_s=3600)
    sink.start()
    since = datetime.now(timezone.utc) - timedelta(seconds=1)
    batch = columns_from_rows([{"amount": 1.5, "channel": "pos"}, {"amount": None, "channel": None}], schema)
    sink.submit(batch, np.array([0.2, 0.7]), np.array([0, 1]), "v1", "closing")
    time.sleep(0.2)
    assert _logged(tmp_path, since).empty  # an hourly flush has not happened yet
    sink.close()
    frame = _logged(tmp_path, since)
    assert frame["request_id"].tolist() == ["closing", "closing"]
    assert frame["f.amount"].iloc[0] == 1.5 and pd.isna(frame["f.amount"].iloc[1])


def test_sigterm_stops_the_server_cleanly_with_its_last_requests_logged(served: Served) -> None:
    """Runs last: it stops the module's server."""
    since = datetime.now(timezone.utc) - timedelta(seconds=1)
    row = v1_row(served, served.offline.index[7])
    resp = served.post(V1, {"instances": [row, row]}, headers={"content-type": "application/json", "x-request-id": "at-exit"})
    assert resp.status_code == 200
    assert _stop(served.process) == 0
    frame = _logged(served.log_root, since)
    assert frame[frame["request_id"] == "at-exit"].shape[0] == 2
