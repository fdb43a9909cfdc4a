"""Contract tests of the cluster deploy: the exact requests it sends to a Kubernetes API server (an HTTP stub
that validates against the InferenceService CRD and plays back KServe's status transitions), with real
bundles uploaded to S3 (moto's server on 127.0.0.1), and the progressive canary's analysis: the exact PromQL it
sends to Prometheus (a stub that answers only the queries spelled out here) and the request logs in S3."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components.core import bundle as bundle_lib
from components.core import storage
from components.core.request_log import RequestLogWriter
from components.core.settings import get_settings
from components.deployment import kserve_resources
from components.deployment.kserve import deploy_cluster
from components.deployment.rollout import DeployError
from tests.k8s_stub import KubeStub, PrometheusStub

NS, NAME, MODEL = "mlwf", "fraud-model", "Fraud Model"
ISVC_PATH = f"/apis/serving.kserve.io/v1beta1/namespaces/{NS}/inferenceservices"
STORE = "s3://mlwf/models"
FAST = {"timeout_s": 5.0, "poll_s": 0.01}
STATE = "s3://mlwf/state"  # the request logs live under <state>/request_logs
WINDOW = 300  # MLWF_CANARY_STEP_SECONDS here: each analysis looks back 300 s


def promql(version: str) -> dict[str, str]:
    """The queries the analysis must send for one version, spelled out."""
    sel = f'namespace="mlwf",model="fraud-model",version="{version}"'
    return {
        "requests": f"sum(increase(mlwf_inference_requests_total{{{sel}}}[300s]))",
        "successes": f'sum(increase(mlwf_inference_requests_total{{{sel},status_class="2xx"}}[300s]))',
        "p99": f"histogram_quantile(0.99, sum by (le) (increase(mlwf_inference_latency_seconds_bucket{{{sel}}}[300s])))",
    }


# (requests, successes, p99 seconds) per version label over one window
HEALTHY = {"1": (900.0, 899.0, 0.004), "2": (100.0, 100.0, 0.005)}
ERRORS = {"1": (900.0, 899.0, 0.004), "2": (100.0, 61.0, 0.003)}  # 39% of the canary's answers are errors
SLOW = {"1": (900.0, 899.0, 0.004), "2": (100.0, 100.0, 0.400)}  # p99 400 ms against 4 ms


def uri(version: str) -> str:
    return f"{STORE}/{NAME}/v{version}/"


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Two real bundles; their lineage names the version, which the runtime uses as its `version` label."""
    from components.training.train import TrainParams, build_bundle, train_model

    rng = np.random.default_rng(3)
    n = 1000  # the latest rows of the validation period are held out to calibrate: enough of them for both classes
    x1, x2 = rng.normal(size=n), rng.lognormal(size=n)
    colour = rng.choice(["red", "green", "blue"], n)
    label = (rng.random(n) < 1 / (1 + np.exp(-(2 * x1 + (colour == "red") - 0.5)))).astype(int)
    frame = pd.DataFrame(
        {
            "event_timestamp": pd.date_range("2026-01-01", periods=n, freq="h", tz="UTC"),
            "x1": x1,
            "x2": x2,
            "colour": colour,
            "label": label,
        }
    )
    program, vocab, result = train_model(frame, ["x1", "x2"], ["colour"], TrainParams(epochs=2, seed=0, patience=1))
    out = {}
    for version in ("1", "2"):
        directory = tmp_path_factory.mktemp("bundle") / f"v{version}"
        build_bundle(
            directory,
            program,
            vocab,
            result,
            frame,
            ["x1", "x2"],
            ["colour"],
            {"dataset": "synthetic", "model_version": version},
            "# test\n",
        )
        out[version] = str(directory)
    return out


@pytest.fixture(scope="module")
def bundle_dir(bundles: dict[str, str]) -> str:
    return bundles["1"]


