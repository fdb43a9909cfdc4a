"""The monitoring pipeline's steps as KFP lightweight Python components: each body only imports and calls.

Same conventions as components/steps.py: the image is a placeholder the compile command replaces, nothing is
installed at run time, and imports live inside the bodies (KFP ships each function's source on its own).
"""


from kfp import dsl
from kfp.dsl import HTML, Artifact, Input, Markdown, Metrics, Output

PLACEHOLDER_IMAGE = "mlwf/components:placeholder"
_component = dsl.component(base_image=PLACEHOLDER_IMAGE, install_kfp_package=False)


@_component
def drift_op(model_name: str, window_hours: float, psi_warn: float, psi_alert: float, ks_alpha: float, ks_min_d: float,
             null_delta: float, min_rows: int, cooldown_hours: float, labels_uri: str, pushgateway_url: str,
             report: Output[HTML], metrics: Output[Metrics], drift: Output[Artifact]) -> bool:
    """Served traffic of the window vs the champion's training profile. Returns whether to retrain now.

    A single bool output: kfp.local resolves a condition on a task's `Output` (see components/steps.py).
    """
    from components.drift import Thresholds
    from components.monitoring import MonitorConfig, drift_step
    from components.step_logic import _setup_logging

    _setup_logging()
    thresholds = Thresholds(psi_warn=psi_warn, psi_alert=psi_alert, ks_alpha=ks_alpha, ks_min_d=ks_min_d,
                            null_delta=null_delta, min_rows=int(min_rows))
    config = MonitorConfig(model_name=model_name, window_hours=window_hours, cooldown_hours=cooldown_hours,
                           thresholds=thresholds, labels_uri=labels_uri)
    return drift_step(config, pushgateway_url, report, metrics, drift)


@_component
def retrain_op(cooldown_hours: float, drift: Input[Artifact], training_arguments: str, kfp_host: str, kfp_namespace: str,
               training_package: str, decision: Output[Markdown]) -> str:
    """Start the training pipeline unless a retraining started within the cooldown; returns the action taken."""
    from components.monitoring import retrain_step
    from components.step_logic import _setup_logging

    _setup_logging()
    return retrain_step(cooldown_hours, drift, training_arguments, kfp_host, kfp_namespace, training_package, decision)
