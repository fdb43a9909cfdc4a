"""Start the training pipeline, in the child process a retraining trigger (pipelines/trigger.py) spawns.

The child runs without KFP's `_KFP_RUNTIME` (which strips kfp.Client and the DSL inside a step), so it can
build the training pipeline: run it here with kfp.local, or compile it and create a run on Kubeflow Pipelines.
"""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from components.core import storage


def start_local_training(arguments: dict[str, Any]) -> dict[str, Any]:
    from pipelines.local import run_local

    run = run_local(arguments)
    return {"run": run.run_dir.name, "version": run.output("train-op", "version"), "deployed": run.ran("deploy-op")}


def start_kfp_training(payload: dict[str, Any]) -> dict[str, Any]:
    from components.core.settings import get_settings
    from pipelines.compile import compile_package
    from pipelines.kfp_api import kfp_client

    with tempfile.TemporaryDirectory(prefix="training-package-") as tmp:
        package = payload["package"]
        path = (
            storage.local_copy(package, tmp)
            if package
            else compile_package(str(Path(tmp) / "training.yaml"), get_settings().step_image or None)
        )
        client = kfp_client(payload["host"], payload["namespace"])
        run = client.create_run_from_pipeline_package(
            path,
            arguments=payload["arguments"],
            experiment_name=payload["experiment"],
            run_name=f"retrain-drift-{datetime.now(UTC):%Y%m%d-%H%M}",
            namespace=payload["namespace"],
        )
    return {"run": str(run.run_id)}
