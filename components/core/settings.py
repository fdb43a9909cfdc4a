"""Every setting the project reads, in one place, read when asked (never at import time).

The same code runs on a laptop and on a cluster; only these environment variables differ.
Local defaults keep everything under one state directory; the cluster profile takes its
values from the `mlwf-settings` ConfigMap and the Secrets named in manifests/.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    components_image: str
    serving_image: str
    # GPU placement of the train step's pods (and of TrainJob nodes): JSON in the environment.
    gpu_tolerations: tuple[dict[str, Any], ...] = ()  # MLWF_GPU_TOLERATIONS: a toleration object or a list of them
    gpu_node_selector: dict[str, str] = field(default_factory=dict)  # MLWF_GPU_NODE_SELECTOR: {"label": "value"}
    # Multi-node training through a Kubeflow Trainer TrainJob (train step with nodes > 1).
    trainjob_runtime: str = "torch-distributed"  # MLWF_TRAINJOB_RUNTIME: the ClusterTrainingRuntime to use
    trainjob_namespace: str = "mlwf"  # MLWF_TRAINJOB_NAMESPACE
    trainjob_service_account: str = ""  # MLWF_TRAINJOB_SERVICE_ACCOUNT: empty keeps the runtime's
    trainjob_timeout_s: int = 86400  # MLWF_TRAINJOB_TIMEOUT_S: how long the step waits for the TrainJob
    trainjob_image: str = ""  # MLWF_TRAINJOB_IMAGE: the image of the TrainJob nodes (a CUDA build); default: components_image
    # Progressive canary rollout (components/deployment/rollout.py): traffic steps, each followed by an analysis.
    canary_steps: tuple[int, ...] = (10, 25, 50, 100)  # MLWF_CANARY_STEPS="10,25,50,100"
    canary_max_failed_analyses: int = 2  # MLWF_CANARY_MAX_FAILED_ANALYSES: this many failed analyses roll back
    canary_step_seconds: float = 3.0  # MLWF_CANARY_STEP_SECONDS: observation window per step (cluster default 300)
    canary_min_requests: int = 50  # MLWF_CANARY_MIN_REQUESTS: per side and analysis; fewer is inconclusive
    canary_max_success_drop: float = 0.01  # MLWF_CANARY_MAX_SUCCESS_DROP: canary success rate vs stable's
    canary_max_p99_ratio: float = 1.5  # MLWF_CANARY_MAX_P99_RATIO: canary p99 <= stable p99 * ratio + slack
    canary_p99_slack_ms: float = 25.0  # MLWF_CANARY_P99_SLACK_MS
    canary_max_psi: float = 0.25  # MLWF_CANARY_MAX_PSI: PSI between canary and stable predictions
    prometheus_url: str = ""  # MLWF_PROMETHEUS_URL: the cluster analysis queries it (required on a cluster)
    # The image this step's container runs. `mlwf compile` writes it into every step of the package (container
    # env), so it is the pod's image exactly; empty outside a compiled package (kfp.local, a direct call).
    step_image: str = ""  # MLWF_STEP_IMAGE: set by the package, not by hand
    kfp_ui_url: str = ""  # MLWF_KFP_UI_URL: the KFP UI, e.g. https://kubeflow.example.com/pipeline; links MLflow runs to pipeline runs
    # MLWF_PII_HASH_KEY (from a Secret on a cluster): the HMAC-SHA256 key of personal join keys (components/core/privacy.py).
    # Never in repr: a Settings object printed or logged must not carry the secret.
    pii_hash_key: str = field(default="", repr=False)
    # MLWF_ENGINE: what the data steps run on: "pandas" (one process) or "spark" (a local[*] SparkSession, components/core/spark.py).
    engine: str = "pandas"
    # The data steps on a cluster as SparkApplications (components/core/spark_application.py; Kubeflow Spark Operator).
    spark_image: str = ""  # MLWF_SPARK_IMAGE: an image with Spark's entrypoint and the project installed; default: components_image
    spark_namespace: str = "mlwf"  # MLWF_SPARK_NAMESPACE
    spark_service_account: str = "mlwf-spark"  # MLWF_SPARK_SERVICE_ACCOUNT: what the driver runs as (manifests/base/spark.yaml)
    spark_main_file: str = "local:///opt/venv/lib/python3.11/site-packages/components/data/spark_entry.py"  # MLWF_SPARK_MAIN_FILE
    spark_driver_cores: int = 1  # MLWF_SPARK_DRIVER_CORES
    spark_driver_memory: str = "2g"  # MLWF_SPARK_DRIVER_MEMORY (Spark's notation: 512m, 2g)
    spark_executor_cores: int = 1  # MLWF_SPARK_EXECUTOR_CORES
    spark_executor_memory: str = "2g"  # MLWF_SPARK_EXECUTOR_MEMORY
    spark_executor_instances: int = 2  # MLWF_SPARK_EXECUTOR_INSTANCES
    spark_timeout_s: int = 7200  # MLWF_SPARK_TIMEOUT_S: how long a data step waits for its SparkApplication
    spark_ttl_s: int = 86400  # MLWF_SPARK_TTL_S: a finished SparkApplication (and its driver's log) is kept this long

    @property
    def is_local(self) -> bool:
        return self.profile == "local"


def _env(name: str, default: str) -> str:
    value = os.environ.get(name, "").strip()
    return value or default


_TOLERATION_KEYS = {"key", "operator", "value", "effect", "tolerationSeconds"}


def gpu_tolerations(text: str) -> tuple[dict[str, Any], ...]:
    """MLWF_GPU_TOLERATIONS: one Kubernetes toleration object or a list of them, as JSON."""
    try:
        data = json.loads(text)
    except ValueError as err:
        raise ValueError(f"MLWF_GPU_TOLERATIONS is not JSON: {err}") from err
    items = [data] if isinstance(data, dict) else data
    if not isinstance(items, list) or not all(isinstance(t, dict) for t in items):
        raise ValueError(f"MLWF_GPU_TOLERATIONS must be a toleration object or a list of them, got {text!r}")
    for toleration in items:
        unknown = sorted(set(toleration) - _TOLERATION_KEYS)
        if unknown:
            raise ValueError(f"MLWF_GPU_TOLERATIONS: unknown toleration field(s) {unknown}; allowed: {sorted(_TOLERATION_KEYS)}")
    return tuple(items)


def gpu_node_selector(text: str) -> dict[str, str]:
    """MLWF_GPU_NODE_SELECTOR: a JSON object of node labels, e.g. {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}."""
    try:
        data = json.loads(text)
    except ValueError as err:
        raise ValueError(f"MLWF_GPU_NODE_SELECTOR is not JSON: {err}") from err
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise ValueError(f"MLWF_GPU_NODE_SELECTOR must be a JSON object of string labels, got {text!r}")
    return data


def canary_steps(text: str) -> tuple[int, ...]:
    """MLWF_CANARY_STEPS: comma-separated traffic percents, rising strictly and ending at 100."""
    try:
        steps = tuple(int(part) for part in text.replace(" ", "").split(",") if part)
    except ValueError as err:
        raise ValueError(f"MLWF_CANARY_STEPS must be comma-separated integer percents, got {text!r}") from err
    if not steps or list(steps) != sorted(set(steps)) or steps[0] < 1 or steps[-1] != 100:
        raise ValueError(f"MLWF_CANARY_STEPS must rise strictly from at least 1 to 100, got {text!r}")
    return steps


ENGINES = ("pandas", "spark")


def engine(text: str) -> str:
    """MLWF_ENGINE: pandas (the default) or spark; any other value is refused, naming the choices."""
    value = text.strip().lower()
    if value not in ENGINES:
        raise ValueError(f"MLWF_ENGINE must be one of {ENGINES}, got {text!r}")
    return value


PII_HASH_KEY_MIN_CHARS = 16


def pii_hash_key(text: str) -> str:
    """MLWF_PII_HASH_KEY: empty (no key) or a secret of at least 16 characters; a short key makes a keyed hash guessable."""
    if text and len(text) < PII_HASH_KEY_MIN_CHARS:
        raise ValueError(f"MLWF_PII_HASH_KEY must be at least {PII_HASH_KEY_MIN_CHARS} characters (a random secret), got {len(text)}")
    return text


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
        components_image=_env("MLWF_COMPONENTS_IMAGE", "ghcr.io/mlwf/components:0.1.0"),
        serving_image=_env("MLWF_SERVING_IMAGE", "ghcr.io/mlwf/serving:0.1.0"),
        gpu_tolerations=gpu_tolerations(_env("MLWF_GPU_TOLERATIONS", "[]")),
        gpu_node_selector=gpu_node_selector(_env("MLWF_GPU_NODE_SELECTOR", "{}")),
        trainjob_runtime=_env("MLWF_TRAINJOB_RUNTIME", "torch-distributed"),
        trainjob_namespace=_env("MLWF_TRAINJOB_NAMESPACE", _env("MLWF_KSERVE_NAMESPACE", "mlwf")),
        trainjob_service_account=_env("MLWF_TRAINJOB_SERVICE_ACCOUNT", ""),
        trainjob_timeout_s=int(_env("MLWF_TRAINJOB_TIMEOUT_S", "86400")),
        trainjob_image=_env("MLWF_TRAINJOB_IMAGE", _env("MLWF_COMPONENTS_IMAGE", "ghcr.io/mlwf/components:0.1.0")),
        canary_steps=canary_steps(_env("MLWF_CANARY_STEPS", "10,25,50,100")),
        canary_max_failed_analyses=int(_env("MLWF_CANARY_MAX_FAILED_ANALYSES", "2")),
        # A few seconds of replayed traffic locally; on a cluster a window must span several Prometheus scrapes.
        canary_step_seconds=float(_env("MLWF_CANARY_STEP_SECONDS", "3" if profile == "local" else "300")),
        canary_min_requests=int(_env("MLWF_CANARY_MIN_REQUESTS", "50")),
        canary_max_success_drop=float(_env("MLWF_CANARY_MAX_SUCCESS_DROP", "0.01")),
        canary_max_p99_ratio=float(_env("MLWF_CANARY_MAX_P99_RATIO", "1.5")),
        canary_p99_slack_ms=float(_env("MLWF_CANARY_P99_SLACK_MS", "25")),
        canary_max_psi=float(_env("MLWF_CANARY_MAX_PSI", "0.25")),
        prometheus_url=_env("MLWF_PROMETHEUS_URL", ""),
        step_image=_env("MLWF_STEP_IMAGE", ""),
        kfp_ui_url=_env("MLWF_KFP_UI_URL", ""),
        pii_hash_key=pii_hash_key(_env("MLWF_PII_HASH_KEY", "")),
        engine=engine(_env("MLWF_ENGINE", "pandas")),
        spark_image=_env("MLWF_SPARK_IMAGE", _env("MLWF_COMPONENTS_IMAGE", "ghcr.io/mlwf/components:0.1.0")),
        spark_namespace=_env("MLWF_SPARK_NAMESPACE", _env("MLWF_KSERVE_NAMESPACE", "mlwf")),
        spark_service_account=_env("MLWF_SPARK_SERVICE_ACCOUNT", "mlwf-spark"),
        spark_main_file=_env("MLWF_SPARK_MAIN_FILE", "local:///opt/venv/lib/python3.11/site-packages/components/data/spark_entry.py"),
        spark_driver_cores=int(_env("MLWF_SPARK_DRIVER_CORES", "1")),
        spark_driver_memory=_env("MLWF_SPARK_DRIVER_MEMORY", "2g"),
        spark_executor_cores=int(_env("MLWF_SPARK_EXECUTOR_CORES", "1")),
        spark_executor_memory=_env("MLWF_SPARK_EXECUTOR_MEMORY", "2g"),
        spark_executor_instances=int(_env("MLWF_SPARK_EXECUTOR_INSTANCES", "2")),
        spark_timeout_s=int(_env("MLWF_SPARK_TIMEOUT_S", "7200")),
        spark_ttl_s=int(_env("MLWF_SPARK_TTL_S", "86400")),
    )
