"""The training pipeline: ingest -> validate -> features -> train -> evaluate -> dsl.If(gate) -> deploy -> readiness.

The same definition runs under kfp.local on a laptop and compiles to the package a Kubeflow cluster
runs. Cluster-only wiring (settings from a ConfigMap, credentials from Secrets, the GPU request,
retries) compiles into the package and is ignored by the local runner.
"""

import inspect
import re
from collections.abc import Callable
from typing import Any

from kfp import dsl, kubernetes

from pipelines.ops import deploy_op, evaluate_op, features_op, ingest_op, readiness_op, train_op, validate_op

PIPELINE_NAME = "mlwf-training"
SETTINGS_CONFIG_MAP = "mlwf-settings"
# ConfigMap keys (= environment variable names) the steps read on a cluster; see components/core/settings.py.
SETTINGS_KEYS = (
    "MLWF_PROFILE",
    "MLWF_STATE_DIR",
    "MLFLOW_TRACKING_URI",
    "MLWF_MLFLOW_EXPERIMENT",
    "MLWF_FEAST_ONLINE",
    "MLWF_FEAST_OFFLINE_ROOT",
    "MLWF_MODEL_STORE",
    "MLWF_KSERVE_NAMESPACE",
    "MLWF_KSERVE_MODE",
    "MLWF_KSERVE_SERVICE_ACCOUNT",
    "MLWF_CANARY_STEPS",
    "MLWF_PROMETHEUS_URL",
    "MLWF_TRAINJOB_IMAGE",
    "AWS_ENDPOINT_URL",
    "AWS_DEFAULT_REGION",
)
# Secrets: only their names and keys are compiled into the package, never a value.
SECRETS = {
    "mlwf-s3": {"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY"},
    "mlwf-feast-registry": {"MLWF_FEAST_REGISTRY": "MLWF_FEAST_REGISTRY"},
    "mlwf-mlflow": {"MLFLOW_TRACKING_USERNAME": "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD": "MLFLOW_TRACKING_PASSWORD"},
}
OPTIONAL_SECRETS = {"mlwf-mlflow"}  # an MLflow server without auth needs none
# ConfigMap keys a cluster may leave out: referenced as optional, so a ConfigMap without them still starts the pods.
OPTIONAL_SETTINGS_KEYS = (
    "MLWF_KFP_UI_URL",  # the KFP UI's address: MLflow runs get a link to their pipeline run
    "MLWF_ENGINE",  # pandas (default) or spark: the data steps' engine (the `engine` parameter overrides it)
    # the SparkApplication a data step creates with the spark engine (components/core/spark_application.py)
    "MLWF_SPARK_IMAGE",
    "MLWF_SPARK_NAMESPACE",
    "MLWF_SPARK_SERVICE_ACCOUNT",
    "MLWF_SPARK_MAIN_FILE",
    "MLWF_SPARK_DRIVER_CORES",
    "MLWF_SPARK_DRIVER_MEMORY",
    "MLWF_SPARK_EXECUTOR_CORES",
    "MLWF_SPARK_EXECUTOR_MEMORY",
    "MLWF_SPARK_EXECUTOR_INSTANCES",
    "MLWF_SPARK_TIMEOUT_S",
    "MLWF_SPARK_TTL_S",
)


def one_line_args(func: Callable) -> Callable:
    """Join the wrapped lines of each `Args:` entry of a pipeline's docstring. KFP copies an entry into the
    parameter's description (shown on the run form) line breaks included, which would cut sentences in half."""
    lines = inspect.cleandoc(func.__doc__ or "").splitlines()
    out: list[str] = []
    in_args = False
    for line in lines:
        if not line.startswith(" "):
            in_args = line.strip() == "Args:"
        elif in_args and re.match(r"^ {8,}\S", line) and out:  # deeper than `    name: ...`: a continuation
            out[-1] += " " + line.strip()
            continue
        out.append(line)
    func.__doc__ = "\n".join(out)
    return func


