"""The kustomize manifests, checked without a cluster: every overlay renders, every object matches its schema,
every Pod template meets the "restricted" Pod Security Standard, the RBAC is exactly the allow-list, and the
names the code uses (ConfigMap keys, Secrets, ServiceAccounts, runtime) are the ones the manifests define.

Secrets: the dev overlay generates them from DEV-ONLY placeholder files; prod renders none and
manifests/README.md documents how to create each one out of band (both encoded below).
"""

from __future__ import annotations

import re
import subprocess

import pytest

from pipelines.training import OPTIONAL_SECRETS, SECRETS, SETTINGS_CONFIG_MAP, SETTINGS_KEYS
from tests.contract import manifest_tools as mt

OVERLAYS = ("overlays/dev", "overlays/prod")
NAMESPACE = "mlwf"
DEPLOYER_GRANTS = {
    ("serving.kserve.io", "inferenceservices", verb) for verb in ("get", "list", "watch", "create", "patch")
} | {("serving.kserve.io", "inferenceservices/status", "get")}
KSERVE_S3_ANNOTATIONS = tuple(f"serving.kserve.io/{k}" for k in ("s3-endpoint", "s3-usehttps", "s3-region"))
DEV_SERVICES = {"minio": 9000, "mlflow": 5000, "redis": 6379, "postgres": 5432}


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> tuple[str, list[dict]]:
    return request.param, mt.render(request.param)


@pytest.fixture(scope="module")
def dev() -> list[dict]:
    return mt.render("overlays/dev")


@pytest.fixture(scope="module")
def prod() -> list[dict]:
    return mt.render("overlays/prod")


def test_kubectl_is_available() -> None:
    assert mt.kubectl().is_file()  # raises with an install hint when absent: a failure, never a skip


@pytest.mark.parametrize("directory", ["base", *OVERLAYS])
def test_renders(directory: str) -> None:
    objs = mt.render(directory)
    assert objs, f"{directory} renders nothing"
    names = [mt.ident(o) for o in objs]
    assert len(names) == len(set(names)), f"duplicate objects in {directory}"


def test_core_objects_match_kubernetes_schemas(overlay: tuple[str, list[dict]]) -> None:
    _, objs = overlay
    core = [o for o in objs if mt.is_core(o)]
    assert core
    problems = []
    for obj in core:
        try:
            mt.validate_core(obj)
        except mt.ManifestError as exc:
            problems.append(str(exc))
    assert not problems, "\n".join(problems)


def test_custom_resources_match_their_crds(overlay: tuple[str, list[dict]]) -> None:
    _, objs = overlay
    custom = [o for o in objs if not mt.is_core(o)]
    kinds = {o["kind"] for o in custom}
    assert {"InferenceService", "ClusterServingRuntime", "PodMonitor", "PrometheusRule"} <= kinds
    problems = []
    for obj in custom:
        try:
            mt.validate_custom(obj)
        except mt.ManifestError as exc:
            problems.append(str(exc))
    assert not problems, "\n".join(problems)


def test_crd_validation_rejects_a_misspelt_field(dev: list[dict]) -> None:
    monitor = mt.only(dev, "PodMonitor", "mlwf-model-server")
    monitor["spec"]["podMetricEndpoints"] = monitor["spec"].pop("podMetricsEndpoints")
    with pytest.raises(mt.ManifestError, match="podMetricEndpoints"):
        mt.validate_custom(monitor)


def test_namespaces(overlay: tuple[str, list[dict]]) -> None:
    _, objs = overlay
    for obj in objs:
        ns = obj["metadata"].get("namespace")
        if obj["kind"] in mt.CLUSTER_SCOPED:
            assert ns is None, f"{mt.ident(obj)} is cluster-scoped and must not name a namespace"
        else:
            assert ns == NAMESPACE, f"{mt.ident(obj)} must be in namespace {NAMESPACE}"


def test_namespace_enforces_restricted_pod_security(overlay: tuple[str, list[dict]]) -> None:
    _, objs = overlay
    labels = mt.only(objs, "Namespace", NAMESPACE)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


