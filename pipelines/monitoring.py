"""The monitoring pipeline: request logs of a window -> drift vs the champion -> dsl.If(alert) -> retrain.

Meant to run on a schedule (`mlwf schedule`, a KFP recurring run with a cron expression) and, on a laptop,
with `mlwf monitor --local` (kfp.local). Neither step is cached: both depend on the clock and the state store.
"""


from kfp import dsl

from components.monitor_steps import drift_op, retrain_op
from pipelines.local import LocalRun
from pipelines.training import _cluster_wiring

PIPELINE_NAME = "mlwf-monitoring"
IN_CLUSTER_KFP = "http://ml-pipeline.kubeflow.svc.cluster.local:8888"


@dsl.pipeline(name=PIPELINE_NAME, description="Drift of served traffic against the champion's training profile; retrain on an alert.")
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
    drift = _cluster_wiring(drift_op(
        model_name=model_name, window_hours=window_hours, psi_warn=psi_warn, psi_alert=psi_alert, ks_alpha=ks_alpha,
        ks_min_d=ks_min_d, null_delta=null_delta, min_rows=min_rows, cooldown_hours=cooldown_hours,
        labels_uri=labels_uri, pushgateway_url=pushgateway_url,
    ), retries=1)
    drift.set_display_name("drift").set_caching_options(False).set_cpu_limit("2").set_memory_limit("4G")
    with dsl.If(drift.outputs["Output"] == True, name="drift-alert"):  # noqa: E712 (a KFP condition, not Python)
        # No retries: a failed trigger keeps its cooldown claim, and a retry must not start a second training.
        retrain = _cluster_wiring(retrain_op(
            cooldown_hours=cooldown_hours, drift=drift.outputs["drift"], training_arguments=training_arguments,
            kfp_host=kfp_host, kfp_namespace=kfp_namespace, training_package=training_package,
        ))
        retrain.set_display_name("retrain").set_caching_options(False).set_cpu_limit("1").set_memory_limit("2G")


def run_monitoring_local(arguments: dict) -> LocalRun:
    """Run the monitoring pipeline with kfp.local, as pipelines.local.run_local runs the training one."""
    from pipelines.local import run_pipeline_locally

    return run_pipeline_locally(monitoring_pipeline, arguments, PIPELINE_NAME)
