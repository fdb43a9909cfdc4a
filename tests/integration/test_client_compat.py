"""The clients people already use, against `python -m serving` on 127.0.0.1: KServe's InferenceRESTClient and
InferenceGRPCClient (kserve 0.21.0) and Triton's tritonclient.http and tritonclient.grpc (pinned in the dev extra).

Each client checks the server's liveness, readiness and metadata, the model's readiness and metadata, infers
with JSON tensors and with binary ones (the binary tensor data extension on REST, raw contents on gRPC), and
sends a malformed request that must surface as that client's own error carrying the server's message. Every
answer must equal the bundle's own `predict_proba` on the same rows (one of them with a missing value).

KServe's two clients have no metadata call in 0.21: their own HTTP session (REST) and stub (gRPC) read it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.factories import free_port, transactions_frame

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
MODEL = "compat"
VERSION = "compat012345"
ROWS = 16


@dataclass
class Served:
    http: str  # host:port
    grpc: str
    rows: list[dict[str, Any]]
    numeric: list[str]
    categorical: list[str]
    want: np.ndarray  # the bundle's own predict_proba on `rows`
    threshold: float

    @property
    def url(self) -> str:
        return f"http://{self.http}"

    def column(self, name: str, start: int = 0) -> np.ndarray:
        values = [r[name] for r in self.rows[start:]]
        if name in self.numeric:
            return np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)
        return np.asarray([str(v).encode() for v in values], dtype=np.object_)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from components.core import bundle as bundle_lib
    from components.core.spec import load_spec
    from components.deployment.processes import wait_ready
    from components.training.train import TrainParams, build_bundle, train_model

    tmp = tmp_path_factory.mktemp("compat")
    spec = load_spec("transactions")
    frame, numeric, categorical = transactions_frame(2000, seed=7)
    program, vocab, result = train_model(frame, numeric, categorical, TrainParams(epochs=2, seed=3))
    bundle_dir = tmp / "bundle"
    lineage = {"dataset": spec.name, "model_name": MODEL, "inputs_fingerprint": VERSION + "xyz"}  # no feature service
    build_bundle(bundle_dir, program, vocab, result, frame, numeric, categorical, lineage, "compat bundle\n")
    bundle = bundle_lib.load(bundle_dir)
    rows = frame[numeric + categorical].head(ROWS).to_dict("records")
    rows[0][numeric[0]] = None  # a missing value: null in JSON, NaN in tensors
    want = bundle.predict_proba({f: [r[f] for r in rows] for f in numeric + categorical})

    port, grpc_port = free_port(), free_port()
    log_path = tmp / "server.log"
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
        "--grpc_port",
        str(grpc_port),
        "--bind_host",
        "127.0.0.1",
        "--request_log_root",
        "off",
        "--entity_lookup",
        "off",
    ]
    env = {**os.environ, "MLWF_STATE_DIR": str(tmp / "state")}
    with open(log_path, "wb") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    try:
        wait_ready(f"http://127.0.0.1:{port}", MODEL, process, log_path, timeout=180)
        yield Served(f"127.0.0.1:{port}", f"127.0.0.1:{grpc_port}", rows, numeric, categorical, want, bundle.threshold)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def _check(s: Served, probabilities: Any, labels: Any, start: int = 0) -> None:
    want = s.want[start:]
    np.testing.assert_allclose(np.asarray(probabilities, dtype=np.float64).reshape(-1), want, rtol=1e-5, atol=1e-6)
    assert np.asarray(labels).reshape(-1).tolist() == [int(p >= s.threshold) for p in want]


def _check_metadata(s: Served, model: dict[str, Any]) -> None:
    assert model["name"] == MODEL and model["versions"] == [VERSION]
    inputs = {t["name"]: t["datatype"] for t in model["inputs"]}
    assert inputs == {**{n: "FP64" for n in s.numeric}, **{c: "BYTES" for c in s.categorical}}
    assert [o["name"] for o in model["outputs"]] == ["probability", "label"]


# ---------------------------------------------------------------- KServe


def _kserve_request(s: Served, binary: bool, **kwargs: Any) -> Any:
    from kserve import InferInput, InferRequest

    inputs = []
    for name in s.numeric + s.categorical:
        tensor = InferInput(name, [ROWS], "FP64" if name in s.numeric else "BYTES")
        tensor.set_data_from_numpy(s.column(name), binary_data=binary)
        inputs.append(tensor)
    return InferRequest(MODEL, inputs, **kwargs)


def test_kserve_rest_client(served: Served) -> None:
    import httpx
    from kserve import InferenceRESTClient, RESTConfig
    from kserve.protocol.infer_type import RequestedOutput

    async def go() -> None:
        client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=30))
        try:
            assert await client.is_server_live(served.url) and await client.is_server_ready(served.url)
            assert await client.is_model_ready(served.url, MODEL)
            server_meta = (await client._client.get(f"{served.url}/v2")).json()
            assert server_meta["name"] and server_meta["version"]
            _check_metadata(served, (await client._client.get(f"{served.url}/v2/models/{MODEL}")).json())

            plain = await client.infer(served.url, _kserve_request(served, False, request_id="k-json"), model_name=MODEL)
            assert plain.id == "k-json"
            _check(served, plain.outputs[0].data, plain.outputs[1].data)
            headers: dict[str, str] = {}
            raw = await client.infer(
                served.url,
                _kserve_request(served, True, parameters={"binary_data_output": True}),
                model_name=MODEL,
                response_headers=headers,
            )
            assert int(headers["inference-header-content-length"]) < int(headers["content-length"])  # binary outputs
            _check(served, raw.get_output_by_name("probability").data, raw.get_output_by_name("label").data)
            one = await client.infer(
                served.url,
                _kserve_request(served, True, request_outputs=[RequestedOutput("probability", {"binary_data": True})]),
                model_name=MODEL,
            )
            assert [o.name for o in one.outputs] == ["probability"]
            np.testing.assert_allclose(one.outputs[0].data, served.want, rtol=1e-5, atol=1e-6)

            bad = _kserve_request(served, True)
            bad.inputs[0].shape = [ROWS + 1]  # the raw data holds ROWS values
            with pytest.raises(httpx.HTTPStatusError) as err:
                await client.infer(served.url, bad, model_name=MODEL)
            assert err.value.response.status_code == 400
            assert f"input '{served.numeric[0]}': binary data of {8 * ROWS} bytes is shorter than its shape" in str(err.value)
        finally:
            await client.close()

        v1 = InferenceRESTClient(RESTConfig(protocol="v1", timeout=30))
        try:
            rows = [dict(r) for r in served.rows]
            answer = await v1.infer(served.url, {"instances": rows}, model_name=MODEL)
            _check(served, [p["probability"] for p in answer["predictions"]], [p["label"] for p in answer["predictions"]])
        finally:
            await v1.close()

    asyncio.run(go())


def test_kserve_grpc_client(served: Served) -> None:
    import grpc
    from kserve import InferenceGRPCClient, InferInput
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

    async def go() -> None:
        client = InferenceGRPCClient(served.grpc, timeout=30)
        try:
            assert await client.is_server_live() and await client.is_server_ready() and await client.is_model_ready(MODEL)
            server_meta = await client._client_stub.ServerMetadata(pb.ServerMetadataRequest())
            assert server_meta.name and server_meta.version
            meta = await client._client_stub.ModelMetadata(pb.ModelMetadataRequest(name=MODEL))
            _check_metadata(
                served,
                {
                    "name": meta.name,
                    "versions": list(meta.versions),
                    "inputs": [{"name": t.name, "datatype": t.datatype} for t in meta.inputs],
                    "outputs": [{"name": t.name} for t in meta.outputs],
                },
            )

            typed = await client.infer(_kserve_request(served, False, request_id="g-typed"))
            assert typed.id == "g-typed"
            _check(served, typed.outputs[0].data, typed.outputs[1].data)
            raw = await client.infer(_kserve_request(served, True))  # raw_input_contents: raw outputs back
            _check(served, raw.get_output_by_name("probability").as_numpy(), raw.get_output_by_name("label").as_numpy())

            bad = _kserve_request(served, False)
            wrong = InferInput(served.numeric[0], [ROWS], "BYTES")
            wrong.set_data_from_numpy(np.asarray([b"12.5"] * ROWS, dtype=np.object_), binary_data=False)
            bad.inputs[0] = wrong
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await client.infer(bad)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert f"input '{served.numeric[0]}' must be a number type" in err.value.details()
        finally:
            await client.close()

    asyncio.run(go())


# ---------------------------------------------------------------- Triton


def _triton_inputs(module: Any, s: Served, binary: bool | None, start: int = 0) -> list[Any]:
    inputs = []
    for name in s.numeric + s.categorical:
        tensor = module.InferInput(name, [ROWS - start], "FP64" if name in s.numeric else "BYTES")
        if binary is None:  # tritonclient.grpc: always raw contents
            tensor.set_data_from_numpy(s.column(name, start))
        else:
            tensor.set_data_from_numpy(s.column(name, start), binary_data=binary)
        inputs.append(tensor)
    return inputs


def test_tritonclient_http(served: Served) -> None:
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    client = triton.InferenceServerClient(served.http, network_timeout=30)
    try:
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(MODEL)
        assert client.get_server_metadata()["name"]
        _check_metadata(served, client.get_model_metadata(MODEL))

        # JSON both ways: no Content-Type on the request (tritonclient sends none), JSON outputs asked for.
        # JSON has no NaN (tritonclient writes the literal, which is refused with a 400 naming it): rows 1.. only.
        outputs = [triton.InferRequestedOutput(n, binary_data=False) for n in ("probability", "label")]
        plain = client.infer(MODEL, _triton_inputs(triton, served, False, start=1), outputs=outputs, request_id="t-json")
        response = plain.get_response()
        assert response["id"] == "t-json" and "data" in response["outputs"][0]
        _check(served, plain.as_numpy("probability"), plain.as_numpy("label"), start=1)
        with pytest.raises(InferenceServerException) as err:
            client.infer(MODEL, _triton_inputs(triton, served, False))
        assert err.value.status() == "400" and "NaN and Infinity are not valid JSON" in err.value.message()
        # Binary both ways: raw inputs after the JSON header; no outputs named -> binary_data_output.
        raw = client.infer(MODEL, _triton_inputs(triton, served, True))
        assert all("binary_data_size" in o["parameters"] for o in raw.get_response()["outputs"])
        _check(served, raw.as_numpy("probability"), raw.as_numpy("label"))
        # Compressed requests, as tritonclient can send them.
        for algorithm in ("gzip", "deflate"):
            packed = client.infer(MODEL, _triton_inputs(triton, served, True), request_compression_algorithm=algorithm)
            _check(served, packed.as_numpy("probability"), packed.as_numpy("label"))

        bad = _triton_inputs(triton, served, True)
        bad[-1] = triton.InferInput(served.categorical[-1], [ROWS - 1], "BYTES")
        bad[-1].set_data_from_numpy(np.asarray([b"x"] * (ROWS - 1), dtype=np.object_))
        bad[-1].set_shape([ROWS])  # one element short of its shape
        with pytest.raises(InferenceServerException) as err:
            client.infer(MODEL, bad)
        assert err.value.status() == "400"
        assert (
            f"input '{served.categorical[-1]}' declares shape [{ROWS}] ({ROWS} elements) but its binary data "
            f"holds {ROWS - 1} BYTES elements"
        ) in err.value.message()
    finally:
        client.close()


def test_tritonclient_grpc(served: Served, tmp_path: Path) -> None:
    """In its own process: tritonclient.grpc and KServe's gRPC stubs both register the `inference.*` protobuf
    messages, and one process's descriptor pool refuses the second ('duplicate symbol')."""
    import json

    case = tmp_path / "case.json"
    case.write_text(json.dumps({**served.__dict__, "want": served.want.tolist()}))
    code = f"from tests.integration.test_client_compat import tritonclient_grpc_checks; tritonclient_grpc_checks({str(case)!r})"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.strip().endswith("tritonclient.grpc: all checks passed")