def test_every_pod_template_meets_restricted(overlay: tuple[str, list[dict]]) -> None:
    _, objs = overlay
    pods = [p for o in objs for p in mt.pod_specs(o)]
    assert any("ClusterServingRuntime" in where for where, _ in pods)
    assert any("InferenceService" in where for where, _ in pods)
    problems = [msg for where, pod in pods for msg in mt.restricted_violations(where, pod)]
    assert not problems, "\n".join(problems)


def test_restricted_check_catches_violations() -> None:
    pod = {"containers": [{"name": "c", "image": "x:1", "securityContext": {"privileged": True}}],
           "volumes": [{"name": "h", "hostPath": {"path": "/"}}]}
    problems = "\n".join(mt.restricted_violations("pod", pod))
    for expected in ("privileged", "hostPath", "allowPrivilegeEscalation", "drop ALL", "runAsNonRoot",
                     "seccompProfile", "readOnlyRootFilesystem", "resources.requests"):
        assert expected in problems


def test_images_are_pinned(overlay: tuple[str, list[dict]]) -> None:
    _, objs = overlay
    for where, image in mt.images(objs):
        tag = image.rsplit("/", 1)[-1].partition(":")[2]
        assert "@sha256:" in image or (tag and tag != "latest"), f"{where}: image {image} is not pinned"


def test_deployer_role_is_exactly_the_allow_list(overlay: tuple[str, list[dict]]) -> None:
    _, objs = overlay
    assert not mt.find(objs, "ClusterRole") and not mt.find(objs, "ClusterRoleBinding")
    roles = mt.find(objs, "Role")
    assert [r["metadata"]["name"] for r in roles] == ["mlwf-pipeline-deployer"], "one Role, nothing more"
    assert mt.rbac_grants(roles[0]) == DEPLOYER_GRANTS
    bindings = mt.find(objs, "RoleBinding")
    assert len(bindings) == 1
    binding = bindings[0]
    role_ref = {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "mlwf-pipeline-deployer"}
    assert binding["roleRef"] == role_ref
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "pipeline-runner", "namespace": NAMESPACE}]
    mt.only(objs, "ServiceAccount", "pipeline-runner")


def test_allow_list_check_fails_on_an_extra_verb(dev: list[dict]) -> None:
    role = mt.only(dev, "Role", "mlwf-pipeline-deployer")
    role["rules"][0]["verbs"].append("delete")
    assert mt.rbac_grants(role) != DEPLOYER_GRANTS


def test_settings_configmap_has_every_key_the_pipeline_maps(overlay: tuple[str, list[dict]]) -> None:
    name, objs = overlay
    data = mt.only(objs, "ConfigMap", SETTINGS_CONFIG_MAP)["data"]
    missing = set(SETTINGS_KEYS) - set(data)
    assert not missing, f"{name}: ConfigMap {SETTINGS_CONFIG_MAP} lacks {sorted(missing)} (pods would not start)"
    empty = {k for k in SETTINGS_KEYS if not data[k]} - {"AWS_ENDPOINT_URL"}
    assert not empty, f"{name}: empty settings {sorted(empty)}"
    assert data["MLWF_PROFILE"] == "cluster"
    assert data["MLWF_KSERVE_NAMESPACE"] == NAMESPACE
    assert int(data["MLWF_CANARY_PERCENT"]) in range(1, 100)
    assert data["MLWF_KSERVE_MODE"] in ("knative", "standard")
    mt.only(objs, "ServiceAccount", data["MLWF_KSERVE_SERVICE_ACCOUNT"])
    for key in ("MLWF_STATE_DIR", "MLWF_FEAST_OFFLINE_ROOT", "MLWF_MODEL_STORE"):
        assert data[key].startswith("s3://"), key
    assert data["MLWF_FEAST_ONLINE"].startswith("redis://")  # the form components/features.py parses
    for key, value in data.items():  # credentials belong in Secrets
        assert not re.search(r"://[^/\s:@]+:[^/\s@]+@", value), f"{key} carries credentials"


