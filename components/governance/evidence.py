"""Gather the readiness evidence of a registered model version: what MLflow, the state store and the repository's
files say, as one JSON-ready dict that components/governance/readiness.py judges.

Read-only: nothing here writes to the registry or the state store. Other stages' outputs are read as files and
MLflow records (gate.json, the validation record, the monitor's gauges), never by importing their modules, so the
governance stage sits beside them. The cluster's recurring runs are listed by a function the caller passes
(pipelines/cli.py builds it from kfp.Client): this stage never imports the pipelines.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from components.core import lineage, paths, storage, tracking
from components.core.settings import Settings
from components.governance.readiness import ReadinessError
from components.governance.scan import DIGEST, final_user, secret_findings

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = ("components/Dockerfile", "components/Dockerfile.cuda", "components/Dockerfile.spark", "serving/Dockerfile")
ALERT_RULES = "manifests/base/prometheusrule.yaml"
IMAGE_RECORD = "build/images.json"
PACKAGE_GLOBS = ("pipelines/compiled/*.yaml", "build/*.yaml")
# Environment variables whose values are secrets (Secrets on a cluster): a package must hold none of their values.
SECRET_VARIABLES = (
    "AWS_SECRET_ACCESS_KEY",
    "AWS_ACCESS_KEY_ID",
    "MLFLOW_TRACKING_PASSWORD",
    "MLWF_FEAST_REGISTRY",
    "MLWF_PII_HASH_KEY",
    "KFP_TOKEN",
    "KFP_COOKIE",
)
LOG_DAYS = 7  # request logs read for the privacy item: the last week
LOG_ROWS = 5000
HASH = re.compile(r"^[0-9a-f]{64}$")

ScheduleLister = Callable[[], list[str]]


def resolve(client: Any, ref: str) -> Any:
    """The model version `ref` names (NAME@ALIAS, NAME/VERSION, models:/...), or a one-line ReadinessError."""
    if "@" not in ref and not lineage.is_model_ref(ref):
        raise ReadinessError(f"{ref!r} names no model version: use NAME@ALIAS (e.g. transactions_classifier@champion) or NAME/VERSION")
    try:
        return lineage.model_version(client, ref)
    except Exception as err:  # MlflowException: unknown model, version or alias
        raise ReadinessError(f"no model version {ref!r} in the registry: {str(err).splitlines()[0]}") from err


def _artifact_text(client: Any, run_id: str, path: str, tmp: str) -> str | None:
    try:
        return Path(client.download_artifacts(run_id, path, tmp)).read_text(encoding="utf-8")
    except Exception:  # absent (never evaluated) or unreachable: the item that needs it says so
        return None


def artifact_link(settings: Settings, run: Any, path: str) -> str:
    """Where a person opens a run's artifact: the MLflow UI when the tracking store is a server, else its URI."""
    uri = settings.mlflow_tracking_uri
    if uri.startswith(("http://", "https://")):
        return f"{uri.rstrip('/')}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}/artifacts/{path}"
    return f"{run.info.artifact_uri.rstrip('/')}/{path}"


def _bundle(client: Any, mv: Any, tmp: str) -> tuple[dict[str, Any], dict[str, Any], Path | None]:
    """The bundle's facts, its signature, and its local directory (None when it cannot be fetched or verified)."""
    from components.core import bundle as bundle_lib

    try:
        directory = Path(tracking.download_bundle(client, mv, tmp))
        manifest = bundle_lib.verify(directory)  # every listed file's sha256: a tampered bundle proves nothing
    except Exception as err:
        return {"error": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}", "files": []}, {}, None
    signature = json.loads((directory / bundle_lib.SIGNATURE).read_text())
    facts: dict[str, Any] = {"files": sorted(manifest), "background_sealed": bundle_lib.BACKGROUND in manifest}
    if facts["background_sealed"]:
        background = json.loads((directory / bundle_lib.BACKGROUND).read_text())
        facts["background_rows"] = int(background.get("rows", 0))
        facts["first_row"] = {k: v[0] for k, v in (background.get("columns") or {}).items() if v}
    return facts, signature, directory


def _explain_probe(settings: Settings, model_name: str, version: str, row: dict[str, Any]) -> str:
    """When this version serves locally (the deploy step's server record names it): `:explain` on one background
    row, answered how. "" when it does not serve here (a cluster's InferenceService is not called from here)."""
    import requests

    record = Path(settings.state_dir) / "serving" / paths.service_name(model_name) / "server.json"
    if storage.is_s3(settings.state_dir) or not record.exists() or not row:
        return ""
    served = json.loads(record.read_text())
    if str(served.get("version")) != version:
        return ""
    url = str(served["predict_url"]).replace(":predict", ":explain")
    try:
        response = requests.post(url, json={"instances": [row]}, timeout=30)
    except requests.RequestException as err:
        return f"no answer from {url} ({type(err).__name__})"
    ok = response.status_code == 200 and "explanations" in response.json()
    return f"{response.status_code} from {url}" + ("" if ok else f": {response.text[:200]}")


