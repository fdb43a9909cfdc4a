"""The CRD schemas the repository carries (manifests/crds): every custom resource kind the manifests and the
components render has one, the files are exactly what manifests/crds/extract.py writes (canonical bytes, no
description keywords, PROVENANCE.md generated), the extractor is deterministic, and a missing schema fails.

Nothing here reads the upstream CRD files: a clone has none beside it. The extractor is exercised on an
upstream-shaped folder built in tmp_path from the carried schemas themselves.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.contract import manifest_tools as mt

EXTRACT = mt.CRDS / "extract.py"
OVERLAYS = ("overlays/dev", "overlays/prod")
# The source folder each group's upstream CRDs sit in (extract.SOURCES is keyed by folder).
FOLDERS = {"serving.kserve.io": "kserve"}


def extract_module() -> ModuleType:
    """manifests/crds/extract.py as a module (it is a script, not part of a package)."""
    spec = importlib.util.spec_from_file_location("mlwf_crds_extract", EXTRACT)
    if spec is None or spec.loader is None:
        raise AssertionError(f"cannot load {EXTRACT}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def extract() -> ModuleType:
    return extract_module()


def carried_files() -> list[Path]:
    return sorted(mt.SCHEMAS.rglob("*.json"))


def key_of(path: Path) -> tuple[str, str, str]:
    group, version, name = path.relative_to(mt.SCHEMAS).parts
    return group, version, name.removesuffix(".json")


def rendered_custom_kinds() -> dict[tuple[str, str, str], str]:
    """(group, version, kind) -> where, for every non-core object the overlays and the component builders render."""
    from components.core import spark_application
    from components.core.settings import get_settings
    from components.deployment import kserve_resources
    from components.training import trainjob

    kinds: dict[tuple[str, str, str], str] = {}
    for overlay in OVERLAYS:
        for obj in mt.render(overlay):
            if not mt.is_core(obj):
                group, version = obj["apiVersion"].split("/", 1)
                kinds.setdefault((group, version, obj["kind"]), f"manifests/{overlay} {mt.ident(obj)}")
    isvc = kserve_resources.build_isvc("m", "mlwf", {})
    job = trainjob.build_trainjob("mlwf-train-x", "mlwf", "img:1", [], nodes=2, gpus_per_node=0, settings=get_settings())
    spark = spark_application.build_spark_application("mlwf-validate-x", "mlwf", ["validate", "--work", "s3://b/w"], get_settings())
    for obj, where in (
        (isvc, "components/deployment/kserve_resources.build_isvc"),
        (job, "components/trainjob.build_trainjob"),
        (spark, "components/core/spark_application.build_spark_application"),
    ):
        group, version = obj["apiVersion"].split("/", 1)
        kinds.setdefault((group, version, obj["kind"]), where)
    return kinds


def test_every_rendered_custom_kind_has_a_carried_schema(extract: ModuleType) -> None:
    rendered = rendered_custom_kinds()
    # The renderers really ran: the kinds the project is known to produce are among them.
    assert {k for _, _, k in rendered} >= {
        "InferenceService",
        "ClusterServingRuntime",
        "PodMonitor",
        "PrometheusRule",
        "FeatureStore",
        "TrainJob",
        "SparkApplication",
    }, sorted(rendered)
    unlisted = [f"{'/'.join(key)} ({where})" for key, where in rendered.items() if key not in extract.KINDS]
    assert not unlisted, f"rendered but not in KINDS of {EXTRACT}: {unlisted}"
    for key in rendered:
        schema = mt.crd_schema(*key)  # raises ManifestError naming the missing file
        assert schema.get("type") == "object" and "spec" in schema.get("properties", {}), key


def test_every_listed_kind_is_carried_where_the_loader_looks(extract: ModuleType) -> None:
    assert ("sparkoperator.k8s.io", "v1beta2", "SparkApplication") in extract.KINDS  # for the Spark path
    for key in extract.KINDS:
        assert extract.schema_path(*key) == mt.crd_schema_file(*key)
        assert mt.crd_schema_file(*key).is_file(), f"{'/'.join(key)}: no carried schema; run `make crds`"
    stray = [p for p in carried_files() if key_of(p) not in extract.KINDS]
    assert not stray, f"carried schemas no kind in KINDS produces (rerun `make crds`): {stray}"


def test_carried_files_are_what_the_extractor_writes(extract: ModuleType) -> None:
    files = carried_files()
    assert len(files) == len(extract.KINDS)
    provenance = (mt.CRDS / "PROVENANCE.md").read_text(encoding="utf-8")
    for path in files:
        data = path.read_bytes()
        schema = json.loads(data)
        assert extract.dumps(schema) == data, f"{path} is not in canonical form (minified, sorted keys)"
        assert extract.without_descriptions(schema) == schema, f"{path} still has description keywords"
        assert f"`{path.relative_to(mt.CRDS).as_posix()}`" in provenance, f"PROVENANCE.md does not list {path}"


def test_without_descriptions_drops_the_keyword_not_a_field_named_description(extract: ModuleType) -> None:
    schema = {
        "description": "doc",
        "type": "object",
        "properties": {
            "description": {"type": "string", "description": "a field called description"},
            "items": {
                "type": "array",
                "items": {"type": "object", "description": "x", "properties": {"a": {"type": "integer", "description": "y"}}},
            },
            "either": {"anyOf": [{"type": "integer", "description": "z"}, {"type": "string"}]},
            "labels": {"type": "object", "additionalProperties": {"type": "string", "description": "w"}},
            "d": {"type": "object", "default": {"description": "kept: a value, not a schema"}},
        },
    }
    assert extract.without_descriptions(schema) == {
        "type": "object",
        "properties": {
            "description": {"type": "string"},
            "items": {"type": "array", "items": {"type": "object", "properties": {"a": {"type": "integer"}}}},
            "either": {"anyOf": [{"type": "integer"}, {"type": "string"}]},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "d": {"type": "object", "default": {"description": "kept: a value, not a schema"}},
        },
    }


def _documented(node: Any) -> Any:
    """The schema with a description on every schema node, as upstream CRDs have them."""
    if not isinstance(node, dict):
        return node
    out = dict(node)
    for key in ("properties", "patternProperties"):
        if isinstance(node.get(key), dict):
            out[key] = {name: _documented(sub) for name, sub in node[key].items()}
    for key in ("items", "additionalProperties", "not"):
        if isinstance(node.get(key), dict):
            out[key] = _documented(node[key])
    for key in ("allOf", "anyOf", "oneOf"):
        if isinstance(node.get(key), list):
            out[key] = [_documented(sub) for sub in node[key]]
    out["description"] = "upstream documentation"
    return out


def test_extractor_reproduces_the_carried_files_deterministically(
    extract: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An upstream-shaped folder (one CRD file per kind, descriptions everywhere, an unlisted version and a
    non-CRD document beside it) extracts to byte-identical files, twice, and --check agrees."""
    source = tmp_path / "upstream"
    for path in carried_files():
        group, version, kind = key_of(path)
        folder = source / FOLDERS.get(group, group)
        folder.mkdir(parents=True, exist_ok=True)
        schema = _documented(json.loads(path.read_bytes()))
        crd = {
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "spec": {
                "group": group,
                "names": {"kind": kind},
                "versions": [
                    {"name": "v0unlisted", "schema": {"openAPIV3Schema": {"type": "object"}}},
                    {"name": version, "served": True, "storage": True, "schema": {"openAPIV3Schema": schema}},
                ],
            },
        }
        # JSON is YAML; a leading non-CRD document checks that only CRDs are read.
        text = "---\n" + json.dumps({"kind": "ConfigMap"}) + "\n---\n" + json.dumps(crd) + "\n"
        (folder / f"{group}_{kind.lower()}s.yaml").write_text(text, encoding="utf-8")

    first = extract.build(source)
    second = extract.build(source)
    assert first == second
    for path in carried_files():
        assert first[path.relative_to(mt.CRDS)] == path.read_bytes(), f"{path} differs from what extract.py writes"

    # PROVENANCE.md is generated too: the same text but for the hashes of these synthetic upstream files.
    def unhashed(text: str) -> str:
        return re.sub(r"`[0-9a-f]{16}`", "`<sha256>`", text)

    provenance = (mt.CRDS / "PROVENANCE.md").read_text(encoding="utf-8")
    assert unhashed(first[Path("PROVENANCE.md")].decode()) == unhashed(provenance)

    # --check writes nothing and reports only what differs: here PROVENANCE.md (the synthetic files' hashes).
    before = {p: p.read_bytes() for p in [*carried_files(), mt.CRDS / "PROVENANCE.md"]}
    assert extract.main(["--source", str(source), "--check"]) == 1
    assert capsys.readouterr().err.splitlines()[0] == f"differs from {source}: manifests/crds/PROVENANCE.md"
    # ... and names a schema whose upstream changed.
    monitor = source / "monitoring.coreos.com" / "monitoring.coreos.com_podmonitors.yaml"
    text = monitor.read_text(encoding="utf-8")
    assert '"minLength": 1' in text
    monitor.write_text(text.replace('"minLength": 1', '"minLength": 2', 1), encoding="utf-8")
    assert extract.main(["--source", str(source), "--check"]) == 1
    assert "manifests/crds/schemas/monitoring.coreos.com/v1/PodMonitor.json" in capsys.readouterr().err
    assert before == {p: p.read_bytes() for p in before}

    # A kind the source lacks is an error naming it, not a silently shorter set.
    (source / "kserve" / "serving.kserve.io_inferenceservices.yaml").unlink()
    with pytest.raises(SystemExit, match="InferenceService"):
        extract.build(source)


