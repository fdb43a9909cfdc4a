"""MLflow: runs, the model registry and its aliases, with fail-fast client settings.

Model versions point at the bundle logged as run artifacts. A version carries the fingerprint of
everything that went into it (data, parameters, code), so a rerun with identical inputs finds and
reuses it instead of registering a duplicate. Aliases: `challenger` after a passed gate, `champion`
after a successful deployment.
"""

from __future__ import annotations

import logging
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.core.settings import Settings

INPUTS_TAG = "mlwf.inputs_fingerprint"
BUNDLE_TAG = "mlwf.bundle_sha256"
PIPELINE_RUN_TAG = "mlwf.pipeline_run"  # the KFP run id (dsl.PIPELINE_JOB_ID_PLACEHOLDER), as ingest records it
PIPELINE_RUN_NAME_TAG = "mlwf.pipeline_run_name"  # locally: the run's directory under <state>/kfp
PIPELINE_RUN_URL_TAG = "mlwf.pipeline_run_url"  # on a cluster with MLWF_KFP_UI_URL: the run's page in the KFP UI
IMAGE_TAG = "mlwf.image"
DESCRIPTION_LIMIT = 5000  # model_versions.description is VARCHAR(5000) in MLflow's SQL stores (SQLite alone ignores it)

log = logging.getLogger(__name__)


def configure(settings: Settings) -> Any:
    """Point MLflow at the tracking store; returns an MlflowClient. Fails fast when a server is down."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = settings.mlflow_tracking_uri
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(settings.mlflow_experiment)
    if experiment is None:
        # With a database URI the client writes artifacts itself (next to the database locally); an
        # MLflow server configures its own artifact store and proxies it.
        location = None if uri.startswith(("http://", "https://")) else settings.mlflow_artifact_root
        if location and "://" not in location:
            Path(location).mkdir(parents=True, exist_ok=True)
            location = Path(location).as_uri()
        try:
            client.create_experiment(settings.mlflow_experiment, artifact_location=location)
        except Exception:  # created concurrently by another step: read it back below
            if client.get_experiment_by_name(settings.mlflow_experiment) is None:
                raise
    mlflow.set_experiment(settings.mlflow_experiment)
    return client


def code_version() -> str:
    """The git commit of the code, from the image's build arg or the working tree (with -dirty)."""
    env = os.environ.get("MLWF_CODE_VERSION")
    if env:
        return env
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True, timeout=5
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@dataclass(frozen=True)
class RegisteredVersion:
    name: str
    version: str
    run_id: str
    source: str
    reused: bool


def find_version_by_inputs(client: Any, model_name: str, fingerprint: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name = '{model_name}' and tag.`{INPUTS_TAG}` = '{fingerprint}'")
    except MlflowException:
        return None
    ready = [v for v in versions if v.status == "READY"]
    return min(ready, key=lambda v: int(v.version)) if ready else None


def register(client: Any, model_name: str, run_id: str, source: str, tags: dict[str, str], description: str) -> str:
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(model_name, description="Tabular classifier bundles (mlwf)")
    except MlflowException as err:
        if "RESOURCE_ALREADY_EXISTS" not in str(err.error_code):
            raise
    version = client.create_model_version(model_name, source=source, run_id=run_id, tags=tags, description=description)
    return str(version.version)


def alias_version(client: Any, model_name: str, alias: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(model_name, alias)
    except MlflowException:
        return None


def download_bundle(client: Any, version: Any, target: str) -> str:
    """Fetch a registered version's bundle into `target`; returns the local directory."""
    import mlflow

    return str(mlflow.artifacts.download_artifacts(artifact_uri=version.source, dst_path=target))


# --- names and links that say what a run is ---------------------------------------------------------------


def pipeline_run_id(value: str) -> str:
    """The KFP run id a step was given, or "" when there is none (a direct call) or the runner left the
    placeholder unresolved: a tag or link built from `{{$.pipeline_job_uuid}}` would lead nowhere."""
    value = (value or "").strip()
    if "{{" in value:
        log.warning("pipeline run id placeholder was not resolved (%s): not recorded", value)
        return ""
    return value


def short_run_id(pipeline_run: str) -> str:
    """What a person reads and types: the first 8 characters of a KFP run UUID (kfp.local's ids are 8 digits)."""
    return pipeline_run.split("-", 1)[0][:8]


def run_name(dataset: str, version: str | None = None, pipeline_run: str = "") -> str:
    """`transactions · candidate v3 · run 1a2b3c4d`: the dataset, the registered version the run produced
    ("training" until it is registered, at the very end of the run) and the pipeline run that made it."""
    parts = [dataset, f"candidate v{version}" if version else "training"]
    if pipeline_run:
        parts.append(f"run {short_run_id(pipeline_run)}")
    return " · ".join(parts)


def pipeline_run_url(kfp_ui_url: str, pipeline_run: str) -> str:
    """The run's page in the KFP UI (`<ui>/#/runs/details/<uuid>`, behind the Kubeflow dashboard too), or ""."""
    if not kfp_ui_url or not pipeline_run:
        return ""
    return f"{kfp_ui_url.rstrip('/')}/#/runs/details/{pipeline_run}"


def pipeline_run_tags(settings: Settings, pipeline_run: str, pipeline_run_name: str = "") -> dict[str, str]:
    """Tags linking an MLflow run to the pipeline run that made it. The URL only on a cluster: a kfp.local
    run id exists in no KFP UI."""
    tags: dict[str, str] = {}
    pipeline_run = pipeline_run_id(pipeline_run)
    if pipeline_run:
        tags[PIPELINE_RUN_TAG] = pipeline_run
        url = "" if settings.is_local else pipeline_run_url(settings.kfp_ui_url, pipeline_run)
        if url:
            tags[PIPELINE_RUN_URL_TAG] = url
    name = pipeline_run_id(pipeline_run_name)
    if name:
        tags[PIPELINE_RUN_NAME_TAG] = name
    return tags


def with_evaluation(description: str, evaluation: str) -> str:
    """A version's description: its first paragraph (what training wrote) and the latest evaluation, within
    the registry's column size. A re-evaluation (a rerun reusing the version) replaces the previous one."""
    head = (description or "").split("\n\n", 1)[0].strip()
    text = f"{head}\n\n{evaluation.strip()}" if head else evaluation.strip()
    if len(text) > DESCRIPTION_LIMIT:
        cut = "\n… (cut to fit the registry; every check is in the run's evaluation/gate.json)"
        text = text[: DESCRIPTION_LIMIT - len(cut)].rsplit("\n", 1)[0] + cut
    return text


def load_champion(client: Any, model_name: str, candidate_version: str) -> tuple[Any, Any] | None:
    """The registry's champion (its model version and loaded bundle), or None when there is none or it is the
    candidate itself. The bundle is loaded whole into memory, so the download directory does not outlive this."""
    version = alias_version(client, model_name, "champion")
    if version is None or str(version.version) == str(candidate_version):
        return None
    import tempfile

    from components.core import bundle as bundle_lib

    with tempfile.TemporaryDirectory() as tmp:
        return version, bundle_lib.load(download_bundle(client, version, tmp))
