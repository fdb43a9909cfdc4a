"""Every setting the project reads, in one place, read when asked (never at import time).

The same code runs on a laptop and on a cluster; only these environment variables differ.
Local defaults keep everything under one state directory; the cluster profile takes its
values from the `mlwf-settings` ConfigMap and the Secrets named in manifests/.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROFILES = ("local", "cluster")


@dataclass(frozen=True)
class Settings:
    profile: str
    state_dir: str  # a local path, or an s3:// prefix on a cluster
    mlflow_tracking_uri: str
    mlflow_artifact_root: str
    mlflow_experiment: str
    feast_registry: str  # a file path locally, a SQLAlchemy URL on a cluster
    feast_online: str  # a SQLite path locally, "redis://host:port" on a cluster
    feast_offline_root: str  # where the offline store's Parquet lives
    serve_host: str
    serve_port: int
    kserve_namespace: str
    kserve_mode: str  # "knative" (canaryTrafficPercent) or "standard" (spec.canary[])
    kserve_service_account: str
    canary_percent: int
    components_image: str
    serving_image: str

    @property
    def is_local(self) -> bool:
        return self.profile == "local"


def _env(name: str, default: str) -> str:
    value = os.environ.get(name, "").strip()
    return value or default


def default_state_dir() -> str:
    return str(Path.cwd() / ".state")


def get_settings() -> Settings:
    """Read the settings from the environment now; cheap, so callers need not cache."""
    profile = _env("MLWF_PROFILE", "local")
    if profile not in PROFILES:
        raise ValueError(f"MLWF_PROFILE must be one of {PROFILES}, got {profile!r}")
    state = _env("MLWF_STATE_DIR", default_state_dir())
    if not state.startswith("s3://"):
        state = str(Path(state).resolve())
    local_mlflow = Path(state) / "mlflow"
    return Settings(
        profile=profile,
        state_dir=state,
        mlflow_tracking_uri=_env("MLFLOW_TRACKING_URI", f"sqlite:///{local_mlflow / 'mlflow.db'}"),
        mlflow_artifact_root=_env("MLWF_MLFLOW_ARTIFACT_ROOT", str(local_mlflow / "artifacts")),
        mlflow_experiment=_env("MLWF_MLFLOW_EXPERIMENT", "mlwf"),
        feast_registry=_env("MLWF_FEAST_REGISTRY", str(Path(state) / "feast" / "registry.db")),
        feast_online=_env("MLWF_FEAST_ONLINE", str(Path(state) / "feast" / "online.db")),
        feast_offline_root=_env("MLWF_FEAST_OFFLINE_ROOT", f"{state}/feast/offline"),
        serve_host=_env("MLWF_SERVE_HOST", "127.0.0.1"),
        serve_port=int(_env("MLWF_SERVE_PORT", "18080")),
        kserve_namespace=_env("MLWF_KSERVE_NAMESPACE", "mlwf"),
        kserve_mode=_env("MLWF_KSERVE_MODE", "knative"),
        kserve_service_account=_env("MLWF_KSERVE_SERVICE_ACCOUNT", "mlwf-model-server"),
        canary_percent=int(_env("MLWF_CANARY_PERCENT", "10")),
        components_image=_env("MLWF_COMPONENTS_IMAGE", "ghcr.io/mlwf/components:0.1.0"),
        serving_image=_env("MLWF_SERVING_IMAGE", "ghcr.io/mlwf/serving:0.1.0"),
    )
