"""The kustomize manifests, checked without a cluster: every overlay renders, every object matches its schema,
every Pod template meets the "restricted" Pod Security Standard, the RBAC is exactly the allow-list, and the
names the code uses (ConfigMap keys, Secrets, ServiceAccounts, runtime) are the ones the manifests define.

Secrets: the dev overlay generates them from DEV-ONLY placeholder files; prod renders none and
manifests/README.md documents how to create each one out of band (both encoded below).
"""

from __future__ import annotations

import re

import pytest

from pipelines.training import OPTIONAL_SECRETS, SECRETS, SETTINGS_CONFIG_MAP, SETTINGS_KEYS
from tests.contract import manifest_tools as mt

OVERLAYS = ("overlays/dev", "overlays/prod")
NAMESPACE = "mlwf"
DEPLOYER_GRANTS = {("serving.kserve.io", "inferenceservices", verb) for verb in ("get", "list", "watch", "create", "patch")} | {
    ("serving.kserve.io", "inferenceservices/status", "get")
}
TRAINER_GRANTS = {("trainer.kubeflow.org", "trainjobs", verb) for verb in ("get", "create")}
# The data steps on Spark (manifests/base/spark.yaml): the steps create/read/delete their SparkApplication; the
# Spark driver creates its executors, their ConfigMap and its Service.
PIPELINE_SPARK_GRANTS = {("sparkoperator.k8s.io", "sparkapplications", verb) for verb in ("create", "get", "delete")}
SPARK_DRIVER_GRANTS = {("", "pods", verb) for verb in ("create", "get", "list", "watch", "delete")} | {
    ("", resource, verb) for resource in ("services", "configmaps") for verb in ("create", "get", "delete")
}
ROLE_GRANTS = {
    "mlwf-pipeline-deployer": DEPLOYER_GRANTS,
    "mlwf-pipeline-trainer": TRAINER_GRANTS,
    "mlwf-pipeline-spark": PIPELINE_SPARK_GRANTS,
    "mlwf-spark-driver": SPARK_DRIVER_GRANTS,
}
ROLE_SUBJECTS = {"mlwf-spark-driver": "mlwf-spark"}  # every other Role is bound to pipeline-runner
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
    pod = {
        "containers": [{"name": "c", "image": "x:1", "securityContext": {"privileged": True}}],
        "volumes": [{"name": "h", "hostPath": {"path": "/"}}],
    }
    problems = "\n".join(mt.restricted_violations("pod", pod))
    for expected in (
        "privileged",
        "hostPath",
        "allowPrivilegeEscalation",
        "drop ALL",
        "runAsNonRoot",
        "seccompProfile",
        "readOnlyRootFilesystem",
        "resources.requests",
    ):
        assert expected in problems


def test_images_are_pinned(overlay: tuple[str, list[dict]]) -> None:
    _, objs = overlay
    for where, image in mt.images(objs):
        tag = image.rsplit("/", 1)[-1].partition(":")[2]
        assert "@sha256:" in image or (tag and tag != "latest"), f"{where}: image {image} is not pinned"