def tritonclient_grpc_checks(case_path: str) -> None:
    import json

    import tritonclient.grpc as triton
    from tritonclient.utils import InferenceServerException

    case = json.loads(Path(case_path).read_text())
    served = Served(**{**case, "want": np.asarray(case["want"])})
    client = triton.InferenceServerClient(served.grpc)
    try:
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(MODEL)
        assert client.get_server_metadata(as_json=True)["name"]
        _check_metadata(served, client.get_model_metadata(MODEL, as_json=True))

        raw = client.infer(MODEL, _triton_inputs(triton, served, None), request_id="tg-1")
        assert raw.get_response(as_json=True)["id"] == "tg-1"
        _check(served, raw.as_numpy("probability"), raw.as_numpy("label"))
        one = client.infer(MODEL, _triton_inputs(triton, served, None), outputs=[triton.InferRequestedOutput("label")])
        assert [o["name"] for o in one.get_response(as_json=True)["outputs"]] == ["label"]
        assert one.as_numpy("label").tolist() == [int(p >= served.threshold) for p in served.want]

        extra = triton.InferInput("colour", [ROWS], "BYTES")
        extra.set_data_from_numpy(np.asarray([b"red"] * ROWS, dtype=np.object_))
        try:
            client.infer(MODEL, [*_triton_inputs(triton, served, None), extra])
        except InferenceServerException as err:
            assert err.status() == "StatusCode.INVALID_ARGUMENT", err.status()
            assert "unknown input(s) ['colour']" in err.message(), err.message()
        else:
            raise AssertionError("an unknown input was accepted")
    finally:
        client.close()
    print("tritonclient.grpc: all checks passed")
