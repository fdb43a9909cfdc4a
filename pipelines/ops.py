"""The pipeline's steps as KFP lightweight Python components: each body only imports and calls.

Every step runs in the project's components image (the project installed, so no packages_to_install and
no kfp install at run time). The image named here is a placeholder: `pipelines.compile` writes the
configured image (by digest when given) into the compiled package, so nothing is read from the
environment when this module is imported. Imports live inside the bodies because KFP ships each
function's source on its own, and so that each step pays only for the libraries it uses.
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output

PLACEHOLDER_IMAGE = "mlwf/components:placeholder"
STEP_IMAGE_ENV = "MLWF_STEP_IMAGE"  # read back as Settings.step_image
_component = dsl.component(base_image=PLACEHOLDER_IMAGE, install_kfp_package=False)


def stamp_image(container: dict, image: str) -> None:
    """Write the components image into a compiled executor's container, and tell the step which image it is.

    A step cannot cheaply read its own pod's image, so the package says it: the same value as the container's
    image, in its environment (KFP's driver puts `container.env` on the pod). The pipeline definition never sets
    it, so a kfp.local run of it has none and records no image.
    """
    container["image"] = image
    env = [e for e in container.get("env", []) if e.get("name") != STEP_IMAGE_ENV]
    container["env"] = [*env, {"name": STEP_IMAGE_ENV, "value": image}]


@_component
def ingest_op(dataset_spec: str, source_uri: str, run_id: str, raw: Output[Dataset]) -> NamedTuple(
    "IngestOutputs", [("rows", int), ("fingerprint", str)]
):
    """Read new or changed CSV/Parquet files (a file or a directory/prefix, local or s3://), checked against
    the spec; outputs the union of every file of the source and the dataset version's fingerprint."""
    from collections import namedtuple

    from components.data.step import ingest_step

    rows, fingerprint = ingest_step(dataset_spec, source_uri, raw, run_id)
    return namedtuple("IngestOutputs", ["rows", "fingerprint"])(rows, fingerprint)


@_component
def validate_op(
    dataset_spec: str,
    run_id: str,
    raw: Input[Dataset],
    valid: Output[Dataset],
    quarantine: Output[Dataset],
    report: Output[HTML],
    metrics: Output[Metrics],
    engine: str = "",
) -> int:
    """Great Expectations over every row; failing rows to quarantine with their reasons. Returns valid rows.
    `engine`: pandas or spark (a local[*] session in the step); empty: the MLWF_ENGINE setting."""
    from components.data.step import validate_step

    return validate_step(dataset_spec, run_id, raw, valid, quarantine, report, metrics, engine)


@_component
def features_op(dataset_spec: str, valid: Input[Dataset], train_set: Output[Dataset], test_set: Output[Dataset]) -> str:
    """Feast: apply, write the offline store, materialize online, point-in-time training set. Returns the FeatureService."""
    from components.features.step import features_step

    return features_step(dataset_spec, valid, train_set, test_set)


@_component
def train_op(
    dataset_spec: str,
    train_set: Input[Dataset],
    feature_service: str,
    dataset_fingerprint: str,
    epochs: int,
    seed: int,
    model: Output[Model],
    metrics: Output[Metrics],
    nodes: int = 1,
    gpus_per_node: int = 1,
    pipeline_run: str = "",
    pipeline_run_name: str = "",
    gate_policy: str = "",
) -> NamedTuple("TrainOutputs", [("model_name", str), ("version", str)]):
    """Train every candidate family the gate policy lists (network, LightGBM trees, logistic regression), each sealed
    as a model bundle and registered; tracked in MLflow as one parent run with a child run per candidate.

    The network trains on CUDA when present (DDP over every GPU of the pod); `nodes` > 1 trains it in a Kubeflow
    Trainer TrainJob of that many nodes with `gpus_per_node` GPUs each. `gate_policy` (as the evaluate step reads it)
    names the candidates and the decision threshold's objective (F1, or its cost matrix). `pipeline_run` and
    `pipeline_run_name` (the KFP run's id and name) name the MLflow run and link it back.
    """
    from collections import namedtuple

    from components.core.spec import load_spec
    from components.evaluation.policy import policy_for_run, threshold_objective
    from components.training.step import train_step

    policy = policy_for_run(gate_policy, dataset_spec, load_spec(dataset_spec).name)

    name, version = train_step(
        dataset_spec,
        train_set,
        feature_service,
        dataset_fingerprint,
        epochs,
        seed,
        model,
        metrics,
        nodes,
        gpus_per_node,
        pipeline_run=pipeline_run,
        pipeline_run_name=pipeline_run_name,
        threshold_objective=threshold_objective(policy),
        families=",".join(policy.candidates),
    )
    return namedtuple("TrainOutputs", ["model_name", "version"])(name, version)


@_component
def evaluate_op(
    model: Input[Model],
    train_set: Input[Dataset],
    test_set: Input[Dataset],
    model_name: str,
    version: str,
    dataset_spec: str,
    gate_policy: str,
    min_roc_auc: float,
    max_p99_latency_ms: float,
    max_regression: float,
    metrics: Output[Metrics],
    roc: Output[ClassificationMetrics],
    report: Output[HTML],
    model_card: Output[Markdown],
    verdict: Output[Markdown],
    chosen: Output[Model],
    pipeline_run: str = "",
) -> bool:
    """Judge every candidate by the gate policy (thresholds, calibration, latency, slices, baseline, champion) and
    choose one: the most accurate that passes, or a cheaper one when the lead is within noise. Returns the gate.

    `gate_policy` names the policy file (empty: the one beside the dataset spec); a non-negative
    `min_roc_auc`, `max_p99_latency_ms` or `max_regression` overrides that value of the file.
    A single bool output on purpose: kfp.local resolves a condition on a task's `Output` but silently
    skips a branch whose condition names a NamedTuple field. The reasons are in `verdict`, the report and MLflow.

    Args:
        pipeline_run: The KFP run id, recorded with the verdict in MLflow.

    Returns:
        verdict: PASS or FAIL with every check's reason and the key test metrics, written for a failing gate too.
        report: The full evaluation report: curves, slices, champion and baseline, feature importance.
        model_card: The chosen bundle's model card followed by this evaluation.
        chosen: The chosen candidate's bundle (its metadata names the version and family); written on a pass only.
        Output: Whether a candidate passed the gate (deploy runs only then).
    """
    from components.evaluation.step import evaluate_step

    return evaluate_step(
        model,
        train_set,
        test_set,
        model_name,
        version,
        dataset_spec,
        gate_policy,
        min_roc_auc,
        max_p99_latency_ms,
        max_regression,
        metrics,
        roc,
        report,
        model_card,
        verdict=verdict,
        pipeline_run=pipeline_run,
        chosen=chosen,
    )


@_component
def deploy_op(model: Input[Model], test_set: Input[Dataset], model_name: str, version: str, deployment: Output[Markdown]) -> str:
    """Serve the chosen bundle (local KServe server on 127.0.0.1, or an InferenceService canary); returns its URL.

    The version is the one the bundle's metadata names (the evaluate step's choice), else `version`."""
    from components.deployment.step import deploy_step

    return deploy_step(model, test_set, model_name, version, deployment)


@_component
def readiness_op(model_name: str, version: str, chosen: Input[Model], report: Output[HTML], summary: Output[Markdown]) -> bool:
    """The production-readiness report of the version the evaluate step chose (the `chosen` bundle's metadata names
    it, else `version`): every checklist item with its evidence, as HTML (shown in the Kubeflow UI) and Markdown, also
    logged to the version's MLflow run beside the evaluation report it links to. Returns whether no blocking item
    failed; it records and does not fail the run (`mlwf readiness NAME@ALIAS` is the form that exits non-zero)."""
    from components.governance.step import readiness_step

    return readiness_step(model_name, version, chosen, report, summary)


# ---------------------------------------------------------------- the monitoring pipeline's steps


@_component
def drift_op(
    model_name: str,
    window_hours: float,
    psi_warn: float,
    psi_alert: float,
    ks_alpha: float,
    ks_min_d: float,
    null_delta: float,
    min_rows: int,
    cooldown_hours: float,
    labels_uri: str,
    pushgateway_url: str,
    report: Output[HTML],
    metrics: Output[Metrics],
    drift: Output[Artifact],
) -> bool:
    """Served traffic of the window vs the champion's training profile. Returns whether to retrain now.

    A single bool output: kfp.local resolves a condition on a task's `Output` (see pipelines/ops.py).
    """
    from components.core.logs import setup_logging
    from components.monitoring.drift import Thresholds
    from components.monitoring.records import MonitorConfig
    from components.monitoring.step import drift_step

    setup_logging()
    thresholds = Thresholds(
        psi_warn=psi_warn, psi_alert=psi_alert, ks_alpha=ks_alpha, ks_min_d=ks_min_d, null_delta=null_delta, min_rows=int(min_rows)
    )
    config = MonitorConfig(
        model_name=model_name, window_hours=window_hours, cooldown_hours=cooldown_hours, thresholds=thresholds, labels_uri=labels_uri
    )
    return drift_step(config, pushgateway_url, report, metrics, drift)


@_component
def retrain_op(
    cooldown_hours: float,
    drift: Input[Artifact],
    training_arguments: str,
    kfp_host: str,
    kfp_namespace: str,
    training_package: str,
    decision: Output[Markdown],
) -> str:
    """Start the training pipeline unless a retraining started within the cooldown; returns the action taken.

    The trigger is built here and handed to the step: the monitor never imports the pipelines it starts.
    """
    from components.core.logs import setup_logging
    from components.core.settings import get_settings
    from components.monitoring.step import retrain_step
    from pipelines.trigger import kfp_trigger, local_trigger

    setup_logging()
    trigger = local_trigger if get_settings().is_local else kfp_trigger(kfp_host, kfp_namespace, training_package)
    return retrain_step(cooldown_hours, drift, training_arguments, decision, trigger)


# ---------------------------------------------------------------- the scoring pipeline's step


@_component
def score_op(
    model: str,
    data_uri: str,
    out_uri: str,
    dataset_spec: str,
    scores: Output[Dataset],
    quarantine: Output[Dataset],
    summary: Output[Markdown],
) -> int:
    """Validate the rows at `data_uri` with the dataset's suite (bad rows quarantined, the label optional) and score
    the valid ones with the model version `model` names (NAME@ALIAS or NAME/VERSION); returns the rows scored.

    The scores go to `out_uri` (Parquet; the quarantine beside it) and to the `scores` artifact. The data stage's
    reading and validation are handed to the step (pipelines/scoring_data.py): a stage imports only core and itself.
    """
    from components.scoring.step import ScoringRequest, score_step
    from pipelines.scoring_data import data_stage

    return score_step(ScoringRequest(model, data_uri, out_uri, dataset_spec), data_stage(), scores, quarantine, summary)