def test_roles_are_exactly_the_allow_list(overlay: tuple[str, list[dict]]) -> None:
    _, objs = overlay
    assert not mt.find(objs, "ClusterRole") and not mt.find(objs, "ClusterRoleBinding")
    roles = {r["metadata"]["name"]: r for r in mt.find(objs, "Role")}
    assert set(roles) == set(ROLE_GRANTS), "the deployer, trainer, Spark step and Spark driver Roles, nothing more"
    for name, grants in ROLE_GRANTS.items():
        assert mt.rbac_grants(roles[name]) == grants, name
    bindings = {b["metadata"]["name"]: b for b in mt.find(objs, "RoleBinding")}
    assert set(bindings) == set(ROLE_GRANTS)
    for name, binding in bindings.items():
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name}
        subject = ROLE_SUBJECTS.get(name, "pipeline-runner")
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": subject, "namespace": NAMESPACE}]
        mt.only(objs, "ServiceAccount", subject)


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
    steps = [int(p) for p in data["MLWF_CANARY_STEPS"].split(",")]
    assert steps == sorted(steps) and steps[-1] == 100 and all(0 < p <= 100 for p in steps)
    assert data["MLWF_KSERVE_MODE"] in ("knative", "standard")
    mt.only(objs, "ServiceAccount", data["MLWF_KSERVE_SERVICE_ACCOUNT"])
    for key in ("MLWF_STATE_DIR", "MLWF_FEAST_OFFLINE_ROOT", "MLWF_MODEL_STORE"):
        assert data[key].startswith("s3://"), key
    assert data["MLWF_FEAST_ONLINE"].startswith("redis://")  # the form components/features/store.py parses
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
        opened = {
            p["port"] for pol in policies if _selects(pol, labels) for rule in pol["spec"].get("ingress", []) for p in rule.get("ports", [])
        }
        assert ports <= opened, f"{name}: no NetworkPolicy lets traffic reach Service {svc['metadata']['name']}"


# --- checkov, with the project's InferenceService policy (manifests/policies) --------------------------------
# checkov is required (`make test` installs it into .venv-tools). Two scans, because each alone misses something:
# the source tree (kubernetes + secrets: a committed secret lives in a file, and skip annotations are read
# where they are written) and the rendered overlays (kubernetes only: what the cluster receives, patches
# applied). The secrets framework is not run on the rendered output: kustomize turns the dev placeholders of
# overlays/dev/secrets/*.env into base64 Secret data, which checkov flags as high-entropy strings;
# test_dev_secret_values_are_marked_placeholders checks those files and prod renders no Secret at all.
POLICY_IDS = {"CKV_MLWF_1", "CKV_MLWF_2", "CKV_MLWF_3", "CKV_MLWF_4"}
ISVC = "InferenceService.mlwf.transactions-classifier"
SKIPPABLE = {"CKV_K8S_35", "CKV_K8S_40", "CKV_K8S_43"}  # the reasoned dev exceptions (manifests/README.md)


def _failures(reports: list[dict]) -> str:
    return "\n".join(
        f"{r['check_id']} {r['resource']} {r.get('file_path')}: {r['check_name']}" for r in mt.checkov_results(reports, "failed")
    )


def _policy_ran(reports: list[dict], outcome: str) -> set[str]:
    return {r["check_id"] for r in mt.checkov_results(reports, outcome) if r["check_id"] in POLICY_IDS and r["resource"] == ISVC}


def test_checkov_is_installed() -> None:
    assert mt.tool("checkov").is_file()  # raises naming `make test` when absent: a failure, never a skip


def test_checkov_passes_on_the_manifests() -> None:
    code, reports, text = mt.checkov("-d", "manifests", "--framework", "kubernetes", "secrets")
    assert code == 0, _failures(reports) or text[-3000:]
    assert {r.get("check_type") for r in reports} >= {"kubernetes"}
    assert _policy_ran(reports, "passed") == POLICY_IDS, "the project's InferenceService policy did not run"


def _isvc_variants() -> dict[str, tuple[dict, set[str]]]:
    """name -> (the committed template broken in one way, the checks that must fail it)."""
    import copy

    import yaml

    template = yaml.safe_load((mt.MANIFESTS / "base" / "inferenceservice.yaml").read_text())
    privileged = {
        "name": "sidecar",
        "image": "example.com/sidecar:1",
        "resources": {k: {"cpu": "100m", "memory": "64Mi"} for k in ("requests", "limits")},
        "securityContext": {"privileged": True, "allowPrivilegeEscalation": False},
    }
    breaks = {
        "good": (lambda p: None, set()),
        "http-storage": (lambda p: p["model"].update(storageUri="http://models.example.com/model.joblib"), {"CKV_MLWF_1"}),
        "other-runtime": (lambda p: p["model"].update(runtime="kserve-sklearnserver"), {"CKV_MLWF_1"}),
        "no-resources": (lambda p: p["model"].pop("resources"), {"CKV_MLWF_2"}),
        "default-account": (lambda p: p.update(serviceAccountName="default"), {"CKV_MLWF_3"}),
        "privileged-sidecar": (lambda p: p.update(containers=[privileged]), {"CKV_MLWF_4"}),
        "escalating-model": (lambda p: p["model"]["securityContext"].pop("allowPrivilegeEscalation"), {"CKV_MLWF_4"}),
        "bare": (
            lambda p: p.clear() or p.update(model={"modelFormat": {"name": "sklearn"}, "storageUri": "https://example.com/m.joblib"}),
            POLICY_IDS,
        ),
    }
    out = {}
    for name, (edit, failing) in breaks.items():
        obj = copy.deepcopy(template)
        obj["metadata"]["name"] = name
        edit(obj["spec"]["predictor"])
        out[name] = (obj, failing)
    return out


