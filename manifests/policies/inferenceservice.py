"""checkov checks of the project's own for InferenceServices (checkov ships none for KServe).

Run with `checkov -d manifests --framework kubernetes --external-checks-dir manifests/policies`. checkov's
kubernetes runner hands every parsed object, custom resources included, to the checks registered for its `kind`,
so a BaseK8Check with supported_entities=["InferenceService"] runs on each InferenceService. The
directory needs its __init__.py (see there). tests/contract/test_manifests.py runs these on the manifests, on the
rendered overlays, and on a deliberately bad InferenceService that must fail.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator
from typing import Any

from checkov.common.models.enums import CheckCategories, CheckResult
from checkov.kubernetes.checks.resource.base_spec_check import BaseK8Check

RUNTIME = "mlwf-bundle-runtime"
COMPONENTS = ("predictor", "transformer", "explainer")
KIND = ["InferenceService"]


def _components(conf: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    spec = conf.get("spec") or {}
    for name in COMPONENTS:
        part = spec.get(name)
        if isinstance(part, dict):
            yield name, part


def _containers(part: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """The model container (`model`, a container spec plus model fields) and any custom containers."""
    if isinstance(part.get("model"), dict):
        yield "model", part["model"]
    for container in part.get("containers") or []:
        if isinstance(container, dict):
            yield f"containers/{container.get('name')}", container


class _InferenceServiceCheck(BaseK8Check):
    def __init__(self, name: str, id: str) -> None:
        super().__init__(name=name, id=id, categories=[CheckCategories.KUBERNETES], supported_entities=KIND)

    def scan_spec_conf(self, conf: dict[str, Any]) -> CheckResult:
        return CheckResult.FAILED if any(True for _ in self.problems(conf)) else CheckResult.PASSED

    @abstractmethod
    def problems(self, conf: dict[str, Any]) -> Iterator[str]:
        """Each way `conf` breaks the rule, in words (checkov's kubernetes report shows only pass/fail; the
        messages document the rule and help when debugging a check by hand)."""


class InferenceServiceModelFromObjectStore(_InferenceServiceCheck):
    # The storage initializer must fetch a sealed bundle over s3:// (digests verified at load), never a plain
    # http(s) URL anyone on the path can swap, and the project's runtime (which verifies the bundle) serves it.
    def __init__(self) -> None:
        super().__init__("InferenceService serves a bundle from s3:// with the mlwf runtime", "CKV_MLWF_1")

    def problems(self, conf: dict[str, Any]) -> Iterator[str]:
        predictor = (conf.get("spec") or {}).get("predictor") or {}
        model = predictor.get("model")
        if not isinstance(model, dict):
            yield "spec.predictor.model is missing: the predictor must serve a model bundle"
            return
        uri = str(model.get("storageUri") or "")
        if not uri.startswith("s3://"):
            yield f"spec.predictor.model.storageUri must be s3://..., got {uri or 'nothing'!r}"
        if model.get("runtime") != RUNTIME:
            yield f"spec.predictor.model.runtime must be {RUNTIME}, got {model.get('runtime')!r}"


class InferenceServiceResources(_InferenceServiceCheck):
    # Without requests and limits one model can starve the node, and the autoscaler has nothing to go on.
    def __init__(self) -> None:
        super().__init__("InferenceService containers set CPU and memory requests and limits", "CKV_MLWF_2")

    def problems(self, conf: dict[str, Any]) -> Iterator[str]:
        for component, part in _components(conf):
            for where, container in _containers(part):
                resources = container.get("resources") or {}
                for section in ("requests", "limits"):
                    missing = {"cpu", "memory"} - set(resources.get(section) or {})
                    if missing:
                        yield f"spec.{component}.{where}: resources.{section} lacks {sorted(missing)}"


class InferenceServiceDedicatedServiceAccount(_InferenceServiceCheck):
    # Each component reads the model store with its own ServiceAccount (least privilege), not `default`.
    def __init__(self) -> None:
        super().__init__("InferenceService components run as a dedicated ServiceAccount", "CKV_MLWF_3")

    def problems(self, conf: dict[str, Any]) -> Iterator[str]:
        for component, part in _components(conf):
            account = part.get("serviceAccountName")
            if not account or account == "default":
                yield f"spec.{component}.serviceAccountName must name a dedicated ServiceAccount, got {account!r}"


class InferenceServiceNoPrivilegedContainers(_InferenceServiceCheck):
    # KServe's webhook adds no securityContext: a container without one may escalate, and a privileged one is
    # root on the node. Pod Security admission would reject the pod only after the deploy step created it.
    def __init__(self) -> None:
        super().__init__("InferenceService containers are not privileged and do not escalate", "CKV_MLWF_4")

    def problems(self, conf: dict[str, Any]) -> Iterator[str]:
        for component, part in _components(conf):
            for where, container in _containers(part):
                context = container.get("securityContext") or {}
                if context.get("privileged"):
                    yield f"spec.{component}.{where}: privileged"
                if context.get("allowPrivilegeEscalation") is not False:
                    yield f"spec.{component}.{where}: securityContext.allowPrivilegeEscalation must be false"


CHECKS = (
    InferenceServiceModelFromObjectStore(),
    InferenceServiceResources(),
    InferenceServiceDedicatedServiceAccount(),
    InferenceServiceNoPrivilegedContainers(),
)
