"""The explain verb for real: `python -m serving` on 127.0.0.1 serving a bundle trained here (with its recorded
background sample) and an older-style bundle without one.

V1 `:explain` and V2 `/explain` answer per-feature attributions that add up to the row's score minus the base
value (within ADDITIVITY_TOLERANCE) for the same score `:predict` returns; a malformed request gets the same 4xx as
`:predict`; the bundle without a background answers 501 naming the retraining, and still predicts.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from components.core.explain import ADDITIVITY_TOLERANCE
from tests.factories import free_port, transactions_frame

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
MODEL = "clf"
ROWS = 6


def _serve(bundle_dir: Path, log_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    from components.deployment.processes import wait_ready

    port, grpc_port = free_port(), free_port()
    cmd = [sys.executable, "-m", "serving", "--model_name", MODEL, "--model_dir", str(bundle_dir), "--http_port", str(port)]
    cmd += ["--grpc_port", str(grpc_port), "--bind_host", "127.0.0.1", "--request_log_root", "off"]
    with open(log_path, "ab") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, "MLWF_PROFILE": "local"})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, MODEL, process, log_path, timeout=120)
    except BaseException:
        process.kill()
        raise
    return process, url


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from components.core import bundle as bundle_lib
    from components.training.train import TrainParams, build_bundle, train_model

    tmp = tmp_path_factory.mktemp("explain")
    frame, numeric, categorical = transactions_frame(2000, seed=11)
    program, vocab, result = train_model(frame, numeric, categorical, TrainParams(epochs=2, seed=3))
    bundle_dir = tmp / "bundle"
    build_bundle(bundle_dir, program, vocab, result, frame, numeric, categorical, {"model_name": MODEL, "model_version": "7"}, "b\n")
    old_dir = tmp / "old"  # what a bundle written before the background sample looks like
    old_dir.mkdir()
    for name in bundle_lib.REQUIRED_FILES:
        (old_dir / name).write_bytes((bundle_dir / name).read_bytes())
    bundle_lib.write_manifest(old_dir)
    rows = frame[numeric + categorical].tail(ROWS).to_dict("records")
    rows[0][numeric[0]] = None  # a missing value: the program imputes it
    rows[1][categorical[0]] = "never-seen"  # an unseen category
    new, new_url = _serve(bundle_dir, tmp / "new.log")
    try:
        old, old_url = _serve(old_dir, tmp / "old.log")
        try:
            yield {"url": new_url, "old_url": old_url, "rows": rows, "numeric": numeric, "features": numeric + categorical}
        finally:
            _stop(old)
    finally:
        _stop(new)


def _post(url: str, body: Any = None, raw: bytes | None = None, content_type: str = "application/json") -> requests.Response:
    data = raw if raw is not None else json.dumps(body).encode()
    return requests.post(url, data=data, headers={"content-type": content_type}, timeout=60)


def _v2_inputs(s: dict[str, Any], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    numeric = set(s["numeric"])
    return [
        {"name": f, "shape": [len(rows)], "datatype": "FP64" if f in numeric else "BYTES", "data": [r[f] for r in rows]}
        for f in s["features"]
    ]


def test_v1_explain_adds_up_to_the_predicted_score_minus_the_base_value(servers: dict[str, Any]) -> None:
    url, rows, features = servers["url"], servers["rows"], servers["features"]
    predicted = _post(f"{url}/v1/models/{MODEL}:predict", {"instances": rows})
    explained = _post(f"{url}/v1/models/{MODEL}:explain", {"instances": rows})
    assert predicted.status_code == 200 and explained.status_code == 200, explained.text
    body = explained.json()
    assert body["features"] == features and body["model_version"] == "7" and body["additivity_tolerance"] == ADDITIVITY_TOLERANCE
    assert len(body["explanations"]) == ROWS
    for got, want in zip(body["explanations"], predicted.json()["predictions"]):
        assert list(got["attributions"]) == features
        assert abs(got["probability"] - want["probability"]) <= 1e-6 and got["label"] == want["label"]
        assert abs(sum(got["attributions"].values()) - (got["probability"] - body["base_value"])) <= ADDITIVITY_TOLERANCE
    assert any(abs(v) > 1e-4 for e in body["explanations"] for v in e["attributions"].values())  # not all zero
    again = _post(f"{url}/v1/models/{MODEL}:explain", {"instances": rows}).json()
    assert again["explanations"] == body["explanations"]  # the same row gets the same answer


def test_v2_explain_takes_infer_inputs_and_returns_attribution_tensors(servers: dict[str, Any]) -> None:
    url, rows, features = servers["url"], servers["rows"], servers["features"]
    v1 = _post(f"{url}/v1/models/{MODEL}:explain", {"instances": rows}).json()
    for path in (f"/v2/models/{MODEL}/explain", f"/v2/models/{MODEL}/versions/7/explain"):
        response = _post(url + path, {"id": "req-1", "inputs": _v2_inputs(servers, rows)})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["id"] == "req-1" and body["model_name"] == MODEL and body["parameters"]["features"] == features
        outputs = {o["name"]: o for o in body["outputs"]}
        assert outputs["attributions"]["shape"] == [ROWS, len(features)] and outputs["attributions"]["datatype"] == "FP64"
        attributions = np.asarray(outputs["attributions"]["data"]).reshape(ROWS, len(features))
        probability = np.asarray(outputs["probability"]["data"])
        (base,) = outputs["base_value"]["data"]
        np.testing.assert_allclose(attributions.sum(axis=1), probability - base, atol=ADDITIVITY_TOLERANCE)
        np.testing.assert_allclose(attributions, [[e["attributions"][f] for f in features] for e in v1["explanations"]], atol=1e-12)
    wrong = _post(f"{url}/v2/models/{MODEL}/versions/8/explain", {"inputs": _v2_inputs(servers, rows)})
    assert wrong.status_code == 404 and "no version '8'" in wrong.json()["error"]


def test_malformed_explain_requests_get_the_same_4xx_as_predict(servers: dict[str, Any]) -> None:
    url, rows = servers["url"], servers["rows"]
    unknown = [{**rows[0], "shoe_size": 42}]
    typed = [{**rows[0], servers["numeric"][0]: "lots"}]
    v2_unknown = {"inputs": [*_v2_inputs(servers, rows[:1]), {"name": "shoe_size", "shape": [1], "datatype": "FP64", "data": [1.0]}]}
    cases: list[tuple[str, str, dict[str, Any]]] = [
        ("v1", ":{}", {"body": {"instances": unknown}}),
        ("v1", ":{}", {"body": {"instances": typed}}),
        ("v1", ":{}", {"body": {"instances": []}}),
        ("v1", ":{}", {"body": {"rows": rows}}),
        ("v1", ":{}", {"raw": b'{"instances": [{"amount": NaN'}),
        ("v1", ":{}", {"body": {"instances": rows}, "content_type": "text/plain"}),
        ("v2", "/{}", {"body": v2_unknown}),
        ("v2", "/{}", {"body": {"inputs": "amount"}}),
    ]
    for protocol, verb, kwargs in cases:
        base = f"{url}/{protocol}/models/{MODEL}" + verb
        predicted = _post(base.format("predict" if protocol == "v1" else "infer"), **kwargs)
        explained = _post(base.format("explain"), **kwargs)
        assert 400 <= explained.status_code < 500, (kwargs, explained.text)
        assert (explained.status_code, explained.json()) == (predicted.status_code, predicted.json()), kwargs
    too_many = _post(f"{url}/v1/models/{MODEL}:explain", {"instances": rows * 20})
    assert too_many.status_code == 400 and "at most 100 rows" in too_many.json()["error"]
    got = requests.get(f"{url}/v1/models/{MODEL}:explain", timeout=10)
    assert got.status_code == 405
    assert _post(f"{url}/v1/models/{MODEL}:predict", {"instances": rows}).status_code == 200  # still serving


def test_a_bundle_without_background_answers_501_naming_the_retraining_and_still_predicts(servers: dict[str, Any]) -> None:
    url, rows = servers["old_url"], servers["rows"]
    for path, body in (
        (f"/v1/models/{MODEL}:explain", {"instances": rows}),
        (f"/v2/models/{MODEL}/explain", {"inputs": _v2_inputs(servers, rows)}),
    ):
        response = _post(url + path, body)
        assert response.status_code == 501, response.text
        message = response.json()["error"]
        assert "no background sample" in message and "Retrain the model" in message
    bad = _post(f"{url}/v1/models/{MODEL}:explain", {"instances": [{"shoe_size": 1}]})
    assert bad.status_code == 501  # the model cannot explain anything: said before judging the rows
    assert _post(f"{url}/v1/models/{MODEL}:predict", {"instances": rows}).status_code == 200