@pytest.fixture
def s3(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    for var, value in {
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "MLWF_MODEL_STORE": STORE,
    }.items():
        monkeypatch.setenv(var, value)
    client = storage.s3_client()
    bucket = "mlwf"
    if any(b["Name"] == bucket for b in client.list_buckets()["Buckets"]):  # a fresh store for every test
        for obj in client.list_objects_v2(Bucket=bucket).get("Contents", []):
            client.delete_object(Bucket=bucket, Key=obj["Key"])
    else:
        client.create_bucket(Bucket=bucket)
    return moto_endpoint


def write_request_logs(seed: int = 0) -> None:
    """What the two model servers would have logged in the last minutes: the same score distribution."""
    rng = np.random.default_rng(seed)
    for version, rows in (("1", 400), ("2", 200)):
        writer = RequestLogWriter(f"{STATE}/request_logs", NAME)
        probabilities = rng.beta(2, 8, rows)
        writer.log(
            [{"x1": 0.1, "x2": 1.0, "colour": "red"}] * rows, probabilities, (probabilities > 0.5).astype(int), version, f"req-{version}"
        )
        writer.flush()


@pytest.fixture
def cluster(s3: str, monkeypatch: pytest.MonkeyPatch):
    """make(mode=..., metrics=HEALTHY, **stub switches) -> (stub, settings, api_client, prometheus).

    Every stub is checked afterwards: no request rejected, no query unknown, and no verb outside the
    ServiceAccount's Role (get/list/watch/create/patch: never PUT or DELETE)."""
    from kubernetes import client

    stubs: list[KubeStub] = []
    proms: list[PrometheusStub] = []

    def make(mode: str = "knative", metrics: dict = HEALTHY, **switches):
        stub = KubeStub(mode=mode, **switches).start()
        stubs.append(stub)
        answers = {}
        for version, (total, ok, p99) in metrics.items():
            q = promql(version)
            answers |= {q["requests"]: total, q["successes"]: ok, q["p99"]: p99}
        prom = PrometheusStub(answers).start()
        proms.append(prom)
        write_request_logs()
        monkeypatch.setenv("MLWF_PROFILE", "cluster")
        settings = dataclasses.replace(
            get_settings(),
            kserve_namespace=NS,
            kserve_mode=mode,
            state_dir=STATE,
            kserve_service_account="mlwf-model-server",
            canary_steps=(10, 25, 50, 100),
            canary_step_seconds=WINDOW,
            canary_max_failed_analyses=2,
            prometheus_url=prom.url,
        )
        return stub, settings, client.ApiClient(client.Configuration(host=stub.url)), prom

    yield make
    for stub in stubs:
        stub.stop()
        assert not stub.rejections, f"the stub rejected requests: {stub.rejections}"
        assert {r.method for r in stub.requests} <= {"GET", "POST", "PATCH"}, "a verb the Role does not grant"
    for prom in proms:
        prom.stop()
        assert not prom.rejections, f"Prometheus was asked what the tests do not expect: {prom.rejections}"


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
    _, settings, api_client, _ = stub_env
    windows: list[float] = []  # the analysis windows are waited out through `sleep`: recorded, not slept
    return deploy_cluster(bundle_dir, MODEL, version, settings, api_client=api_client, sleep=windows.append, **{**FAST, **kwargs})


def percents(stub: KubeStub) -> list:
    """The canary's traffic share in each PATCH, in order (None: the field removed, i.e. promoted)."""
    out = []
    for patch in stub.calls("PATCH"):
        spec = patch.body["spec"]
        if "canary" in spec:
            out.append(spec["canary"][0]["trafficPercent"] if spec["canary"] else None)
        else:
            out.append(spec["predictor"].get("canaryTrafficPercent"))
    return out


def test_first_deploy_creates_the_inference_service(cluster, bundle_dir):
    env = cluster()
    stub = env[0]
    out = deploy(env, bundle_dir, "1")

    assert out["action"] == "created" and out["isvc"] == NAME
    assert out["url"] == f"http://{NAME}.{NS}.example.com"
    assert out["predict_url"] == f"http://{NAME}.{NS}.example.com/v1/models/{NAME}:predict"
    # 404, create, then polls until the controller has observed generation 1 and reports Ready.
    assert [(r.method, r.path, r.status) for r in stub.requests] == [
        ("GET", f"{ISVC_PATH}/{NAME}", 404),
        ("POST", ISVC_PATH, 201),
        ("GET", f"{ISVC_PATH}/{NAME}", 200),
        ("GET", f"{ISVC_PATH}/{NAME}", 200),
    ]
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


def stable_note(bundles: dict[str, str], version: str) -> str:
    return json.dumps(
        {
            "annotations": {"mlwf.io/bundle-sha256": bundle_lib.bundle_digest(bundles[version]), "mlwf.io/model-version": version},
            "storageUri": uri(version),
        },
        sort_keys=True,
    )


def test_new_version_in_knative_mode_goes_through_every_step_then_promotes(cluster, bundles):
    env = cluster("knative")
    stub, prom = env[0], env[3]
    deploy(env, bundles["1"], "1")
    stub.requests.clear()

    out = deploy(env, bundles["2"], "2")

    assert out["action"] == "canary-promoted"
    assert percents(stub) == [10, 25, 50, 100, None]
    patches = stub.calls("PATCH")
    assert {p.content_type for p in patches} == {"application/merge-patch+json"}
    assert patches[0].body == {
        "metadata": {"annotations": {"mlwf.io/stable-predictor": stable_note(bundles, "1")}},
        "spec": {
            "predictor": {
                "canaryTrafficPercent": 10,
                "annotations": {"mlwf.io/model-version": "2", "mlwf.io/bundle-sha256": bundle_lib.bundle_digest(bundles["2"])},
                "model": {"storageUri": uri("2")},
            }
        },
    }
    # Promotion removes the field with an explicit JSON null, on the wire.
    assert patches[-1].raw == b'{"spec": {"predictor": {"canaryTrafficPercent": null}}}'
    # Each step: patch, then poll until the controller serves that split, then the analysis; promote after 100%.
    assert [r.method for r in stub.requests] == ["GET"] + ["PATCH", "GET", "GET"] * 5
    # One analysis per step, each querying both versions: requests, successes, p99.
    assert prom.queries == [q for _ in range(4) for v in ("1", "2") for q in promql(v).values()]
    assert "100%: PASS" in out["rollout"]
    final = stub.get(NAME, NS)
    assert "canaryTrafficPercent" not in final["spec"]["predictor"]
    assert final["spec"]["predictor"]["model"]["storageUri"] == uri("2")
    assert final["status"]["components"]["predictor"]["traffic"] == [
        {"latestRevision": True, "revisionName": f"{NAME}-predictor-00002", "percent": 100}
    ]


@pytest.mark.parametrize(
    ("metrics", "check"),
    [
        (ERRORS, r"success_rate fail: canary 0\.610 \(39/100 failed\) vs stable 0\.999"),
        (SLOW, r"p99_latency fail: canary 400\.0 ms vs stable 4\.0 ms, limit 31\.0 ms"),
    ],
)
def test_a_canary_that_fails_its_analysis_twice_is_rolled_back(cluster, bundles, metrics, check):
    env = cluster("knative", metrics=metrics)
    stub = env[0]
    deploy(env, bundles["1"], "1")
    stub.requests.clear()

    with pytest.raises(DeployError, match=r"canary v2 of mlwf/fraud-model rolled back: 2 failed analyses \(limit 2\)") as err:
        deploy(env, bundles["2"], "2")

    message = str(err.value)
    assert len(__import__("re").findall(r"\[10%\] " + check, message)) == 2  # every failed check is named
    assert "champion" not in message
    assert percents(stub) == [10, 0]  # never past the first step
    assert stub.calls("PATCH")[-1].body == {
        "spec": {
            "predictor": {
                "canaryTrafficPercent": 0,
                "annotations": {"mlwf.io/model-version": "1", "mlwf.io/bundle-sha256": bundle_lib.bundle_digest(bundles["1"])},
                "model": {"storageUri": uri("1")},
            }
        }
    }


def test_predictions_that_shift_fail_the_psi_check(cluster, bundles):
    env = cluster("knative")
    deploy(env, bundles["1"], "1")
    writer = RequestLogWriter(f"{STATE}/request_logs", NAME)  # the canary scores everything near 1
    writer.log([{"x1": 0.0}] * 300, np.random.default_rng(1).beta(8, 2, 300), [1] * 300, "2", "shifted")
    writer.flush()

    with pytest.raises(DeployError, match=r"\[10%\] prediction_psi fail: PSI \d+\.\d+ between canary and stable"):
        deploy(env, bundles["2"], "2")


def test_canary_never_ready_is_rolled_back(cluster, bundles):
    env = cluster("knative", canary_never_ready=True)
    stub, prom = env[0], env[3]
    deploy(env, bundles["1"], "1")
    stub.requests.clear()

    with pytest.raises(
        DeployError,
        match=r"canary v2 .* rolled back: the canary did not take 10% of traffic: "
        r"not ready after 0.3s: canary revision .*00002 not ready",
    ):
        deploy(env, bundles["2"], "2", timeout_s=0.3)

    assert percents(stub) == [10, 0]
    assert stub.calls("PATCH")[1].body == {
        "spec": {
            "predictor": {
                "canaryTrafficPercent": 0,
                "annotations": {"mlwf.io/model-version": "1", "mlwf.io/bundle-sha256": bundle_lib.bundle_digest(bundles["1"])},
                "model": {"storageUri": uri("1")},
            }
        }
    }
    assert prom.queries == []  # nothing to analyze: it never served
    # Knative kept Ready=True throughout; the deploy was not fooled by it.
    traffic = stub.get(NAME, NS)["status"]["components"]["predictor"]["traffic"]
    assert [t["percent"] for t in traffic if t["revisionName"].endswith("00002")] == []


def test_failing_canary_is_rolled_back_with_the_reason(cluster, bundles):
    env = cluster("knative", canary_fails=True)
    deploy(env, bundles["1"], "1")

    with pytest.raises(DeployError, match="rolled back: .*ModelLoadFailed bundle failed its sha256 check"):
        deploy(env, bundles["2"], "2", timeout_s=30)  # fails on the reported failure, not on the deadline

    assert env[0].calls("PATCH")[-1].body["spec"]["predictor"]["canaryTrafficPercent"] == 0


class CrashingAnalyzer:
    """The real analyzer, until the process "dies" at a given observation (a pod killed mid-rollout)."""

    def __init__(self, real, crash_at: int) -> None:
        self.real, self.crash_at, self.calls = real, crash_at, 0

    def observe(self, version: str, window_s: float):
        self.calls += 1
        if self.calls == self.crash_at:
            raise KeyboardInterrupt("simulated crash")
        return self.real.observe(version, window_s)


def test_a_rerun_after_a_crash_resumes_at_the_current_percent(cluster, bundles):
    from components.deployment.kserve import default_analyzer

    env = cluster("knative")
    stub, settings = env[0], env[1]
    deploy(env, bundles["1"], "1")
    crashing = CrashingAnalyzer(default_analyzer(settings, NAME, NS), crash_at=5)  # the first look at 50%
    with pytest.raises(KeyboardInterrupt):
        deploy(env, bundles["2"], "2", analyzer=crashing)
    assert stub.get(NAME, NS)["spec"]["predictor"]["canaryTrafficPercent"] == 50
    stub.requests.clear()

    out = deploy(env, bundles["2"], "2")

    assert out["action"] == "canary-promoted"
    assert percents(stub) == [50, 100, None]  # resumed at 50%, re-analyzed there, then the rest
    assert len(stub.calls("POST")) == 0 and len(stub.objects) == 1
    final = stub.get(NAME, NS)
    assert final["spec"]["predictor"]["model"]["storageUri"] == uri("2") and "canaryTrafficPercent" not in final["spec"]["predictor"]
    stub.requests.clear()
    assert deploy(env, bundles["2"], "2")["action"] == "unchanged"  # and a third run changes nothing
    assert stub.calls("PATCH") == []


@pytest.mark.parametrize("method", ["POST", "PATCH"])
def test_a_conflict_is_re_read_and_retried(cluster, bundles, method):
    env = cluster("knative", conflict_once=method)
    stub = env[0]
    deploy(env, bundles["1"], "1")
    out = deploy(env, bundles["2"], "2")

    assert out["action"] == "canary-promoted"
    first, retry = stub.calls(method)[:2]
    assert (first.status, retry.status) == (409, 201 if method == "POST" else 200)
    assert first.body == retry.body
    # Between the conflict and the retry the object was read again.
    assert stub.requests[stub.requests.index(first) + 1].method == "GET"


def test_standard_mode_moves_spec_canary_through_the_steps_then_promotes(cluster, bundles):
    env = cluster("standard")
    stub = env[0]
    deploy(env, bundles["1"], "1")
    stub.requests.clear()

    out = deploy(env, bundles["2"], "2")

    assert out["action"] == "canary-promoted"
    assert percents(stub) == [10, 25, 50, 100, None]
    *steps, promote = stub.calls("PATCH")
    assert steps[0].body == {"spec": {"canary": [{"trafficPercent": 10, "predictor": expected_predictor(bundles["2"], "2")}]}}
    assert all("canaryTrafficPercent" not in json.dumps(p.body) for p in steps)  # ignored in Standard mode
    assert promote.body == {"spec": {"predictor": expected_predictor(bundles["2"], "2"), "canary": None}}
    final = stub.get(NAME, NS)
    assert "canary" not in final["spec"] and "canaryStatuses" not in final["status"]
    assert final["spec"]["predictor"]["model"]["storageUri"] == uri("2")


def test_standard_mode_rolls_back_a_slow_canary_by_removing_it(cluster, bundles):
    env = cluster("standard", metrics=SLOW)
    stub = env[0]
    deploy(env, bundles["1"], "1")

    with pytest.raises(DeployError, match=r"rolled back: 2 failed analyses .*p99_latency fail"):
        deploy(env, bundles["2"], "2")

    assert stub.calls("PATCH")[-1].body == {"spec": {"canary": None}}
    final = stub.get(NAME, NS)
    assert "canary" not in final["spec"] and final["spec"]["predictor"]["model"]["storageUri"] == uri("1")


def test_standard_mode_canary_never_ready_removes_the_canary(cluster, bundles):
    env = cluster("standard", canary_never_ready=True)
    stub = env[0]
    deploy(env, bundles["1"], "1")

    with pytest.raises(DeployError, match="rolled back: the canary did not take 10% of traffic: .*CanaryPredictorReady is not True"):
        deploy(env, bundles["2"], "2", timeout_s=0.3)

    assert stub.calls("PATCH")[-1].body == {"spec": {"canary": None}}
    final = stub.get(NAME, NS)
    assert "canary" not in final["spec"] and final["spec"]["predictor"]["model"]["storageUri"] == uri("1")


def test_without_prometheus_a_canary_is_refused_before_any_change(cluster, bundles):
    env = cluster("knative")
    deploy(env, bundles["1"], "1")
    settings = dataclasses.replace(env[1], prometheus_url="")

    with pytest.raises(DeployError, match="MLWF_PROMETHEUS_URL is not set"):
        deploy_cluster(bundles["2"], MODEL, "2", settings, api_client=env[2], **FAST)
    assert env[0].calls("PATCH") == []


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
    assert kserve_resources.plan(None, uri("2")) == "create"
    assert kserve_resources.plan({"spec": {"predictor": predictor}}, uri("2")) == "unchanged"
    assert kserve_resources.plan({"spec": {"predictor": {**predictor, "canaryTrafficPercent": 10}}}, uri("2")) == "canary"
    assert kserve_resources.plan({"spec": {"predictor": predictor, "canary": [{}]}}, uri("2")) == "canary"
    assert kserve_resources.plan({"spec": {"predictor": predictor}}, uri("3")) == "canary"
    stable = {"storageUri": uri("1"), "annotations": {}}
    note = {"metadata": {"annotations": {"mlwf.io/stable-predictor": json.dumps(stable)}}}
    # Knative: the percent an interrupted rollout of this storageUri reached, and what served before it.
    assert kserve_resources.canary_state(
        "knative", {**note, "spec": {"predictor": {**predictor, "canaryTrafficPercent": 25}}}, uri("2")
    ) == (stable, 25)
    assert kserve_resources.canary_state(
        "knative", {**note, "spec": {"predictor": {**predictor, "canaryTrafficPercent": 25}}}, uri("3")
    ) == (stable, None)
    assert kserve_resources.canary_state("knative", {"spec": {"predictor": predictor}}, uri("3")) == (
        {"storageUri": uri("2"), "annotations": {}},
        None,
    )
    with pytest.raises(DeployError, match="no mlwf.io/stable-predictor annotation"):
        kserve_resources.canary_state("knative", {"spec": {"predictor": {**predictor, "canaryTrafficPercent": 25}}}, uri("2"))
    # Standard: spec.predictor stays stable; the canary entry carries the percent.
    standard = {"spec": {"predictor": {"model": {"storageUri": uri("1")}}, "canary": [{"trafficPercent": 50, "predictor": predictor}]}}
    assert kserve_resources.canary_state("standard", standard, uri("2")) == (stable, 50)


def test_the_stub_rejects_what_a_strict_api_server_would(cluster):
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    stub, _, api_client, _ = cluster()
    api = client.CustomObjectsApi(api_client)
    misspelt = {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": "x"},
        "spec": {"predictor": {"canaryTraficPercent": 10}},
    }
    with pytest.raises(ApiException) as err:
        api.create_namespaced_custom_object("serving.kserve.io", "v1beta1", NS, "inferenceservices", misspelt)
    assert err.value.status == 422 and "canaryTraficPercent" in err.value.body
    with pytest.raises(ApiException) as err:
        api.list_namespaced_custom_object("serving.kserve.io", "v1beta1", NS, "trainedmodels")
    assert err.value.status == 404
    assert len(stub.rejections) == 2
    stub.rejections.clear()  # expected here; the fixture fails a test on any other rejection