@pytest.fixture(scope="module")
def checkov_scratch(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """One checkov run (kubernetes framework, the project's policies) over a scratch directory holding the
    rendered overlays and the InferenceService variants: one start-up of checkov instead of two."""
    import yaml

    scratch = tmp_path_factory.mktemp("checkov")
    for overlay in OVERLAYS:
        (scratch / f"{overlay.replace('/', '-')}.yaml").write_text(mt._render_text(str(mt.MANIFESTS / overlay)))
    (scratch / "variants").mkdir()
    for name, (obj, _) in _isvc_variants().items():
        (scratch / "variants" / f"{name}.yaml").write_text(yaml.safe_dump(obj))
    code, reports, text = mt.checkov("-d", str(scratch), "--framework", "kubernetes")
    assert code == 1, "the broken InferenceServices must fail:\n" + text[-3000:]
    return reports


def test_checkov_passes_on_the_rendered_overlays(checkov_scratch: list[dict]) -> None:
    failed = [r for r in mt.checkov_results(checkov_scratch, "failed") if r["file_path"].startswith("/overlays-")]
    assert not failed, _failures([{"results": {"failed_checks": failed}}])
    files = {r["file_path"] for r in mt.checkov_results(checkov_scratch, "passed") if r["check_id"] in POLICY_IDS}
    assert {"/overlays-dev.yaml", "/overlays-prod.yaml"} <= files, f"the policy ran on {files}, not on both overlays"
    ran = {r["check_id"] for r in mt.checkov_results(checkov_scratch, "passed") if r["file_path"] == "/overlays-dev.yaml"}
    assert len(ran - POLICY_IDS) > 20, "checkov's own Kubernetes checks did not run on the rendered dev overlay"


def test_checkov_policy_fails_bad_inference_services(checkov_scratch: list[dict]) -> None:
    """The committed template broken one way at a time (http storageUri, another runtime, no resources, the
    default ServiceAccount, a privileged or escalating container, all at once): exactly the check for that rule
    fails it, the others pass it, and the unbroken template passes all four."""
    for name, (_, failing) in _isvc_variants().items():
        resource = f"InferenceService.mlwf.{name}"
        got = {r["check_id"] for r in mt.checkov_results(checkov_scratch, "failed") if r["resource"] == resource}
        passed = {r["check_id"] for r in mt.checkov_results(checkov_scratch, "passed") if r["resource"] == resource}
        assert got & POLICY_IDS == failing, f"{name}: failed {sorted(got)}, expected {sorted(failing)}"
        assert passed & POLICY_IDS == POLICY_IDS - failing, f"{name}: passed {sorted(passed)}"


def test_checkov_skips_are_reasoned_and_never_the_projects_policy(overlay: tuple[str, list[dict]]) -> None:
    name, objs = overlay
    for obj in objs:
        for key, value in (obj["metadata"].get("annotations") or {}).items():
            if not key.startswith("checkov.io/skip"):
                continue
            check, _, reason = value.partition("=")
            assert check in SKIPPABLE, f"{name}: {mt.ident(obj)} skips {check}, not one of the documented exceptions"
            assert len(reason.strip()) >= 20, f"{name}: {mt.ident(obj)} skips {check} without a reason"