def cluster_wiring(task: dsl.PipelineTask, retries: int = 0) -> dsl.PipelineTask:
    kubernetes.use_config_map_as_env(task, SETTINGS_CONFIG_MAP, {k: k for k in SETTINGS_KEYS})
    kubernetes.use_config_map_as_env(task, SETTINGS_CONFIG_MAP, {k: k for k in OPTIONAL_SETTINGS_KEYS}, optional=True)
    for name, keys in SECRETS.items():
        kubernetes.use_secret_as_env(task, name, keys, optional=name in OPTIONAL_SECRETS)
    if retries:
        task.set_retry(num_retries=retries, backoff_duration="30s", backoff_factor=2.0, backoff_max_duration="300s")
    return task


def gpu_placement(task: dsl.PipelineTask, gpu_count: Any, tolerations: Any, node_selector: Any) -> dsl.PipelineTask:
    """The train step's GPU request and node placement, all resolved per run by the KFP driver.

    gpu_count 0 is correct on a CPU-only cluster: the driver writes the limit `nvidia.com/gpu: 0`, and the
    scheduler skips extended resources requested at zero, so the pod fits any node. (A dsl.If/Else choosing
    between a GPU and a CPU variant of the task would work too, but renames the tasks and conditions that
    evaluate, deploy and the compiled-package tests refer to.) Tolerations only permit a node, so they are
    harmless on CPU nodes; the node selector does restrict, so it is a run parameter (default: none) rather
    than a constant: a gpu_count=0 run leaves it empty. `gpu_placement_arguments` turns the settings
    (MLWF_GPU_TOLERATIONS, MLWF_GPU_NODE_SELECTOR) into these parameters for compile or submit.
    """
    task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(gpu_count)
    kubernetes.add_toleration_json(task, tolerations)
    kubernetes.add_node_selector_json(task, node_selector)
    return task


def gpu_placement_arguments(gpu_count: int, settings: Any = None) -> dict[str, Any]:
    """Run arguments for the GPU placement from settings: tolerations always, the node selector only with GPUs."""
    from components.core.settings import get_settings

    settings = settings or get_settings()
    return {
        "gpu_count": gpu_count,
        "gpu_tolerations": list(settings.gpu_tolerations),
        "gpu_node_selector": dict(settings.gpu_node_selector) if gpu_count > 0 else {},
    }