def _input_example_columns(directory: Path | None) -> list[str]:
    if directory is None or not (directory / "input_example.json").exists():
        return []
    doc = json.loads((directory / "input_example.json").read_text())
    if isinstance(doc, dict) and "columns" in doc:
        return [str(c) for c in doc["columns"]]
    if isinstance(doc, list) and doc and isinstance(doc[0], dict):
        return sorted({str(k) for row in doc for k in row})
    return sorted(str(k) for k in doc) if isinstance(doc, dict) else []


def _request_logs(settings: Settings, model_name: str, now: datetime) -> tuple[list[str], int, int]:
    """Column names of the served model's recent request logs, rows read, and entity values that are not hashes."""
    from components.core.request_log import read_window

    frame = read_window(paths.request_log_root(settings.state_dir), paths.service_name(model_name), now - timedelta(days=LOG_DAYS), now)
    frame = frame.tail(LOG_ROWS)
    columns = sorted(c.removeprefix("f.") for c in frame.columns if c.startswith("f."))
    entities = [str(e) for e in frame["entity"].dropna()] if "entity" in frame.columns else []
    return columns, len(frame), sum(1 for e in entities if not HASH.match(e))


def _privacy(
    settings: Settings, spec: Any, signature: dict[str, Any], directory: Path | None, model_name: str, now: datetime
) -> dict[str, Any]:
    if spec is None:
        return {"checked": False, "error": "the dataset spec could not be loaded (pass --dataset)"}
    if directory is None:
        return {"checked": False, "error": "the bundle could not be fetched and verified", "pii": list(spec.pii)}
    columns, rows, unhashed = _request_logs(settings, model_name, now)
    return {
        "checked": True,
        "pii": list(spec.pii),
        "entity": spec.entity,
        "hash_key": bool(settings.pii_hash_key),
        "features": [f["name"] for f in signature.get("features", [])],
        "example_columns": _input_example_columns(directory),
        "log_columns": columns,
        "log_rows": rows,
        "log_entities_unhashed": unhashed,
    }


def _monitoring(settings: Settings, model_name: str, schedules: ScheduleLister | None) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {"rules_file": ALERT_RULES, "alert_rules": []}
    rules = REPO / ALERT_RULES
    if rules.exists():
        for doc in yaml.safe_load_all(rules.read_text()):
            for group in ((doc or {}).get("spec") or {}).get("groups", []):
                out["alert_rules"] += [r["alert"] for r in group.get("rules", []) if "alert" in r]
    gauges = paths.drift_gauges_path(settings.state_dir, paths.service_name(model_name))
    out["gauges"] = gauges
    if storage.exists(gauges):
        for line in storage.read_bytes(gauges).decode().splitlines():
            if line.startswith("mlwf_monitor_last_run_timestamp_seconds"):
                out["last_run"] = datetime.fromtimestamp(float(line.rsplit(" ", 1)[1]), UTC).isoformat()
    if schedules is not None:
        try:
            out["schedules"] = schedules()
        except Exception as err:  # the KFP API unreachable: said, and judged on what else is known
            out["schedule_error"] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:300]
    return out


def _images(settings: Settings) -> dict[str, Any]:
    out: dict[str, Any] = {"record": IMAGE_RECORD, "pinned": {}, "unpinned": {}, "dockerfile_users": {}}
    record = REPO / IMAGE_RECORD
    if record.exists():
        for name, entry in json.loads(record.read_text()).get("images", {}).items():
            ref = str(entry.get("reference", ""))
            (out["pinned"] if DIGEST.search(ref) else out["unpinned"])[name] = ref
    if settings.step_image:  # inside a compiled package: the image this very step runs in, and its user
        key = "pinned" if DIGEST.search(settings.step_image) else "unpinned"
        out[key]["this step"] = settings.step_image
        out["uid"] = os.getuid()
    for name in DOCKERFILES:
        if (REPO / name).exists():
            out["dockerfile_users"][name] = final_user((REPO / name).read_text())
    return out


def _secrets() -> dict[str, Any]:
    values = {name: os.environ[name] for name in SECRET_VARIABLES if os.environ.get(name)}
    packages = sorted({p for pattern in PACKAGE_GLOBS for p in REPO.glob(pattern)})
    return {
        "packages": [str(p.relative_to(REPO)) for p in packages],
        "compared": sorted(values),
        "findings": {str(p.relative_to(REPO)): secret_findings(p.read_text(), values) for p in packages},
    }


