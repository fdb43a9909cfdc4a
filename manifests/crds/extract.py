"""Extract the openAPIV3Schema of every custom resource kind the project renders from the upstream CRD files,
into manifests/crds/schemas/<group>/<version>/<Kind>.json, and write PROVENANCE.md beside them.

    python manifests/crds/extract.py --source DIR           # (re)write the carried schemas and PROVENANCE.md
    python manifests/crds/extract.py --source DIR --check   # exit 1 when the committed files differ from DIR's

DIR holds the upstream CRD YAMLs, one folder per project as listed in SOURCES (kserve/, monitoring.coreos.com/,
...), each copied unchanged from the repository and commit named there. The tests never run this script: they
read the carried JSON, so a clone needs nothing beside it.

What is kept, and why:
- `x-kubernetes-*` keys stay exactly as upstream has them. They carry validation meaning the test loader
  interprets (`x-kubernetes-preserve-unknown-fields` decides which objects stay open when it closes the others
  for strict field validation; `x-kubernetes-int-or-string`, `-embedded-resource`, `-validations` say what
  the API server accepts). Stripping them here would bake one validator's policy into the data and lose what
  a stricter one needs later; the loader (tests/contract/manifest_tools.py) strips them in one place.
- `description` keywords are dropped (the property *named* "description", e.g. a PrometheusRule annotation,
  is kept: only the keyword of a schema node goes). They are documentation the validator never reads and make
  up 60-75% of the Feast, Spark, Trainer and Prometheus schemas.
- Everything else (types, enums, required, formats, patterns, defaults, list order) is untouched.

The output is minified JSON with sorted keys and a trailing newline, so a rerun on the same source is
byte-identical and a diff after an upstream bump shows only what changed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SCHEMAS_DIR = HERE / "schemas"
PROVENANCE = HERE / "PROVENANCE.md"
LICENCE = "Apache-2.0"

# Upstream of each source folder: (repository, path in it, commit, commit date). Bump the commit here when the
# folder's files are refreshed from upstream, then rerun the script.
SOURCES: dict[str, tuple[str, str, str, str]] = {
    "kserve": ("kserve/kserve", "config/crd/full/", "aaac4e294dae2c7b1aa1886447793f3aa1c30912", "2026-08-21"),
    "monitoring.coreos.com": (
        "prometheus-operator/prometheus-operator",
        "example/prometheus-operator-crd/",
        "6adcebc5076c34f4f55f8f5f7b1e528929373ac7",
        "2026-08-08",
    ),
    "trainer.kubeflow.org": ("kubeflow/trainer", "manifests/base/crds/", "8c0f5059bd51ec3ba6d6a6a7b2e1471de7bc13b3", "2026-08-21"),
    "sparkoperator.k8s.io": (
        "kubeflow/spark-operator",
        "config/crd/bases/",
        "38082f3318e9d33f3e4a940c7cf165df6e40b422",
        "2026-08-21, after v2.5.2",
    ),
    "feast.dev": ("feast-dev/feast", "infra/feast-operator/config/crd/bases/", "f0bc0700be7029166e6605e407de6d229cd1e93e", "2026-08-21"),
}

# (group, version, kind) the project renders or validates, and where.
KINDS: dict[tuple[str, str, str], str] = {
    ("serving.kserve.io", "v1beta1", "InferenceService"): "manifests/base, components/deployment/kserve.py, tests/k8s_stub.py",
    ("serving.kserve.io", "v1alpha1", "ClusterServingRuntime"): "manifests/base/serving-runtime.yaml",
    ("serving.kserve.io", "v1alpha1", "ServingRuntime"): "the namespaced form of the runtime (manifest_tools checks its pods)",
    ("monitoring.coreos.com", "v1", "PodMonitor"): "manifests/base/monitoring.yaml",
    ("monitoring.coreos.com", "v1", "PrometheusRule"): "manifests/base/monitoring.yaml, prometheusrule.yaml",
    ("trainer.kubeflow.org", "v1alpha1", "TrainJob"): "components/training/trainjob.py",
    ("feast.dev", "v1", "FeatureStore"): "manifests/overlays/dev/featurestore.yaml",
    ("sparkoperator.k8s.io", "v1beta2", "SparkApplication"): "the Spark feature-engineering path",
}

# Keys whose value maps names to schemas, or is one schema, or a list of schemas (OpenAPI v3 structural schema).
_NAMED = ("properties", "patternProperties", "definitions")
_ONE = ("items", "additionalProperties", "not")
_MANY = ("allOf", "anyOf", "oneOf")


def schema_path(group: str, version: str, kind: str, root: Path = SCHEMAS_DIR) -> Path:
    return root / group / version / f"{kind}.json"


def dumps(schema: Any) -> bytes:
    """The one serialisation of a carried schema: minified, sorted keys, UTF-8, trailing newline."""
    return (json.dumps(schema, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False) + "\n").encode()


def without_descriptions(node: Any) -> Any:
    """The schema node with every `description` keyword removed, walking only schema positions."""
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "description":
            continue
        if key in _NAMED and isinstance(value, dict):
            out[key] = {name: without_descriptions(sub) for name, sub in value.items()}
        elif key in _ONE and isinstance(value, dict):
            out[key] = without_descriptions(value)
        elif (key in _MANY or key == "items") and isinstance(value, list):
            out[key] = [without_descriptions(sub) for sub in value]
        else:
            out[key] = value
    return out


def _upstream(source: Path) -> dict[tuple[str, str, str], tuple[Path, dict[str, Any]]]:
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml reads the 2 MB CRDs several times faster
    found: dict[tuple[str, str, str], tuple[Path, dict[str, Any]]] = {}
    for path in sorted(source.rglob("*.yaml")):
        for doc in yaml.load_all(path.read_text(encoding="utf-8"), Loader=loader):
            if not isinstance(doc, dict) or doc.get("kind") != "CustomResourceDefinition":
                continue
            spec = doc["spec"]
            for version in spec["versions"]:
                key = (spec["group"], version["name"], spec["names"]["kind"])
                schema = (version.get("schema") or {}).get("openAPIV3Schema")
                if key in KINDS and schema is not None:
                    if key in found:
                        raise SystemExit(f"{'/'.join(key)} is defined twice: {found[key][0]} and {path}")
                    found[key] = (path, schema)
    return found


def build(source: Path) -> dict[Path, bytes]:
    """Every file this script writes (relative to manifests/crds/) and its bytes, from the upstream CRDs in source."""
    if not source.is_dir():
        raise SystemExit(f"--source {source} is not a directory of upstream CRD files (see {PROVENANCE.name})")
    found = _upstream(source)
    missing = sorted(set(KINDS) - set(found))
    if missing:
        raise SystemExit(f"no CRD under {source} defines: {', '.join('/'.join(k) for k in missing)}")
    files: dict[Path, bytes] = {}
    rows = []
    for key in sorted(KINDS):
        path, schema = found[key]
        folder = path.relative_to(source).parts[0]
        if folder not in SOURCES:
            raise SystemExit(f"{path}: folder {folder!r} has no upstream in SOURCES; add its repository and commit")
        repo, upstream_dir, commit, date = SOURCES[folder]
        out = schema_path(*key, root=Path("schemas"))
        files[out] = dumps(without_descriptions(schema))
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        rows.append(
            f"| `{out.as_posix()}` | {repo} | `{upstream_dir}{path.name}` | `{commit}` ({date}) | "
            f"`{digest[:16]}` | {LICENCE} | {KINDS[key]} |"
        )
    files[Path(PROVENANCE.name)] = _provenance(rows).encode()
    return files


def _provenance(rows: list[str]) -> str:
    return "\n".join(
        [
            "# Carried CRD schemas: provenance",
            "",
            "Each JSON file under `schemas/` is the `openAPIV3Schema` of one custom resource version, taken from the",
            "upstream CustomResourceDefinition below by `extract.py` (written by it; do not edit by hand). The",
            "`description` keywords are dropped; everything else, `x-kubernetes-*` keys included, is as upstream has",
            "it (the script's docstring says why). The contract tests validate what the project renders against these",
            "files (`tests/contract/manifest_tools.py`), so a clone needs nothing outside the repository.",
            "",
            "The upstream projects are licensed under the Apache License 2.0; these files are derived from theirs.",
            "",
            "| carried file | upstream repository | upstream file | commit (date) | sha256 of the upstream file (first 16) | licence | rendered by |",
            "|---|---|---|---|---|---|---|",
            *rows,
            "",
            "## Regenerate",
            "",
            "1. Put the upstream CRD files, unchanged, in a folder with one subfolder per project: `kserve/`,",
            "   `monitoring.coreos.com/`, `trainer.kubeflow.org/`, `sparkoperator.k8s.io/`, `feast.dev/` (each fetched",
            "   from the repository, path and commit above; to move to a newer upstream, update `SOURCES` in",
            "   `extract.py` first).",
            "2. `make crds CRD_SOURCE=<that folder>` (or `python manifests/crds/extract.py --source <that folder>`).",
            "   To render another kind, add it to `KINDS` in `extract.py`; a test fails until its schema is carried.",
            "3. `python manifests/crds/extract.py --source <that folder> --check` exits 1 if the committed files",
            "   differ from what that folder gives.",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--source", type=Path, required=True, help="folder of upstream CRD YAMLs, one subfolder per project (see PROVENANCE.md)"
    )
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if the carried files differ")
    args = parser.parse_args(argv)
    files = build(args.source.resolve())
    if args.check:
        stale = [p for p, data in files.items() if not (HERE / p).is_file() or (HERE / p).read_bytes() != data]
        carried = {p.relative_to(HERE) for p in SCHEMAS_DIR.rglob("*.json")} if SCHEMAS_DIR.is_dir() else set()
        extra = sorted(carried - set(files))
        for p in stale:
            print(f"differs from {args.source}: manifests/crds/{p.as_posix()}", file=sys.stderr)
        for p in extra:
            print(f"not produced by any kind in KINDS: manifests/crds/{p.as_posix()}", file=sys.stderr)
        if stale or extra:
            print("run `make crds CRD_SOURCE=...` and commit the result", file=sys.stderr)
            return 1
        print(f"{len(files)} files match {args.source}")
        return 0
    if SCHEMAS_DIR.is_dir():  # a kind dropped from KINDS leaves no stale file behind
        for old in SCHEMAS_DIR.rglob("*.json"):
            if old.relative_to(HERE) not in files:
                old.unlink()
    for rel, data in files.items():
        target = HERE / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    total = sum(len(d) for p, d in files.items() if p.suffix == ".json")
    print(f"wrote {len(files) - 1} schemas ({total / 1024:.0f} KiB) and {PROVENANCE.name} under {HERE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
