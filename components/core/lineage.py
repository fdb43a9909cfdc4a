"""Lineage: what each dataset version was made from, and how to trace a model or a row back to its source.

The state store holds, per dataset:

  ingest/<dataset>/manifests/<fingerprint>.json   one dataset version: its input files (URI, sha256, rows,
                                                  first ingestion time and run), suite version, code version
  ingest/<dataset>/latest.json                    the version the last run produced
  ingest/<dataset>/snapshots/<sha256>-<spec>.parquet   each input file's rows, normalised (source_line kept)
  validate/<dataset>/<fingerprint>.json           what validation made of that version (counts, quarantine)

A dataset fingerprint is the sha256 of (input files by URI and content, suite version, code version):
the same inputs checked by the same suite with the same code always give the same fingerprint, so
records keyed by it are written once and a rerun finds them. A model version carries the fingerprint
(MLflow tag `mlwf.dataset_fingerprint` and the bundle signature's lineage), so
model -> dataset version -> input files -> (entity key) -> file and line.
"""

from __future__ import annotations

import hashlib
import io
import json
from typing import Any

from components.core import storage
from components.core.paths import latest_path, manifest_path, validation_path

MANIFEST_FORMAT = "mlwf-ingest-manifest/1"


class LineageError(LookupError):
    """No lineage record for what was asked."""


def dataset_fingerprint(files: list[tuple[str, str]], suite_version: str, code_version: str) -> str:
    """sha256 over the (uri, sha256) of every input file, the suite version and the code version."""
    payload = {"files": sorted(files), "suite_version": suite_version, "code_version": code_version}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def read_json(path: str) -> dict[str, Any]:
    return dict(json.loads(storage.read_bytes(path)))


def _json_bytes(record: dict[str, Any]) -> bytes:
    return (json.dumps(record, indent=2, sort_keys=True, default=str) + "\n").encode()


def write_json(path: str, record: dict[str, Any]) -> None:
    storage.write_bytes(path, _json_bytes(record))


def write_once(path: str, record: dict[str, Any]) -> dict[str, Any]:
    """Write `record` unless one is there already; return what the store holds.

    Records are keyed by content fingerprints, so the first one written stays: its run id is the run
    that first produced that content, and a rerun changes no byte of it. Two runs racing on the same
    record agree: the creation is atomic (storage.create_once), and the loser returns the winner's record.
    """
    if storage.exists(path):
        return read_json(path)
    if storage.create_once(path, _json_bytes(record)):
        return record
    return read_json(path)


def latest_manifest(state_dir: str, dataset: str) -> dict[str, Any]:
    path = latest_path(state_dir, dataset)
    if not storage.exists(path):
        raise LineageError(f"dataset {dataset!r} has not been ingested under {state_dir} (no {path})")
    return manifest(state_dir, dataset, str(read_json(path)["dataset_fingerprint"]))


def manifest(state_dir: str, dataset: str, fingerprint: str) -> dict[str, Any]:
    path = manifest_path(state_dir, dataset, fingerprint)
    if not storage.exists(path):
        raise LineageError(f"no ingest manifest for dataset {dataset!r} version {fingerprint[:16]} (expected {path})")
    return read_json(path)


def describe_dataset(state_dir: str, dataset: str, fingerprint: str | None = None) -> dict[str, Any]:
    """A dataset version's manifest with its validation record (when validation ran)."""
    info = manifest(state_dir, dataset, fingerprint) if fingerprint else latest_manifest(state_dir, dataset)
    vpath = validation_path(state_dir, dataset, info["dataset_fingerprint"])
    info["validation"] = read_json(vpath) if storage.exists(vpath) else None
    return info


def find_rows(info: dict[str, Any], entity_column: str, key: str) -> list[dict[str, Any]]:
    """Where rows with entity `key` came from: file, sha256 and line, from the per-file snapshots."""
    import pandas as pd

    found = []
    for f in info["files"]:
        snap = pd.read_parquet(io.BytesIO(storage.read_bytes(f["snapshot"]))) if storage.exists(f["snapshot"]) else None
        if snap is None or entity_column not in snap.columns:
            continue
        hits = snap[snap[entity_column].astype(str) == key]
        for _, row in hits.iterrows():
            found.append(
                {
                    "file": f["uri"],
                    "sha256": f["sha256"],
                    "source_line": int(row["source_line"]),
                    "row": {k: (None if pd.isna(v) else str(v)) for k, v in row.items()},
                }
            )
    return found