def test_dev_points_at_in_cluster_services(dev: list[dict]) -> None:
    data = mt.only(dev, "ConfigMap", SETTINGS_CONFIG_MAP)["data"]
    assert data["AWS_ENDPOINT_URL"] == "http://minio.mlwf.svc.cluster.local:9000"
    assert data["MLFLOW_TRACKING_URI"] == "http://mlflow.mlwf.svc.cluster.local:5000"
    for service, port in DEV_SERVICES.items():
        svc = mt.only(dev, "Service", service)
        assert [p["port"] for p in svc["spec"]["ports"]] == [port]


def test_dev_creates_the_pipeline_secrets(dev: list[dict]) -> None:
    for name, keys in SECRETS.items():
        found = mt.find(dev, "Secret", name)
        if name in OPTIONAL_SECRETS and not found:
            continue  # the pipeline marks it optional: dev MLflow runs without auth
        assert len(found) == 1, f"dev overlay must create Secret {name}"
        secret = found[0]
        assert set(secret.get("data", {})) | set(secret.get("stringData", {})) == set(keys), name


def test_dev_secret_values_are_marked_placeholders() -> None:
    for path in sorted((mt.MANIFESTS / "overlays" / "dev").rglob("*.env")):
        text = path.read_text()
        assert "DEV ONLY" in text, f"{path} must say its values are dev-only placeholders"
        for line in text.splitlines():
            if "=" in line and not line.startswith("#"):
                key, _, value = line.partition("=")
                if re.search(r"SECRET|PASSWORD|REGISTRY", key):
                    assert "dev-only" in value, f"{path}: {key} is not an obvious dev-only placeholder"


def test_prod_renders_no_secret_and_documents_each(prod: list[dict]) -> None:
    assert not mt.find(prod, "Secret"), "prod must not carry secret values: they are created out of band"
    readme = (mt.MANIFESTS / "README.md").read_text()
    for name in SECRETS:
        assert re.search(rf"kubectl .*create secret generic {re.escape(name)}\b", readme), (
            f"manifests/README.md must show how to create Secret {name} for prod"
        )


def test_base_carries_no_secret() -> None:
    assert not mt.find(mt.render("base"), "Secret")


def test_model_server_service_account_lists_the_annotated_s3_secret(dev: list[dict]) -> None:
    sa = mt.only(dev, "ServiceAccount", "mlwf-model-server")
    listed = [s["name"] for s in sa.get("secrets", [])]
    assert "mlwf-s3" in listed
    secret = mt.only(dev, "Secret", "mlwf-s3")
    annotations = secret["metadata"].get("annotations", {})
    for key in KSERVE_S3_ANNOTATIONS:
        assert annotations.get(key), f"Secret mlwf-s3 lacks annotation {key}"
    assert annotations["serving.kserve.io/s3-endpoint"] == "minio.mlwf.svc.cluster.local:9000"


def test_prod_uses_iam_roles_for_service_accounts(prod: list[dict]) -> None:
    for name in ("pipeline-runner", "mlwf-model-server"):
        annotations = mt.only(prod, "ServiceAccount", name)["metadata"].get("annotations", {})
        assert annotations.get("eks.amazonaws.com/role-arn", "").startswith("arn:aws:iam::"), name
    data = mt.only(prod, "ConfigMap", SETTINGS_CONFIG_MAP)["data"]
    assert data["AWS_ENDPOINT_URL"] == "", "prod talks to real S3"
    assert ".svc.cluster.local" not in data["MLFLOW_TRACKING_URI"]
    kinds = {(o["kind"], o["metadata"]["name"]) for o in prod}
    for service in DEV_SERVICES:
        assert ("Deployment", service) not in kinds and ("StatefulSet", service) not in kinds


