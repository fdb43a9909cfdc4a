"""The monitoring pipeline: request logs of a window -> drift vs the champion -> dsl.If(alert) -> retrain.

Meant to run on a schedule (`mlwf schedule`, a KFP recurring run with a cron expression) and, on a laptop,
with `mlwf monitor --local` (kfp.local). Neither step is cached: both depend on the clock and the state store.
"""

from kfp import dsl

from pipelines.local import LocalRun
from pipelines.ops import drift_op, retrain_op
from pipelines.training import cluster_wiring, one_line_args

PIPELINE_NAME = "mlwf-monitoring"
IN_CLUSTER_KFP = "http://ml-pipeline.kubeflow.svc.cluster.local:8888"


@dsl.pipeline(name=PIPELINE_NAME, description="Drift of served traffic against the champion's training profile; retrain on an alert.")
@one_line_args
def monitoring_pipeline(
    model_name: str = "transactions_classifier",
    window_hours: float = 24.0,
    psi_warn: float = 0.1,
    psi_alert: float = 0.25,
    ks_alpha: float = 0.01,
    ks_min_d: float = 0.1,
    null_delta: float = 0.05,
    min_rows: int = 200,
    cooldown_hours: float = 24.0,
    labels_uri: str = "",
    pushgateway_url: str = "",
    training_arguments: str = "{}",
    kfp_host: str = IN_CLUSTER_KFP,
    kfp_namespace: str = "mlwf",
    training_package: str = "",
) -> None:
    """Drift of served traffic against the champion's training profile; retrain on an alert.

    Args:
        model_name: The registered model whose champion is monitored; its request logs are read.
        window_hours: How many hours of request logs, up to now, make the window compared with training.
        psi_warn: PSI at or above which a feature is reported as drifting (no retraining on its own).
        psi_alert: PSI at or above which a feature (or the predictions) counts as drifted: an alert.
        ks_alpha: Significance level of the two-sample Kolmogorov-Smirnov test on numeric features; a D
            statistic at or above the test's critical value (and ks_min_d) is an alert.
        ks_min_d: Smallest KS D statistic that can alert, whatever the sample size: on large windows the test
            flags shifts too small to be worth a retraining.
        null_delta: Change of a feature's missing-value fraction (absolute, e.g. 0.05 = 5 points) that is an alert.
        min_rows: Fewer served rows than this in the window: no decision (insufficient data), no retraining.
        cooldown_hours: No new retraining within this many hours of the last one started, even on an alert.
        labels_uri: Delayed labels (CSV, Parquet or JSONL with entity, label, ts) joined to the logged
            predictions to report live ROC-AUC and calibration. Empty: no labels, drift only.
        pushgateway_url: A Prometheus Pushgateway to push the drift gauges to. Empty: the gauges are only
            written to the state store (for a textfile collector).
        training_arguments: Arguments of the training run started on an alert, as a JSON object, e.g.
            {"source_uri": "s3://mlwf/data/", "epochs": 30}. "{}": the training pipeline's defaults.
        kfp_host: The Kubeflow Pipelines API the retraining is submitted to (default: the in-cluster service).
        kfp_namespace: The namespace (Kubeflow profile) the retraining run is created in.
        training_package: The compiled training package (path or s3:// URI) to run on an alert. Empty: the
            training pipeline is compiled from the code installed in this step's image.
    """
    drift = cluster_wiring(
        drift_op(
            model_name=model_name,
            window_hours=window_hours,
            psi_warn=psi_warn,
            psi_alert=psi_alert,
            ks_alpha=ks_alpha,
            ks_min_d=ks_min_d,
            null_delta=null_delta,
            min_rows=min_rows,
            cooldown_hours=cooldown_hours,
            labels_uri=labels_uri,
            pushgateway_url=pushgateway_url,
        ),
        retries=1,
    )
    drift.set_display_name("drift").set_caching_options(False).set_cpu_limit("2").set_memory_limit("4G")
    with dsl.If(drift.outputs["Output"] == True, name="drift-alert"):  # noqa: E712 (a KFP condition, not Python)
        # No retries: a failed trigger keeps its cooldown claim, and a retry must not start a second training.
        retrain = cluster_wiring(
            retrain_op(
                cooldown_hours=cooldown_hours,
                drift=drift.outputs["drift"],
                training_arguments=training_arguments,
                kfp_host=kfp_host,
                kfp_namespace=kfp_namespace,
                training_package=training_package,
            )
        )
        retrain.set_display_name("retrain").set_caching_options(False).set_cpu_limit("1").set_memory_limit("2G")


def run_monitoring_local(arguments: dict) -> LocalRun:
    """Run the monitoring pipeline with kfp.local, as pipelines.local.run_local runs the training one."""
    from pipelines.local import run_pipeline_locally

    return run_pipeline_locally(monitoring_pipeline, arguments, PIPELINE_NAME)
