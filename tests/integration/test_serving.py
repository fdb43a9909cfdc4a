"""The model server for real: `python -m serving` on 127.0.0.1 with a bundle trained here on generated data
and a local Feast store built here, answering well-formed and malformed V1/V2 REST and gRPC requests.

Every client mistake must come back as a 4xx that names the problem, and the server must keep serving;
metrics must count it, and sampled request logs must reach disk while the server runs and at shutdown.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import requests

from tests.factories import free_port, transactions_frame

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
MODEL = "clf"
MAX_BODY = 200_000


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


def _start(
    bundle_dir: Path, state: Path, log_root: Path, log_path: Path, *extra: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], str, int]:
    port, grpc_port = free_port(), free_port()
    cmd = [
        sys.executable,
        "-m",
        "serving",
        "--model_name",
        MODEL,
        "--model_dir",
        str(bundle_dir),
        "--http_port",
        str(port),
        "--bind_host",
        "127.0.0.1",
        "--grpc_port",
        str(grpc_port),
        "--max_request_bytes",
        str(MAX_BODY),
        "--request_log_root",
        str(log_root),
        *extra,
    ]
    environment = {**os.environ, "MLWF_STATE_DIR": str(state), "MLWF_PROFILE": "local", **(env or {})}
    with open(log_path, "ab") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=environment)
    return process, f"http://127.0.0.1:{port}", grpc_port


def _wait_ready(process: subprocess.Popen[bytes], url: str, log_path: Path) -> None:
    from components.deployment.processes import wait_ready

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
    from components.core.settings import get_settings
    from components.core.spec import load_spec
    from components.features.store import build_features
    from components.training.train import TrainParams, build_bundle, train_model

    tmp = tmp_path_factory.mktemp("serving")
    state = tmp / "state"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLWF_STATE_DIR", str(state))
        mp.setenv("MLWF_PROFILE", "local")
        for var in ("MLWF_FEAST_REGISTRY", "MLWF_FEAST_ONLINE", "MLWF_FEAST_OFFLINE_ROOT"):
            mp.delenv(var, raising=False)
        spec = load_spec("transactions")
        valid, numeric, categorical = transactions_frame(2000, seed=5)
        outcome = build_features(spec, valid, get_settings())
        program, vocab, result = train_model(outcome.train, numeric, categorical, TrainParams(epochs=2, seed=3))
        bundle_dir = tmp / "bundle"
        lineage = {"dataset": spec.name, "feature_service": outcome.service, "model_name": MODEL, "inputs_fingerprint": "itest0123456789"}
        build_bundle(bundle_dir, program, vocab, result, outcome.train, numeric, categorical, lineage, "test bundle\n")
    log_root, log_path = tmp / "request_logs", tmp / "server.log"
    # A Prometheus multiprocess directory inherited from the parent (a process that imported Feast exports one):
    # one server process must keep its counters to itself, in memory (test_metrics_count_requests_errors_and_latency).
    inherited = tmp / "inherited-metrics"
    inherited.mkdir()
    process, url, grpc_port = _start(
        bundle_dir,
        state,
        log_root,
        log_path,
        "--request_log_flush_s",
        "0.3",
        "--entity_lookup",
        "eager",
        env={"PROMETHEUS_MULTIPROC_DIR": str(inherited), "PROMETHEUS_MULTIPROCESS_DIR": str(inherited)},
    )
    try:
        _wait_ready(process, url, log_path)
        offline = pd.concat([outcome.train, outcome.test]).set_index("transaction_id")
        yield Served(
            url, grpc_port, process, log_path, log_root, bundle_dir, state, offline, bundle_lib.load(bundle_dir), numeric + categorical
        )
    finally:
        _stop(process)


def v1_row(s: Served, key: str) -> dict[str, Any]:
    row = s.offline.loc[key, s.features].to_dict()
    return {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items()}


def v2_inputs(s: Served, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    numeric = set(s.bundle.numeric)
    return [
        {"name": f, "shape": [len(rows)], "datatype": "FP64" if f in numeric else "BYTES", "data": [r[f] for r in rows]} for f in s.features
    ]


def expected(s: Served, rows: list[dict[str, Any]]) -> np.ndarray:
    return s.bundle.predict_proba({f: [r[f] for r in rows] for f in s.features})


V1 = f"/v1/models/{MODEL}:predict"
V2 = f"/v2/models/{MODEL}/infer"
BIN = "inference-header-content-length"


def _bytes_tensor(values: list[Any]) -> bytes:
    """BYTES elements as the binary extension frames them: a 4-byte little-endian length, then the bytes."""
    return b"".join(len(v).to_bytes(4, "little") + v for v in (str(x).encode() for x in values))


def binary_request(s: Served, rows: list[dict[str, Any]], **header: Any) -> tuple[bytes, dict[str, str]]:
    """A V2 request in the binary tensor extension, built by hand (not by the server's codec): every input
    as raw data after the JSON header; numbers as little-endian FP64 (missing -> NaN)."""
    numeric = set(s.bundle.numeric)
    specs, raw = [], []
    for f in s.features:
        values = [r[f] for r in rows]
        data = np.asarray([np.nan if v is None else v for v in values], dtype="<f8").tobytes() if f in numeric else _bytes_tensor(values)
        specs.append(
            {
                "name": f,
                "shape": [len(rows)],
                "datatype": "FP64" if f in numeric else "BYTES",
                "parameters": {"binary_data_size": len(data)},
            }
        )
        raw.append(data)
    head = json.dumps({"inputs": specs, **header}).encode()
    return head + b"".join(raw), {"content-type": "application/octet-stream", BIN: str(len(head))}


def split_binary_response(resp: requests.Response) -> dict[str, Any]:
    """Outputs by name from a binary response: JSON header, then raw tensors in the order of the outputs."""
    n = int(resp.headers[BIN])
    head = json.loads(resp.content[:n])
    out, at = {}, n
    for o in head["outputs"]:
        if "data" in o:
            out[o["name"]] = o["data"]
            continue
        size = o["parameters"]["binary_data_size"]
        out[o["name"]] = np.frombuffer(resp.content[at : at + size], dtype="<f8" if o["datatype"] == "FP64" else "<i8").tolist()
        at += size
    assert at == len(resp.content), "the binary outputs fill the body exactly"
    return out


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


def test_json_without_content_type_compressed_bodies_and_binary_tensors_are_answered(served: Served) -> None:
    """What Triton's and KServe's clients send: JSON with no Content-Type (tritonclient.http), gzip/deflate
    bodies (tritonclient's request compression), and the binary tensor extension both ways."""
    import gzip
    import zlib

    keys = served.offline.index[40:52].tolist()
    rows = [v1_row(served, k) for k in keys]
    rows[0][served.bundle.numeric[0]] = None  # a missing number: null in JSON, NaN in a binary tensor
    want = expected(served, rows)
    doc = json.dumps({"inputs": v2_inputs(served, rows)}).encode()
    bare = served.post(V2, raw=doc, headers={})
    assert bare.status_code == 200, bare.text
    np.testing.assert_allclose(bare.json()["outputs"][0]["data"], want, rtol=1e-5, atol=1e-6)
    for encoding, packed in (("gzip", gzip.compress(doc)), ("deflate", zlib.compress(doc))):
        resp = served.post(V2, raw=packed, headers={"content-type": "application/json", "content-encoding": encoding})
        assert resp.status_code == 200, (encoding, resp.text)
        np.testing.assert_allclose(resp.json()["outputs"][0]["data"], want, rtol=1e-5, atol=1e-6)
    body, headers = binary_request(served, rows)
    for content_type in ("application/octet-stream", None, "application/json"):  # the header decides, not the type
        hdrs = {k: v for k, v in headers.items() if k != "content-type"} | ({"content-type": content_type} if content_type else {})
        resp = served.post(V2, raw=body, headers=hdrs)
        assert resp.status_code == 200 and BIN not in resp.headers, (content_type, resp.text)  # JSON unless asked
        np.testing.assert_allclose(resp.json()["outputs"][0]["data"], want, rtol=1e-5, atol=1e-6)
    body, headers = binary_request(served, rows, id="bin-1", parameters={"binary_data_output": True})
    resp = served.post(V2, raw=body, headers=headers)
    assert resp.status_code == 200 and resp.headers["content-type"] == "application/octet-stream", resp.text
    outputs = split_binary_response(resp)
    assert json.loads(resp.content[: int(resp.headers[BIN])])["id"] == "bin-1"
    np.testing.assert_allclose(outputs["probability"], want, rtol=1e-5, atol=1e-6)
    assert outputs["label"] == [int(p >= served.bundle.threshold) for p in want]
    # Per output: binary probability, JSON label, in the order asked.
    body, headers = binary_request(
        served,
        rows,
        outputs=[{"name": "label", "parameters": {"binary_data": False}}, {"name": "probability", "parameters": {"binary_data": True}}],
    )
    resp = served.post(V2, raw=body, headers=headers)
    head = json.loads(resp.content[: int(resp.headers[BIN])])
    assert [o["name"] for o in head["outputs"]] == ["label", "probability"] and "data" in head["outputs"][0]
    np.testing.assert_allclose(split_binary_response(resp)["probability"], want, rtol=1e-5, atol=1e-6)
    # JSON and binary inputs in one request: the first input as JSON data, the others raw.
    mixed = json.loads(body[: int(headers[BIN])])
    skipped = mixed["inputs"][0]["parameters"]["binary_data_size"]
    mixed["inputs"][0] = v2_inputs(served, rows)[0]
    head = json.dumps(mixed).encode()
    resp = served.post(V2, raw=head + body[int(headers[BIN]) + skipped :], headers={BIN: str(len(head))})
    assert resp.status_code == 200, resp.text
    np.testing.assert_allclose(split_binary_response(resp)["probability"], want, rtol=1e-5, atol=1e-6)


def _bad_cases(s: Served) -> list[tuple[str, str, dict[str, Any]]]:
    good = v1_row(s, s.offline.index[0])
    inputs = v2_inputs(s, [good])
    amount = s.bundle.numeric[0]

    def v2_with(**change: Any) -> bytes:
        tensors = [dict(t, **change) if t["name"] == amount else t for t in inputs]
        return json.dumps({"inputs": tensors}).encode()

    big = json.dumps({"instances": [good] * 2000}).encode()
    assert len(big) > MAX_BODY
    body, hdrs = binary_request(s, [good, good])
    head_len = int(hdrs[BIN])
    head = json.loads(body[:head_len])

    def tampered(change: Any, tail: bytes | None = None) -> bytes:
        doc = json.loads(json.dumps(head))
        change(doc)
        new_head = json.dumps(doc).encode()
        return new_head + (body[head_len:] if tail is None else tail), {**hdrs, BIN: str(len(new_head))}

    def spec(doc: Any, name: str) -> dict[str, Any]:
        return next(t for t in doc["inputs"] if t["name"] == name)

    short_shape, short_shape_h = tampered(lambda d: spec(d, amount).update(shape=[3]))
    shrunk = bytearray(body[head_len:])
    channel_at = sum(t["parameters"]["binary_data_size"] for t in head["inputs"][: s.features.index("channel")])
    shrunk[channel_at : channel_at + 4] = (10_000).to_bytes(4, "little")  # the first channel element claims 10 kB
    past_end, past_end_h = tampered(lambda d: None, bytes(shrunk))
    extra, extra_h = tampered(lambda d: None, body[head_len:] + b"\0" * 8)
    last = s.features[-1]
    last_size = spec(head, last)["parameters"]["binary_data_size"]
    overrun, overrun_h = tampered(lambda d: spec(d, last)["parameters"].update(binary_data_size=last_size + 8))
    both, both_h = tampered(lambda d: spec(d, amount).update(data=[1.0, 2.0]))
    J = {"content-type": "application/json"}
    return [
        # (what, expected "status: message part", request kwargs)
        ("malformed JSON", "400:malformed JSON", dict(path=V1, raw=b'{"instances": [')),
        ("empty body", "400:empty request body", dict(path=V2, raw=b"")),
        ("no content type, not JSON", "415:missing content-type, and the body is not JSON", dict(path=V2, raw=b"amount=3", headers={})),
        (
            "form data",
            "415:unsupported content-type",
            dict(path=V2, raw=b"amount=3", headers={"content-type": "application/x-www-form-urlencoded"}),
        ),
        (
            "multipart",
            "415:unsupported content-type",
            dict(path=V2, raw=b"--x--", headers={"content-type": "multipart/form-data; boundary=x"}),
        ),
        (
            "binary: header length past the body",
            f"400:Inference-Header-Content-Length {len(body) + 1} is past the end",
            dict(path=V2, raw=body, headers={**hdrs, BIN: str(len(body) + 1)}),
        ),
        ("binary: header length not a number", "400:must be a non-negative integer", dict(path=V2, raw=body, headers={**hdrs, BIN: "-4"})),
        ("binary: header is not JSON", "400:malformed JSON", dict(path=V2, raw=body, headers={**hdrs, BIN: str(head_len - 3)})),
        (
            "binary: tensor shorter than its shape",
            f"400:input '{amount}': binary data of 16 bytes is shorter than its shape [3]",
            dict(path=V2, raw=short_shape, headers=short_shape_h),
        ),
        (
            "binary: BYTES element past the end",
            "400:input 'channel': BYTES element 0 of 10000 bytes runs past the end",
            dict(path=V2, raw=past_end, headers=past_end_h),
        ),
        (
            "binary: sizes short of the body",
            "400:8 bytes of binary data after the last binary input",
            dict(path=V2, raw=extra, headers=extra_h),
        ),
        (
            "binary: size past the body",
            f"400:input '{last}': binary_data_size {last_size + 8} runs past the end of the body",
            dict(path=V2, raw=overrun, headers=overrun_h),
        ),
        (
            "binary: data and binary size",
            f"400:input '{amount}' has both 'data' and binary_data_size",
            dict(path=V2, raw=both, headers=both_h),
        ),
        ("binary on V1", "400:is for V2 requests", dict(path=V1, raw=body, headers=hdrs)),
        ("bad gzip", "400:not valid gzip data", dict(path=V2, raw=b"not gzip", headers={**J, "content-encoding": "gzip"})),
        (
            "unknown content-encoding",
            "415:unsupported content-encoding 'br'",
            dict(path=V2, raw=b"{}", headers={**J, "content-encoding": "br"}),
        ),
        (
            "wrong content type",
            "415:unsupported content-type",
            dict(path=V1, raw=b'{"instances": []}', headers={"content-type": "text/plain"}),
        ),
        ("ragged V2 data", "400:ragged", dict(path=V2, raw=v2_with(shape=[2, 1], data=[[1.0], [2.0, 3.0]]))),
        ("ragged V1 rows", "400:has 2 values", dict(path=V1, raw=json.dumps({"instances": [[1.0, 2.0]]}).encode())),
        ("V2 shape mismatch", "400:declares shape [3]", dict(path=V2, raw=v2_with(shape=[3]))),
        ("V2 rank", "400:shape [n] or [n, 1]", dict(path=V2, raw=v2_with(shape=[1, 2]))),
        ("V2 string data", f"400:'{amount}' (row 0) must be a number", dict(path=V2, raw=v2_with(data=["12.5"]))),
        ("V2 wrong datatype", "400:must be a number type", dict(path=V2, raw=v2_with(datatype="BYTES"))),
        (
            "V1 string value",
            f"400:'{amount}' (row 0) must be a number",
            dict(path=V1, raw=json.dumps({"instances": [dict(good, **{amount: "x"})]}).encode()),
        ),
        ("V1 string instances", "400:non-empty list of rows", dict(path=V1, raw=b'{"instances": "abc"}')),
        ("V2 string inputs", "400:non-empty list of tensors", dict(path=V2, raw=b'{"inputs": "abc"}')),
        (
            "unknown feature",
            "400:unknown feature(s) ['colour']",
            dict(path=V1, raw=json.dumps({"instances": [dict(good, colour="red")]}).encode()),
        ),
        (
            "missing feature",
            f"400:missing feature(s) ['{amount}']",
            dict(path=V1, raw=json.dumps({"instances": [{k: v for k, v in good.items() if k != amount}]}).encode()),
        ),
        (
            "unknown V2 input",
            "400:unknown input(s) ['colour']",
            dict(
                path=V2,
                raw=json.dumps({"inputs": [*inputs, {"name": "colour", "shape": [1], "datatype": "BYTES", "data": ["red"]}]}).encode(),
            ),
        ),
        (
            "unknown entity",
            "404:unknown transaction_id 'no-such-tx'",
            dict(path=V1, raw=b'{"instances": [{"transaction_id": "no-such-tx"}]}'),
        ),
        (
            "NaN literal",
            "400:NaN and Infinity are not valid JSON",
            dict(path=V1, raw=json.dumps({"instances": [dict(good, **{amount: float("nan")})]}).encode()),
        ),
        ("Infinity literal", "400:NaN and Infinity are not valid JSON", dict(path=V2, raw=v2_with(data=[float("inf")]))),
        ("huge number", "400:too large for a float64", dict(path=V2, raw=v2_with(data=[1]).replace(b"[1]", b"[1e999]"))),
        ("over the size limit", f"413:over the limit of {MAX_BODY} bytes", dict(path=V1, raw=big)),
        ("over the limit, chunked", f"413:over the limit of {MAX_BODY} bytes", dict(path=V1, chunks=[big[:150_000], big[150_000:]])),
        ("unknown model", "404:does not exist", dict(path="/v2/models/nope/infer", raw=json.dumps({"inputs": inputs}).encode())),
        (
            "unknown version",
            "404:has no version 'v9'",
            dict(path=f"/v2/models/{MODEL}/versions/v9/infer", raw=json.dumps({"inputs": inputs}).encode()),
        ),
        ("JSON that is not an object", "400:must be a JSON object", dict(path=V2, raw=b"[1, 2]")),
    ]


def test_every_malformed_request_gets_a_4xx_naming_it_and_the_server_keeps_serving(served: Served) -> None:
    problems = []
    for what, want, req in _bad_cases(served):
        status, message = want.split(":", 1)
        if "chunks" in req:
            resp = requests.post(
                served.url + req["path"], data=iter(req["chunks"]), headers={"content-type": "application/json"}, timeout=30
            )
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
    assert _value(after, "request_predict_seconds_count", model_name=MODEL) > _value(
        before, "request_predict_seconds_count", model_name=MODEL
    )
    # One process counts in memory, even with an inherited multiprocess directory and Feast imported (eager lookup):
    # nothing of it in the directory, where a second server started by the same parent would sum it as its own.
    assert not list((served.state.parent / "inherited-metrics").glob("*.db"))


def _logged(root: Path, since: datetime) -> pd.DataFrame:
    from components.core.request_log import read_window

    return read_window(str(root), MODEL, since, datetime.now(UTC) + timedelta(minutes=1))


def test_request_logs_reach_disk_while_serving(served: Served) -> None:
    since = datetime.now(UTC) - timedelta(seconds=1)
    rid = f"log-{uuid.uuid4().hex[:8]}"
    key = served.offline.index[5]
    row = v1_row(served, key)
    assert served.post(V1, {"instances": [row]}, headers={"content-type": "application/json", "x-request-id": rid}).status_code == 200
    assert (
        served.post(
            V1, {"instances": [{"transaction_id": key}]}, headers={"content-type": "application/json", "x-request-id": rid + "-key"}
        ).status_code
        == 200
    )
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
        contents = (
            pb.InferTensorContents(fp64_contents=values)
            if kind == "FP64"
            else pb.InferTensorContents(bytes_contents=[str(v).encode() for v in values])
        )
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
        keyed = stub.ModelInfer(
            pb.ModelInferRequest(model_name=MODEL, inputs=[tensor("transaction_id", [served.offline.index[10]])]), timeout=10
        )
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


def test_batch_log_lines_are_byte_for_byte_the_per_row_encoding() -> None:
    """The sink encodes large batches column-wise (a third of the GIL time); the lines must be exactly what
    components' per-row `encode` writes, edge values included, sampled rows too."""
    from components.core.request_log import encode
    from serving.request_sink import encode_columns
    from serving.requests import Schema, columns_from_rows, rows_for_log

    schema = Schema(("a", "b"), ("c",), entity="k")
    edge = [0.0, -0.0, 1e16, 1.5e-300, 5e-324, 1.7976931348623157e308, 0.1, 1 / 3, None, 2**53 + 1, -7, 123456789.125]
    texts = ["x", None, 'quote " and \\ backslash', "caf\u00e9 \u2028"]
    rows = [{"a": v, "b": float(i), "c": texts[i % 4], "k": f"id-{i}"} for i, v in enumerate(edge * 3)]
    batch = columns_from_rows(rows, schema)
    probabilities = np.linspace(0.0, 1.0, batch.rows) ** 3
    labels = (probabilities > 0.5).astype(np.int64)
    head = ("2026-01-01T00:00:00.123+00:00", 'rid "1"', "model", "v7")
    per_row = rows_for_log(batch, schema.names, schema.numeric)
    want = [encode(*head, per_row[i], probabilities.tolist()[i], labels.tolist()[i], batch.entities[i]) for i in range(batch.rows)]
    assert encode_columns(batch, probabilities, labels, schema.names, schema.numeric, head, list(range(batch.rows))) == b"\n".join(want)
    keep = [1, 5, 8, 30]
    assert encode_columns(batch, probabilities, labels, schema.names, schema.numeric, head, keep) == b"\n".join(want[i] for i in keep)
    batch.entities = None
    plain = encode_columns(batch, probabilities, labels, schema.names, schema.numeric, head, [0])
    assert plain == encode(*head, per_row[0], probabilities.tolist()[0], labels.tolist()[0], None)


def test_v1_body_is_byte_for_byte_the_dict_encoding() -> None:
    """The front writes V1 answers column-wise; KServe's path (gRPC, V1 through KServe) returns the dict form."""
    import orjson

    from serving.model import Scored, v1_body, v1_response

    for probabilities in (np.array([0.5]), np.random.default_rng(1).random(1000), np.array([0.0, -0.0, 5e-324, 1e-300, np.nan, 1.0])):
        scored = Scored(probabilities, (probabilities >= 0.5).astype(np.int64), "r")
        assert v1_body(scored, 'v"1') == orjson.dumps(v1_response(scored, 'v"1'))


def test_large_batches_are_logged_from_the_event_loop_once_even_if_closed_midway(tmp_path: Path) -> None:
    """On an event loop a large batch is encoded a chunk per loop turn after the answer; a close() before the
    loop got through it (shutdown) encodes the rest: every row once, in order."""
    import asyncio

    from serving.request_sink import RequestLogSink
    from serving.requests import Schema, columns_from_rows

    schema = Schema(("amount",), ("channel",))
    since = datetime.now(UTC) - timedelta(seconds=1)
    sink = RequestLogSink(str(tmp_path), MODEL, schema.names, schema.numeric, flush_interval_s=3600)
    sink.start()
    rows = [{"amount": float(i), "channel": "pos" if i % 2 else None} for i in range(1000)]

    async def serve(turns: int) -> None:
        for name in ("a", "b"):
            sink.submit(columns_from_rows(rows, schema), np.linspace(0, 1, 1000), np.zeros(1000, dtype=np.int64), "v1", name)
        for _ in range(turns):
            await asyncio.sleep(0)

    loop = asyncio.new_event_loop()  # not asyncio.run: its shutdown steps would run the pending chunks
    loop.run_until_complete(serve(turns=3))  # 2 x 4 chunks queued, a few encoded; the loop stops with the rest pending
    loop.close()
    assert sink._queued_rows > 0 and not sink._queued, "the batches were queued on the loop, not for the thread"
    sink.close()
    frame = _logged(tmp_path, since)
    assert frame["request_id"].value_counts().to_dict() == {"a": 1000, "b": 1000}
    assert frame[frame["request_id"] == "a"]["f.amount"].tolist() == [float(i) for i in range(1000)]
    sink.close()  # again (the server's stop and its exit both close): nothing written twice
    assert len(_logged(tmp_path, since)) == 2000


def test_request_log_sink_flushes_on_close(tmp_path: Path) -> None:
    from serving.request_sink import RequestLogSink
    from serving.requests import Schema, columns_from_rows

    schema = Schema(("amount",), ("channel",))
    sink = RequestLogSink(str(tmp_path), MODEL, schema.names, schema.numeric, flush_interval_s=3600)
    sink.start()
    since = datetime.now(UTC) - timedelta(seconds=1)
    batch = columns_from_rows([{"amount": 1.5, "channel": "pos"}, {"amount": None, "channel": None}], schema)
    sink.submit(batch, np.array([0.2, 0.7]), np.array([0, 1]), "v1", "closing")
    time.sleep(0.2)
    assert _logged(tmp_path, since).empty  # an hourly flush has not happened yet
    sink.close()
    frame = _logged(tmp_path, since)
    assert frame["request_id"].tolist() == ["closing", "closing"]
    assert frame["f.amount"].iloc[0] == 1.5 and pd.isna(frame["f.amount"].iloc[1])


def test_two_workers_count_and_log_every_request_once(served: Served, tmp_path: Path) -> None:
    """--workers 2 (KServe's multiprocess mode): N requests sent over concurrent connections, answered by both
    workers; /metrics (whichever worker answers it) counts all N and every error; the request logs hold each of
    the N rows exactly once after a SIGTERM."""
    from concurrent.futures import ThreadPoolExecutor

    log_root, log_path = tmp_path / "request_logs", tmp_path / "workers.log"
    process, url, _ = _start(
        served.bundle_dir, served.state, log_root, log_path, "--workers", "2", "--request_log_flush_s", "0.3", "--entity_lookup", "off"
    )
    try:
        _wait_ready(process, url, log_path)
        deadline = time.monotonic() + 120
        while log_path.read_text().count("Application startup complete") < 2:  # the second worker may still load
            assert time.monotonic() < deadline and process.poll() is None, log_path.read_text()[-2000:]
            time.sleep(0.2)
        since = datetime.now(UTC) - timedelta(seconds=1)
        before = _samples(url)
        rows = [v1_row(served, k) for k in served.offline.index[:8]]
        n, bad = 120, 30

        def one(i: int) -> int:
            with requests.Session() as session:
                resp = session.post(
                    url + V1,
                    data=json.dumps({"instances": [rows[i % 8]]}),
                    headers={"content-type": "application/json", "x-request-id": f"w-{i}"},
                    timeout=30,
                )
                if i < bad:
                    assert (
                        session.post(url + V2, data=b"{oops", headers={"content-type": "application/json"}, timeout=30).status_code == 400
                    )
                return resp.status_code

        with ThreadPoolExecutor(8) as pool:
            assert set(pool.map(one, range(n))) == {200}
        base = {"model": MODEL, "version": "itest0123456"}
        for _ in range(4):  # any worker may answer /metrics: each must report both workers' counts
            after = _samples(url)
            ok = dict(base, protocol="v1", status_class="2xx")
            assert _value(after, "mlwf_inference_requests_total", **ok) - _value(before, "mlwf_inference_requests_total", **ok) == n
            err = dict(base, protocol="v2", code="400")
            assert _value(after, "mlwf_inference_errors_total", **err) - _value(before, "mlwf_inference_errors_total", **err) == bad
            assert _value(after, "mlwf_inference_rows_total", **base) - _value(before, "mlwf_inference_rows_total", **base) == n
            assert (
                _value(after, "request_predict_seconds_count", model_name=MODEL)
                - _value(before, "request_predict_seconds_count", model_name=MODEL)
                == n
            )
    finally:
        code = _stop(process)
    assert code == 0, log_path.read_text()[-2000:]
    writers = {p.name.split("-")[0] for p in log_root.rglob("*.jsonl")}
    assert len(writers) == 2, f"both workers should have answered and logged, got log files of {writers}"
    frame = _logged(log_root, since)
    mine = frame[frame["request_id"].str.startswith("w-")]
    assert len(mine) == n and mine["request_id"].nunique() == n, "every request logged once, none lost or doubled"


def test_a_worker_that_cannot_load_the_bundle_stops_the_server_instead_of_restarting_forever(served: Served, tmp_path: Path) -> None:
    """--workers 2: a worker that dies is replaced; a replacement that cannot load the bundle (here: the file was
    corrupted on disk after start-up) would fail the same way forever, so the server stops, saying why."""
    import shutil

    bundle = tmp_path / "bundle"
    shutil.copytree(served.bundle_dir, bundle)
    log_path = tmp_path / "workers.log"
    process, url, _ = _start(bundle, served.state, tmp_path / "logs", log_path, "--workers", "2", "--entity_lookup", "off")
    try:
        _wait_ready(process, url, log_path)
        deadline = time.monotonic() + 120
        while log_path.read_text().count("Application startup complete") < 2:
            assert time.monotonic() < deadline and process.poll() is None, log_path.read_text()[-2000:]
            time.sleep(0.2)
        workers = [int(m) for m in __import__("re").findall(r'"message": "worker started", "pid": (\d+)', log_path.read_text())]
        assert len(workers) == 2, log_path.read_text()[-2000:]
        program = bundle / "model.pt2"
        program.write_bytes(program.read_bytes()[:-16] + b"\0" * 16)  # same size, different digest
        os.kill(workers[0], signal.SIGKILL)
        code = process.wait(240)
    finally:
        if process.poll() is None:
            _stop(process)
    text = log_path.read_text()
    assert code != 0 and "a worker could not load the model bundle" in text, text[-3000:]
    assert text.count('"message": "worker started"') <= 3, "the failing worker was restarted more than once"


def test_sigterm_stops_the_server_cleanly_with_its_last_requests_logged(served: Served) -> None:
    """Runs last: it stops the module's server."""
    since = datetime.now(UTC) - timedelta(seconds=1)
    row = v1_row(served, served.offline.index[7])
    resp = served.post(V1, {"instances": [row, row]}, headers={"content-type": "application/json", "x-request-id": "at-exit"})
    assert resp.status_code == 200
    assert _stop(served.process) == 0
    frame = _logged(served.log_root, since)
    assert frame[frame["request_id"] == "at-exit"].shape[0] == 2