def is_model_ref(ref: str) -> bool:
    """`name/3`, `name@alias` or `models:/name/3` name a model version; anything else a dataset."""
    if ref.startswith("models:/") or "@" in ref:
        return True
    head, _, tail = ref.rpartition("/")
    return bool(head) and tail.isdigit() and not ref.endswith((".yaml", ".yml"))


def model_version(client: Any, ref: str) -> Any:
    ref = ref.removeprefix("models:/")
    if "@" in ref:
        name, alias = ref.split("@", 1)
        return client.get_model_version_by_alias(name, alias)
    name, version = ref.rsplit("/", 1)
    return client.get_model_version(name, version)


def describe_model(ref: str) -> dict[str, Any]:
    """A registered model version's lineage: its run's tags, the bundle signature's lineage, and the
    dataset version (input files) it was trained on, from the state store."""
    import tempfile

    import mlflow

    from components.core import tracking
    from components.core.settings import get_settings

    settings = get_settings()
    client = tracking.configure(settings)
    try:
        mv = model_version(client, ref)
    except Exception as err:  # MlflowException for an unknown name, version or alias
        raise LineageError(f"no model version {ref!r} in {settings.mlflow_tracking_uri}: {str(err).splitlines()[0]}") from err
    run = client.get_run(mv.run_id)
    tags = {k: v for k, v in run.data.tags.items() if k.startswith("mlwf.") or k == "mlflow.source.git.commit"}
    signature: dict[str, Any] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = mlflow.artifacts.download_artifacts(artifact_uri=f"{mv.source}/signature.json", dst_path=tmp)
            signature = dict(json.loads(open(path).read()).get("lineage", {}))
    except Exception:  # an old bundle or an unreachable artifact store: the run's tags still say it
        signature = {}
    dataset = signature.get("dataset") or tags.get("mlwf.dataset")
    fingerprint = signature.get("dataset_fingerprint") or tags.get("mlwf.dataset_fingerprint")
    info: dict[str, Any] = {
        "model": mv.name,
        "version": str(mv.version),
        "run_id": mv.run_id,
        "source": mv.source,
        "tags": tags,
        "bundle_lineage": signature,
        "dataset": dataset,
        "dataset_fingerprint": fingerprint,
    }
    try:
        info["dataset_version"] = describe_dataset(settings.state_dir, str(dataset), str(fingerprint)) if dataset and fingerprint else None
    except LineageError as err:
        info["dataset_version"] = None
        info["dataset_missing"] = str(err)
    return info


def format_dataset(info: dict[str, Any]) -> str:
    lines = [
        f"dataset {info['dataset']} version {info['dataset_fingerprint'][:16]} ({info['dataset_fingerprint']})",
        f"  source        {info['source']}",
        f"  rows          {info['rows']} from {len(info['files'])} file(s)",
        f"  suite version {info['suite_version']} (spec sha256 {info['spec_sha256'][:16]})",
        f"  code version  {info['code_version']}",
        f"  first run     {info['run_id']} at {info['created_at']}",
    ]
    v = info.get("validation")
    if v:
        lines.append(f"  validation    {v['valid']} valid, {v['quarantined']} quarantined -> {v['quarantine_store']}")
    lines.append("  files (uri, sha256, rows, first ingested, by run):")
    for f in info["files"]:
        lines.append(f"    {f['uri']}  {f['sha256'][:16]}  {f['rows']} rows  {f['ingested_at']}  {f['first_run_id']}")
    return "\n".join(lines)


def format_model(info: dict[str, Any]) -> str:
    lines = [
        f"model {info['model']} version {info['version']} (run {info['run_id']})",
        f"  bundle        {info['source']}",
        f"  code version  {info['tags'].get('mlflow.source.git.commit', info['bundle_lineage'].get('code_version', '?'))}",
        f"  trained on    dataset {info['dataset']} version {str(info['dataset_fingerprint'])[:16]}",
    ]
    if info.get("dataset_version"):
        lines.append(format_dataset(info["dataset_version"]))
    else:
        lines.append(f"  (no ingest manifest in this state store: {info.get('dataset_missing', 'unknown dataset')})")
    return "\n".join(lines)