def gather(
    ref: str, settings: Settings, dataset_spec: str = "", schedules: ScheduleLister | None = None, now: datetime | None = None
) -> dict[str, Any]:
    """Everything the checklist judges for the model version `ref`. Raises ReadinessError (one line) only for a
    reference that names no version; any other missing piece is recorded as missing, for its item to fail."""
    from components.core.spec import SpecError, load_spec

    now = now or datetime.now(UTC)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a progress bar per small file
    client = tracking.configure(settings)
    mv = resolve(client, ref)
    name, version = mv.name, str(mv.version)
    run = client.get_run(mv.run_id)
    parent_id = run.data.tags.get("mlflow.parentRunId")
    parent = client.get_run(parent_id) if parent_id else None
    params = {**(parent.data.params if parent else {}), **run.data.params}
    tags = {**(parent.data.tags if parent else {}), **run.data.tags}
    ev: dict[str, Any] = {"ref": ref, "model": name, "version": version, "now": now.isoformat(), "bundle_uri": mv.source}
    ev["gate_tag"] = mv.tags.get("mlwf.gate")
    ev["gate_policy_tag"] = mv.tags.get("mlwf.gate_policy")
    dataset = tags.get("mlwf.dataset", "")
    spec = None
    try:
        spec = load_spec(dataset_spec or dataset)
    except (SpecError, ValueError) as err:
        ev["spec_error"] = str(err).splitlines()[0]
    ev["sensitive"] = list(spec.sensitive) if spec else []
    ev["max_bad_fraction"] = spec.max_bad_fraction if spec else None
    with tempfile.TemporaryDirectory(prefix="readiness-") as tmp:
        facts, signature, directory = _bundle(client, mv, tmp)
        probe = _explain_probe(settings, name, version, facts.pop("first_row", {}))
        ev["bundle"] = {**facts, **({"explain_probe": probe} if probe else {})}
        sig_lineage = signature.get("lineage", {})
        fingerprint = sig_lineage.get("dataset_fingerprint") or tags.get("mlwf.dataset_fingerprint", "")
        gate_text = _artifact_text(client, mv.run_id, "evaluation/gate.json", tmp)
        ev["gate"] = json.loads(gate_text) if gate_text else None
        run_card = _artifact_text(client, mv.run_id, "model_card.md", tmp) or ""
        bundle_card = (directory / "model_card.md").read_text() if directory and (directory / "model_card.md").exists() else ""
        ev["privacy"] = _privacy(settings, spec, signature, directory, name, now)
    found = {k: len(v) for k, v in (("run artifact model_card.md", run_card), ("bundle model_card.md", bundle_card)) if v}
    ev["model_card"] = {"found": found, "has_evaluation": "## Evaluation (gate:" in run_card}
    if ev["gate"] is not None:
        ev["evaluation_report"] = artifact_link(settings, run, "evaluation/report.html")
    ev["links"] = {
        k: v for k, v in (("evaluation_report", ev.get("evaluation_report")), ("mlflow_run", artifact_link(settings, run, ""))) if v
    }
    if tags.get(tracking.PIPELINE_RUN_URL_TAG):
        ev["links"]["pipeline_run"] = tags[tracking.PIPELINE_RUN_URL_TAG]
    validation = paths.validation_path(settings.state_dir, dataset, fingerprint) if dataset and fingerprint else ""
    ev["validation_path"] = validation
    ev["validation"] = lineage.read_json(validation) if validation and storage.exists(validation) else None
    manifest = paths.manifest_path(settings.state_dir, dataset, fingerprint) if dataset and fingerprint else ""
    ev["lineage"] = {
        "dataset_fingerprint": fingerprint,
        "code_version": sig_lineage.get("code_version") or tags.get("mlwf.code_version"),
        "feature_service": sig_lineage.get("feature_service") or tags.get("mlwf.feature_service"),
        "training_set_sha256": sig_lineage.get("training_set_sha256") or tags.get("mlwf.training_set_sha256"),
        "manifest": manifest if manifest and storage.exists(manifest) else "",
    }
    inputs = mv.tags.get(tracking.INPUTS_TAG, "")
    reuse = tracking.find_version_by_inputs(client, name, inputs) if inputs else None
    ev["reproducibility"] = {
        "params": {k: v for k, v in params.items() if not k.startswith("env.")},
        "environment": {k.removeprefix("env."): v for k, v in params.items() if k.startswith("env.")},
        "inputs_fingerprint": inputs,
        "reused_by": str(reuse.version) if reuse is not None else None,
    }
    previous = ((ev["gate"] or {}).get("champion") or {}).get("version")
    ev["rollback"] = _rollback(client, name, str(previous)) if previous and str(previous) != version else {}
    ev["monitoring"] = _monitoring(settings, name, schedules)
    ev["images"] = _images(settings)
    ev["secrets"] = _secrets()
    return ev


def _rollback(client: Any, name: str, version: str) -> dict[str, Any]:
    try:
        mv = client.get_model_version(name, version)
    except Exception as err:  # deleted since: no target
        return {"version": version, "status": f"missing ({str(err).splitlines()[0][:120]})"}
    return {"version": version, "status": mv.status, "gate": mv.tags.get("mlwf.gate"), "source": mv.source}