def test_a_missing_schema_fails_with_a_clear_message() -> None:
    with pytest.raises(mt.ManifestError, match=r"example\.com/v1 Widget: .*Widget\.json is missing.*make crds"):
        mt.crd_schema("example.com", "v1", "Widget")
    obj = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w", "namespace": "mlwf"}, "spec": {}}
    with pytest.raises(mt.ManifestError, match="Widget mlwf/w: no carried CRD schema"):
        mt.validate_custom(obj)


def test_the_loader_makes_the_carried_schema_strict() -> None:
    """x-kubernetes-* keys are kept in the files; the loader closes objects, so a misspelt field is an error."""
    assert '"x-kubernetes-validations"' in mt.crd_schema_file("trainer.kubeflow.org", "v1alpha1", "TrainJob").read_text()
    validator = mt.crd_validator("trainer.kubeflow.org", "v1alpha1", "TrainJob")
    assert "x-kubernetes-validations" not in json.dumps(validator.schema)
    job: dict[str, Any] = {
        "apiVersion": "trainer.kubeflow.org/v1alpha1",
        "kind": "TrainJob",
        "metadata": {"name": "j"},
        "spec": {"runtimeRef": {"name": "torch-distributed"}, "trainer": {"numNodes": 2}},
    }
    assert not list(validator.iter_errors(job))
    job["spec"]["trainer"]["numNode"] = 2
    assert [e.message for e in validator.iter_errors(job)] == ["Additional properties are not allowed ('numNode' was unexpected)"]