@dsl.pipeline(name=PIPELINE_NAME, description="Validate, featurize, train, gate and canary-deploy a tabular classifier.")
@one_line_args
def training_pipeline(
    dataset_spec: str = "transactions",
    source_uri: str = "s3://mlwf/data/transactions.csv",
    epochs: int = 30,
    seed: int = 42,
    gate_policy: str = "",
    min_roc_auc: float = -1.0,
    max_p99_latency_ms: float = -1.0,
    max_regression: float = -1.0,
    gpu_count: int = 1,
    gpu_tolerations: list = [],  # noqa: B006  (KFP compiles a pipeline parameter's default from a literal)
    gpu_node_selector: dict = {},  # noqa: B006
    train_nodes: int = 1,
    gpus_per_node: int = 1,
    engine: str = "",
) -> None:
    """Validate, featurize, train, gate and canary-deploy a tabular classifier.

    Args:
        dataset_spec: The dataset spec: the name of a spec shipped with the project (e.g. transactions), a
            path or an s3:// URI of a spec YAML. It names the columns, the label and the checks.
        source_uri: The data: one CSV or Parquet file, or a directory or s3:// prefix of them. Files seen by an
            earlier run are skipped unless they changed; the dataset is the union of every file.
        epochs: Most training epochs. Training stops earlier after 4 epochs without a better validation ROC-AUC
            and keeps the best epoch.
        seed: Random seed of training: the same data, parameters, code and seed reuse the version already trained.
        gate_policy: The gate policy file (a shipped name, a path or an s3:// URI). Empty: the policy file
            beside the dataset spec (<dataset_spec>.policy.yaml), or the built-in defaults when there is none. It
            also names the model families trained as candidates and the decision threshold's costs.
        min_roc_auc: Minimum test ROC-AUC to pass the gate. -1.0 (any negative value): use the policy file's value.
        max_p99_latency_ms: Largest per-row p99 scoring latency, in milliseconds, to pass the gate. -1.0 (any
            negative value): use the policy file's value.
        max_regression: How much test ROC-AUC may drop against the serving champion, scored on the same rows.
            -1.0 (any negative value): use the policy file's value.
        gpu_count: GPUs for the train step's pod. 0 runs it on a CPU node; set 0 as well when train_nodes > 1,
            since the GPUs are then requested by the TrainJob's nodes.
        gpu_tolerations: Kubernetes tolerations for the train step's pod, e.g.
            [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]. Empty: none.
        gpu_node_selector: Node labels the train step's pod must run on, e.g.
            {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}. Empty: any node.
        train_nodes: 1 trains in the step's pod (on every GPU it has). More than 1 trains in a Kubeflow
            Trainer TrainJob of this many nodes; needs the state store on s3://.
        gpus_per_node: GPUs on each TrainJob node; used only when train_nodes > 1.
        engine: The data engine of the validate step: pandas, or spark (a local[*] Spark session in the step's
            pod; the image needs Java). Empty: the cluster's MLWF_ENGINE setting (pandas unless set).
    """
    ingest = cluster_wiring(ingest_op(dataset_spec=dataset_spec, source_uri=source_uri, run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER), retries=2)
    # Never cached: a directory or prefix gains files under the same URI; ingest itself skips what it has seen.
    ingest.set_display_name("ingest").set_caching_options(False).set_cpu_limit("1").set_memory_limit("4G")
    validate = cluster_wiring(
        validate_op(dataset_spec=dataset_spec, run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, raw=ingest.outputs["raw"], engine=engine)
    )
    validate.set_display_name("validate").set_cpu_limit("2").set_memory_limit("8G")
    features = cluster_wiring(features_op(dataset_spec=dataset_spec, valid=validate.outputs["valid"]), retries=2)
    features.set_display_name("features").set_cpu_limit("2").set_memory_limit("8G")
    train = cluster_wiring(
        train_op(
            dataset_spec=dataset_spec,
            train_set=features.outputs["train_set"],
            feature_service=features.outputs["Output"],
            dataset_fingerprint=ingest.outputs["fingerprint"],
            epochs=epochs,
            seed=seed,
            nodes=train_nodes,
            gpus_per_node=gpus_per_node,
            pipeline_run=dsl.PIPELINE_JOB_ID_PLACEHOLDER,  # the MLflow run's name and tags link back to this run
            pipeline_run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
            gate_policy=gate_policy,  # its `candidates` and decision costs shape training
        ),
        retries=1,
    )
    train.set_display_name("train").set_cpu_limit("4").set_memory_limit("16G")
    gpu_placement(train, gpu_count, gpu_tolerations, gpu_node_selector)
    evaluate = cluster_wiring(
        evaluate_op(
            model=train.outputs["model"],
            train_set=features.outputs["train_set"],  # the baseline is fit on the same split as the model
            test_set=features.outputs["test_set"],
            model_name=train.outputs["model_name"],
            version=train.outputs["version"],
            dataset_spec=dataset_spec,
            gate_policy=gate_policy,
            min_roc_auc=min_roc_auc,
            max_p99_latency_ms=max_p99_latency_ms,
            max_regression=max_regression,
            pipeline_run=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        )
    )
    evaluate.set_display_name("evaluate").set_cpu_limit("2").set_memory_limit("8G")
    with dsl.If(evaluate.outputs["Output"] == True, name="gate-passed"):  # noqa: E712 (a KFP condition, not Python)
        deploy = cluster_wiring(
            deploy_op(
                model=evaluate.outputs["chosen"],
                test_set=features.outputs["test_set"],
                model_name=train.outputs["model_name"],
                version=train.outputs["version"],
            ),
            retries=1,
        )
        deploy.set_display_name("deploy").set_caching_options(False).set_cpu_limit("1").set_memory_limit("2G")
        # The checklist of what now serves, after deploy: it reads the champion the deploy step set, the monitoring
        # and the images. Never cached: the evidence (monitor runs, aliases) changes under the same inputs.
        readiness = cluster_wiring(
            readiness_op(model_name=train.outputs["model_name"], version=train.outputs["version"], chosen=evaluate.outputs["chosen"])
        )
        readiness.after(deploy)
        readiness.set_display_name("readiness").set_caching_options(False).set_cpu_limit("1").set_memory_limit("2G")
