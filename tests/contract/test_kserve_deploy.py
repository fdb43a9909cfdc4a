"""Contract tests of the cluster deploy: the exact requests it sends to a Kubernetes API server (an HTTP stub
that validates against the InferenceService CRD and plays back KServe's status transitions), with a real
bundle uploaded to S3 (moto's server on 127.0.0.1)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components import bundle as bundle_lib
from components import kserve_deploy, storage
from components.deploy import DeployError
from components.kserve_deploy import deploy_cluster
from components.settings import get_settings
from tests.k8s_stub import KubeStub

NS, NAME, MODEL = "mlwf", "fraud-model", "Fraud Model"
ISVC_PATH = f"/apis/serving.kserve.io/v1beta1/namespaces/{NS}/inferenceservices"
STORE = "s3://mlwf/models"
FAST = {"timeout_s": 5.0, "poll_s": 0.01}


def uri(version: str) -> str:
    return f"{STORE}/{NAME}/v{version}/"


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    from components.train import TrainParams, build_bundle, train_model

    rng = np.random.default_rng(3)
    n = 240
    x1, x2 = rng.normal(size=n), rng.lognormal(size=n)
    colour = rng.choice(["red", "green", "blue"], n)
    label = (rng.random(n) < 1 / (1 + np.exp(-(2 * x1 + (colour == "red") - 0.5)))).astype(int)
    frame = pd.DataFrame({"event_timestamp": pd.date_range("2026-01-01", periods=n, freq="h", tz="UTC"),
                          "x1": x1, "x2": x2, "colour": colour, "label": label})
    program, vocab, result = train_model(frame, ["x1", "x2"], ["colour"], TrainParams(epochs=2, seed=0, patience=1))
    directory = tmp_path_factory.mktemp("bundle") / "bundle"
    build_bundle(directory, program, vocab, result, frame, ["x1", "x2"], ["colour"], {"dataset": "synthetic"}, "# test\n")
    return str(directory)


@pytest.fixture(scope="module")
def moto_endpoint() -> str:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    for var, value in {"AWS_ENDPOINT_URL": moto_endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "MLWF_MODEL_STORE": STORE}.items():
        monkeypatch.setenv(var, value)
    client = storage.s3_client()
    bucket = "mlwf"
    if any(b["Name"] == bucket for b in client.list_buckets()["Buckets"]):  # a fresh store for every test
        for obj in client.list_objects_v2(Bucket=bucket).get("Contents", []):
            client.delete_object(Bucket=bucket, Key=obj["Key"])
    else:
        client.create_bucket(Bucket=bucket)
    return moto_endpoint


@pytest.fixture
def cluster(s3: str, monkeypatch: pytest.MonkeyPatch):
    """make(mode=..., **stub switches) -> (stub, settings, api_client); every stub is checked for rejections."""
    from kubernetes import client

    stubs: list[KubeStub] = []

    def make(mode: str = "knative", **switches):
        stub = KubeStub(mode=mode, **switches).start()
        stubs.append(stub)
        monkeypatch.setenv("MLWF_PROFILE", "cluster")
        settings = dataclasses.replace(get_settings(), kserve_namespace=NS, kserve_mode=mode,
                                       kserve_service_account="mlwf-model-server", canary_percent=10)
        return stub, settings, client.ApiClient(client.Configuration(host=stub.url))

    yield make
    for stub in stubs:
        stub.stop()
        assert not stub.rejections, f"the stub rejected requests: {stub.rejections}"


def expected_predictor(bundle_dir: str, version: str) -> dict:
    return {
        "annotations": {"mlwf.io/model-version": version, "mlwf.io/bundle-sha256": bundle_lib.bundle_digest(bundle_dir)},
        "serviceAccountName": "mlwf-model-server",
        "model": {
            "name": "kserve-container",
            "modelFormat": {"name": "mlwf-bundle", "version": "1"},
            "runtime": "mlwf-bundle-runtime",
            "storageUri": uri(version),
            "resources": {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}},
        },
    }


def deploy(stub_env, bundle_dir: str, version: str, **kwargs):
    _, settings, api_client = stub_env
    return deploy_cluster(bundle_dir, MODEL, version, settings, api_client=api_client, **{**FAST, **kwargs})


def test_first_deploy_creates_the_inference_service(cluster, bundle_dir):
    env = cluster()
    stub = env[0]
    out = deploy(env, bundle_dir, "1")

    assert out["action"] == "created" and out["isvc"] == NAME
    assert out["url"] == f"http://{NAME}.{NS}.example.com"
    assert out["predict_url"] == f"http://{NAME}.{NS}.example.com/v1/models/{NAME}:predict"
    # 404, create, then polls until the controller has observed generation 1 and reports Ready.
    assert [(r.method, r.path, r.status) for r in stub.requests] == [
        ("GET", f"{ISVC_PATH}/{NAME}", 404), ("POST", ISVC_PATH, 201),
        ("GET", f"{ISVC_PATH}/{NAME}", 200), ("GET", f"{ISVC_PATH}/{NAME}", 200)]
    post = stub.calls("POST")[0]
    assert post.content_type == "application/json"
    assert post.body == {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": NAME, "namespace": NS, "labels": {"app.kubernetes.io/part-of": "mlwf"}},
        "spec": {"predictor": expected_predictor(bundle_dir, "1")},
    }
    # The bundle is in the model store, byte for byte.
    assert storage.read_bytes(uri("1") + "manifest.json") == (Path(bundle_dir) / "manifest.json").read_bytes()
    assert storage.exists(uri("1") + "model.pt2")


def test_redeploying_the_same_version_changes_nothing(cluster, bundle_dir, monkeypatch):
    uploads = []
    real_upload = storage.upload_dir
    monkeypatch.setattr(storage, "upload_dir", lambda *a: (uploads.append(a), real_upload(*a)))
    env = cluster()
    stub = env[0]
    deploy(env, bundle_dir, "1")
    stub.requests.clear()

    out = deploy(env, bundle_dir, "1")

    assert out["action"] == "unchanged"
    assert [r.method for r in stub.requests] == ["GET", "GET"]  # decide, then confirm it is ready
    assert len(uploads) == 1  # the manifest already in the store with the same bytes: no second upload


def test_new_version_in_knative_mode_canaries_then_promotes(cluster, bundle_dir):
    env = cluster("knative")
    stub = env[0]
    deploy(env, bundle_dir, "1")
    stub.requests.clear()

    out = deploy(env, bundle_dir, "2")

    assert out["action"] == "canary-promoted"
    patches = stub.calls("PATCH")
    assert [p.content_type for p in patches] == ["application/merge-patch+json"] * 2
    assert patches[0].body == {"spec": {"predictor": {
        "canaryTrafficPercent": 10,
        "annotations": {"mlwf.io/model-version": "2", "mlwf.io/bundle-sha256": bundle_lib.bundle_digest(bundle_dir)},
        "model": {"storageUri": uri("2")}}}}
    # Promotion removes the field with an explicit JSON null, on the wire.
    assert patches[1].raw == b'{"spec": {"predictor": {"canaryTrafficPercent": null}}}'
    # It promoted only after the canary revision was ready and took its share of traffic.
    assert [r.method for r in stub.requests] == ["GET", "PATCH", "GET", "GET", "PATCH", "GET", "GET"]
    final = stub.get(NAME, NS)
    assert "canaryTrafficPercent" not in final["spec"]["predictor"]
    assert final["spec"]["predictor"]["model"]["storageUri"] == uri("2")
    assert final["status"]["components"]["predictor"]["traffic"] == [
        {"latestRevision": True, "revisionName": f"{NAME}-predictor-00002", "percent": 100}]


def test_canary_never_ready_is_rolled_back(cluster, bundle_dir):
    env = cluster("knative", canary_never_ready=True)
    stub = env[0]
    deploy(env, bundle_dir, "1")
    stub.requests.clear()

    with pytest.raises(DeployError, match=r"canary v2 .* not ready after 0.3s: canary revision .*00002 not ready.*rolled back"):
        deploy(env, bundle_dir, "2", timeout_s=0.3)

    patches = stub.calls("PATCH")
    assert len(patches) == 2
    assert patches[1].body == {"spec": {"predictor": {
        "canaryTrafficPercent": 0,
        "annotations": {"mlwf.io/model-version": "1", "mlwf.io/bundle-sha256": bundle_lib.bundle_digest(bundle_dir)},
        "model": {"storageUri": uri("1")}}}}
    # Knative kept Ready=True throughout; the deploy was not fooled by it.
    traffic = stub.get(NAME, NS)["status"]["components"]["predictor"]["traffic"]
    assert [t["percent"] for t in traffic if t["revisionName"].endswith("00002")] == []


def test_failing_canary_is_rolled_back_with_the_reason(cluster, bundle_dir):
    env = cluster("knative", canary_fails=True)
    deploy(env, bundle_dir, "1")

    with pytest.raises(DeployError, match="ModelLoadFailed bundle failed its sha256 check; rolled back"):
        deploy(env, bundle_dir, "2", timeout_s=30)  # fails on the reported failure, not on the deadline

    assert env[0].calls("PATCH")[-1].body["spec"]["predictor"]["canaryTrafficPercent"] == 0


@pytest.mark.parametrize("method", ["POST", "PATCH"])
def test_a_conflict_is_re_read_and_retried(cluster, bundle_dir, method):
    env = cluster("knative", conflict_once=method)
    stub = env[0]
    deploy(env, bundle_dir, "1")
    out = deploy(env, bundle_dir, "2")

    assert out["action"] == "canary-promoted"
    first, retry = stub.calls(method)[:2]
    assert (first.status, retry.status) == (409, 201 if method == "POST" else 200)
    assert first.body == retry.body
    # Between the conflict and the retry the object was read again.
    assert stub.requests[stub.requests.index(first) + 1].method == "GET"


def test_standard_mode_uses_spec_canary_then_promotes(cluster, bundle_dir):
    env = cluster("standard")
    stub = env[0]
    deploy(env, bundle_dir, "1")
    stub.requests.clear()

    out = deploy(env, bundle_dir, "2")

    assert out["action"] == "canary-promoted"
    canary, promote = stub.calls("PATCH")
    assert canary.body == {"spec": {"canary": [{"trafficPercent": 10, "predictor": expected_predictor(bundle_dir, "2")}]}}
    assert "canaryTrafficPercent" not in json.dumps(canary.body)  # ignored in Standard mode
    assert promote.body == {"spec": {"predictor": expected_predictor(bundle_dir, "2"), "canary": None}}
    final = stub.get(NAME, NS)
    assert "canary" not in final["spec"] and "canaryStatuses" not in final["status"]
    assert final["spec"]["predictor"]["model"]["storageUri"] == uri("2")


def test_standard_mode_canary_never_ready_removes_the_canary(cluster, bundle_dir):
    env = cluster("standard", canary_never_ready=True)
    stub = env[0]
    deploy(env, bundle_dir, "1")

    with pytest.raises(DeployError, match="CanaryPredictorReady is not True; rolled back"):
        deploy(env, bundle_dir, "2", timeout_s=0.3)

    assert stub.calls("PATCH")[-1].body == {"spec": {"canary": None}}
    final = stub.get(NAME, NS)
    assert "canary" not in final["spec"] and final["spec"]["predictor"]["model"]["storageUri"] == uri("1")


def test_a_different_bundle_under_an_existing_version_is_refused(cluster, bundle_dir, tmp_path):
    env = cluster()
    deploy(env, bundle_dir, "1")
    other = tmp_path / "other"
    other.mkdir()
    for name in bundle_lib.BUNDLE_FILES:
        (other / name).write_bytes((Path(bundle_dir) / name).read_bytes())
    (other / bundle_lib.CARD).write_text("# a different model\n")
    bundle_lib.write_manifest(other)

    with pytest.raises(DeployError, match="already holds a different bundle"):
        deploy(env, str(other), "1")


def test_without_credentials_the_error_names_both_sources(s3, bundle_dir, monkeypatch, tmp_path):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    # The client reads $KUBECONFIG once, at import: point its module default at a file that does not exist.
    monkeypatch.setattr("kubernetes.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION", str(tmp_path / "missing-kubeconfig"))
    settings = dataclasses.replace(get_settings(), kserve_namespace=NS)

    with pytest.raises(DeployError, match=r"in-cluster config failed .* and kubeconfig failed"):
        deploy_cluster(bundle_dir, MODEL, "1", settings)
    assert not storage.exists(uri("1") + "manifest.json")  # nothing uploaded without a cluster to serve it


def test_plan_resumes_an_interrupted_canary():
    predictor = {"model": {"storageUri": uri("2")}}
    assert kserve_deploy.plan(None, uri("2")) == "create"
    assert kserve_deploy.plan({"spec": {"predictor": predictor}}, uri("2")) == "unchanged"
    assert kserve_deploy.plan({"spec": {"predictor": {**predictor, "canaryTrafficPercent": 10}}}, uri("2")) == "canary"
    assert kserve_deploy.plan({"spec": {"predictor": predictor, "canary": [{}]}}, uri("2")) == "canary"
    assert kserve_deploy.plan({"spec": {"predictor": predictor}}, uri("3")) == "canary"


def test_the_stub_rejects_what_a_strict_api_server_would(cluster):
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    stub, _, api_client = cluster()
    api = client.CustomObjectsApi(api_client)
    misspelt = {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService", "metadata": {"name": "x"},
                "spec": {"predictor": {"canaryTraficPercent": 10}}}
    with pytest.raises(ApiException) as err:
        api.create_namespaced_custom_object("serving.kserve.io", "v1beta1", NS, "inferenceservices", misspelt)
    assert err.value.status == 422 and "canaryTraficPercent" in err.value.body
    with pytest.raises(ApiException) as err:
        api.list_namespaced_custom_object("serving.kserve.io", "v1beta1", NS, "trainedmodels")
    assert err.value.status == 404
    assert len(stub.rejections) == 2
    stub.rejections.clear()  # expected here; the fixture fails a test on any other rejection