def test_serving_runtime_contract(overlay: tuple[str, list[dict]]) -> None:
    _, objs = overlay
    runtime = mt.only(objs, "ClusterServingRuntime", "mlwf-bundle-runtime")
    spec = runtime["spec"]
    assert spec["supportedModelFormats"] == [{"name": "mlwf-bundle", "version": "1", "autoSelect": True}]
    assert spec["protocolVersions"] == ["v1", "v2"]
    (container,) = spec["containers"]
    assert container["name"] == "kserve-container"
    assert container["image"] == "ghcr.io/mlwf/serving:0.1.0"
    assert container["args"] == ["--model_name={{.Name}}", "--model_dir=/mnt/models", "--http_port=8080"]


def test_inference_service_uses_the_runtime(overlay: tuple[str, list[dict]]) -> None:
    _, objs = overlay
    isvc = mt.only(objs, "InferenceService", "transactions-classifier")
    predictor = isvc["spec"]["predictor"]
    model = predictor["model"]
    runtime = mt.only(objs, "ClusterServingRuntime", model["runtime"])
    formats = {(f["name"], f.get("version")) for f in runtime["spec"]["supportedModelFormats"]}
    assert (model["modelFormat"]["name"], model["modelFormat"].get("version")) in formats
    assert model["storageUri"].startswith("s3://") and model["storageUri"].endswith("/transactions-classifier/v1")
    mt.only(objs, "ServiceAccount", predictor["serviceAccountName"])
    assert predictor["serviceAccountName"] == "mlwf-model-server"
    assert model["resources"]["limits"] and model["resources"]["requests"]


def test_pod_monitor_scrapes_the_declared_metrics_port(overlay: tuple[str, list[dict]]) -> None:
    _, objs = overlay
    monitors = mt.find(objs, "PodMonitor")
    assert monitors
    runtime = mt.only(objs, "ClusterServingRuntime", "mlwf-bundle-runtime")
    declared = {p["containerPort"] for c in runtime["spec"]["containers"] for p in c.get("ports", [])}
    endpoints = [e for m in monitors for e in m["spec"]["podMetricsEndpoints"]]
    assert any(e.get("portNumber") == 8080 and e.get("path") == "/metrics" for e in endpoints)
    assert 8080 in declared, "Prometheus drops a target whose port the pod does not declare"


def _selects(policy: dict, labels: dict[str, str]) -> bool:
    selector = policy["spec"]["podSelector"]
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op = expr["key"], expr["operator"]
        if (op == "Exists" and key not in labels) or (op == "In" and labels.get(key) not in expr["values"]):
            return False
        if op not in ("Exists", "In"):
            raise AssertionError(f"selector operator {op} not handled by this test")
    return True


def test_network_policies(overlay: tuple[str, list[dict]]) -> None:
    name, objs = overlay
    policies = mt.find(objs, "NetworkPolicy")
    deny = mt.only(objs, "NetworkPolicy", "default-deny-ingress")["spec"]
    assert deny["podSelector"] == {} and deny["policyTypes"] == ["Ingress"] and not deny.get("ingress")
    model_server = mt.only(objs, "NetworkPolicy", "allow-model-server-ingress")
    assert _selects(model_server, {"serving.kserve.io/inferenceservice": "transactions-classifier"})
    assert 8080 in {p["port"] for rule in model_server["spec"]["ingress"] for p in rule["ports"]}
    # Every workload with a Service gets ingress on that Service's ports from somewhere.
    for svc in mt.find(objs, "Service"):
        labels = svc["spec"]["selector"]
        ports = {p["port"] for p in svc["spec"]["ports"]}
        opened = {p["port"] for pol in policies if _selects(pol, labels)
                  for rule in pol["spec"].get("ingress", []) for p in rule.get("ports", [])}
        assert ports <= opened, f"{name}: no NetworkPolicy lets traffic reach Service {svc['metadata']['name']}"


def test_checkov_passes() -> None:
    command = mt.checkov_command()
    if command is None:
        pytest.skip("checkov is not installed (optional): pip install checkov to run this check")
    proc = subprocess.run(
        [*command, "-d", "manifests", "--framework", "kubernetes", "secrets",
         "--skip-download", "--compact", "--quiet"],
        cwd=mt.REPO, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
