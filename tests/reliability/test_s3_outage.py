"""Fault: the S3 endpoint answers 503 in the middle of an upload, once or for good.

Real S3 (moto's server on 127.0.0.1) behind a relay that fails chosen PUTs with 503 before they reach it.
Expected: a passing 503 is retried (botocore standard retries: 5 after the first try, storage.s3_client) and the
upload completes; an endpoint that stays down fails the step with an error naming the status and the object,
after exactly the configured attempts. Proof that nothing was lost: the bucket is listed and every object that
an InferenceService or a registered model version points at exists, with the sha256 its manifest records.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest

from components.core import bundle as bundle_lib
from components.core import storage
from components.core.paths import service_name
from components.core.settings import get_settings
from components.deployment.kserve import deploy_cluster
from tests.k8s_stub import KubeStub
from tests.reliability.conftest import synthetic_frame, use_s3
from tests.reliability.faulty_http import FaultyRelay

pytestmark = pytest.mark.integration
BUCKET, MODEL = "mlwf", "Outage Model"
STORE = f"s3://{BUCKET}/models"
MAX_RETRIES = 5  # storage.s3_client: botocore retries={"max_attempts": 5} counts retries after the first try


@pytest.fixture
def relay(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch):
    """S3 through the relay, with an empty bucket; faults are set per test on relay.fault."""
    proxy = FaultyRelay(moto_endpoint).start()
    use_s3(monkeypatch, proxy.url)
    monkeypatch.setenv("MLWF_MODEL_STORE", STORE)
    client = storage.s3_client()
    if any(b["Name"] == BUCKET for b in client.list_buckets()["Buckets"]):
        for obj in client.list_objects_v2(Bucket=BUCKET).get("Contents", []):
            client.delete_object(Bucket=BUCKET, Key=obj["Key"])
    else:
        client.create_bucket(Bucket=BUCKET)
    proxy.reset()
    yield proxy
    proxy.stop()


def bucket_keys() -> set[str]:
    pages = storage.s3_client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
    return {obj["Key"] for page in pages for obj in page.get("Contents", [])}


def assert_bundle_whole(prefix_uri: str) -> None:
    """Every file the manifest under `prefix_uri` lists is in the bucket with that sha256."""
    manifest = json.loads(storage.read_bytes(storage.join(prefix_uri, bundle_lib.MANIFEST)))["sha256"]
    bucket, prefix = prefix_uri.removeprefix("s3://").split("/", 1)
    keys = bucket_keys()
    for name, digest in manifest.items():
        key = f"{prefix.rstrip('/')}/{name}"
        assert key in keys, f"{prefix_uri} points at a missing object {key}"
        assert hashlib.sha256(storage.read_bytes(f"s3://{bucket}/{key}")).hexdigest() == digest, key


def cluster_settings(stub: KubeStub):
    return dataclasses.replace(get_settings(), kserve_namespace="mlwf", kserve_mode="knative", kserve_service_account="mlwf-model-server")


def test_a_503_in_the_middle_of_a_bundle_upload_is_retried_and_the_bundle_arrives_whole(relay, small_bundle, state_dir):
    """Fault: the 2nd and 4th PUT of the bundle upload get 503. Behaviour: each is retried with backoff and the
    deploy creates its InferenceService. Proof nothing was lost: the storageUri it names holds every file its
    manifest lists, byte for byte."""
    from kubernetes import client

    relay.fault = lambda method, path, n: 503 if method == "PUT" and n in (2, 4) else None
    with KubeStub(mode="knative") as stub:
        out = deploy_cluster(
            small_bundle,
            MODEL,
            "1",
            cluster_settings(stub),
            api_client=client.ApiClient(client.Configuration(host=stub.url)),
            timeout_s=5,
            poll_s=0.01,
        )
        posted = stub.calls("POST")
    assert out["action"] == "created"
    assert relay.count("PUT", 503) == 2 and relay.count("PUT", 200) == len(bundle_lib.BUNDLE_FILES) + 1
    storage_uri = posted[0].body["spec"]["predictor"]["model"]["storageUri"]
    assert storage_uri == f"{STORE}/{service_name(MODEL)}/v1/"
    assert_bundle_whole(storage_uri)


def test_an_endpoint_that_stays_down_fails_clearly_and_nothing_points_at_the_half_upload(relay, small_bundle, state_dir):
    """Fault: after the first object, every PUT gets 503. Behaviour: the deploy fails with an error naming the
    503 and the object, after exactly 1 + MAX_RETRIES tries, before any InferenceService exists. Proof nothing was
    lost: the half-uploaded prefix has no manifest (so nothing can take it for a bundle); once the endpoint is
    back a rerun completes it and the InferenceService points at a whole bundle."""
    from kubernetes import client

    relay.fault = lambda method, path, n: 503 if method == "PUT" and n >= 2 else None
    with KubeStub(mode="knative") as stub:
        api_client = client.ApiClient(client.Configuration(host=stub.url))
        with pytest.raises(Exception) as err:
            deploy_cluster(small_bundle, MODEL, "1", cluster_settings(stub), api_client=api_client, timeout_s=5, poll_s=0.01)
        message = str(err.value)
        assert "ServiceUnavailable" in message and f"reached max retries: {MAX_RETRIES}" in message, message
        assert f"{BUCKET}/models/{service_name(MODEL)}/v1/" in message, message  # names the object
        failed_path = next(p for m, p, s in relay.seen if m == "PUT" and s == 503)
        assert sum(1 for m, p, _ in relay.seen if m == "PUT" and p == failed_path) == 1 + MAX_RETRIES
        assert stub.calls("POST") == [] and stub.calls("PATCH") == []  # no InferenceService was created
        prefix = f"models/{service_name(MODEL)}/v1/"
        landed = {k for k in bucket_keys() if k.startswith(prefix)}
        assert landed and f"{prefix}{bundle_lib.MANIFEST}" not in landed  # a partial upload, never sealed

        relay.fault = lambda method, path, n: None  # the endpoint is back
        out = deploy_cluster(small_bundle, MODEL, "1", cluster_settings(stub), api_client=api_client, timeout_s=5, poll_s=0.01)
        assert out["action"] == "created"
        assert_bundle_whole(stub.calls("POST")[0].body["spec"]["predictor"]["model"]["storageUri"])


def test_mlflow_artifacts_on_s3_no_registered_version_points_at_a_missing_object(relay, state_dir, monkeypatch, tmp_path):
    """Fault: MLflow's artifact store is S3 and every PUT after the first gets 503 while the run logs its bundle.
    Behaviour: the training step fails and registers nothing. Proof nothing was lost: after the endpoint is back a
    rerun registers exactly one version, and every file of its bundle's manifest exists under its source."""
    from mlflow.tracking import MlflowClient

    from components.core.spec import parse_spec
    from components.training.run import run_training_step
    from components.training.train import TrainParams

    monkeypatch.setenv("MLWF_MLFLOW_ARTIFACT_ROOT", f"s3://{BUCKET}/mlflow")
    spec = parse_spec(
        {"name": "outage", "label": {"column": "label", "positive": 1}, "features": {"numeric": ["x1", "x2"], "categorical": ["colour"]}}
    )
    frame = synthetic_frame(1500, 1).assign(row_id=lambda f: [f"r{i}" for i in range(len(f))])
    train_path = tmp_path / "train.parquet"
    frame.to_parquet(train_path)

    relay.fault = lambda method, path, n: 503 if method == "PUT" and n >= 2 else None
    with pytest.raises(Exception) as err:
        run_training_step(spec, str(train_path), str(tmp_path / "m1"), TrainParams(epochs=2), "outage_v1", "fp")
    assert "ServiceUnavailable" in str(err.value), str(err.value)
    assert not (tmp_path / "m1").exists()
    registry = MlflowClient(tracking_uri=get_settings().mlflow_tracking_uri)
    assert registry.search_model_versions("name = 'outage_classifier'") == []

    relay.fault = lambda method, path, n: None
    out = run_training_step(spec, str(train_path), str(tmp_path / "m2"), TrainParams(epochs=2), "outage_v1", "fp")
    versions = registry.search_model_versions("name = 'outage_classifier'")
    assert [str(v.version) for v in versions] == [out["version"]] == ["1"]
    for version in versions:
        assert version.source.startswith(f"s3://{BUCKET}/mlflow/"), version.source
        assert_bundle_whole(version.source)
    assert bundle_lib.bundle_digest(Path(tmp_path / "m2")) == out["bundle_sha256"]
