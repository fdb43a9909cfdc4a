"""The retraining triggers the monitoring pipeline's retrain step is given: run the training pipeline on this
machine (kfp.local) or create a run of it on Kubeflow Pipelines.

The monitor (components/monitoring) only calls a trigger; building one needs the pipelines, so it lives here and
pipelines/ops.py hands it to the step. The training itself starts in a child process (pipelines/start_training.py,
named by module path, never imported here): that keeps this module free of the training pipeline, which imports
the ops that import this module.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from components.monitoring.records import MonitorError, Trigger

_RESULT = "MLWF_TRIGGER_RESULT "


def _outside_kfp_runtime(function: str, payload: dict[str, Any]) -> dict[str, Any]:
    """Call `pipelines.start_training.<function>(payload)` in a child process without `_KFP_RUNTIME`.

    Inside a pipeline step KFP sets _KFP_RUNTIME=true, which strips kfp.Client and the pipeline DSL from the
    kfp package: neither the training pipeline nor a client can be built there. The child's log goes to ours.
    """
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "_KFP_RUNTIME"}
    code = (
        f"import json, sys\nfrom pipelines.start_training import {function} as start\n"
        f"print({_RESULT!r} + json.dumps(start(json.load(sys.stdin))), flush=True)"
    )
    root = str(Path(__file__).resolve().parent.parent)
    proc = subprocess.run([sys.executable, "-c", code], input=json.dumps(payload), capture_output=True, text=True, env=env, cwd=root)
    results = [line[len(_RESULT) :] for line in proc.stdout.splitlines() if line.startswith(_RESULT)]
    # The training's own log (kfp.local prints each step's output on stdout) stays visible in this step's log.
    sys.stderr.write("".join(line for line in proc.stdout.splitlines(keepends=True) if not line.startswith(_RESULT)))
    sys.stderr.write(proc.stderr)
    if proc.returncode != 0 or not results:
        raise MonitorError(f"training trigger {function} exited with code {proc.returncode}: {error_line(proc.stdout + proc.stderr)}")
    return dict(json.loads(results[-1]))


_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?[A-Z]\w*(?:Error|Exception|Failed|Failure)\b:?\s*(.*)$")


def error_line(output: str) -> str:
    """The most telling line of a failed child's output: the innermost step's exception (DeployError: ...,
    ValidationFailed: ...) rather than whatever was printed last (a separator, the outer traceback)."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    exceptions = [line for line in lines if _EXCEPTION_LINE.match(line) and "finished with status" not in line]
    if exceptions:
        return exceptions[0]
    useful = [line for line in lines if line.strip("-=* ")]
    return useful[-1] if useful else "no output"


def local_trigger(arguments: dict[str, Any]) -> str:
    """Run the training pipeline on this machine (kfp.local); returns the run directory and what came of it."""
    out = _outside_kfp_runtime("start_local_training", arguments)
    return f"local:{out['run']} (version {out['version']}, {'deployed' if out['deployed'] else 'not deployed: gate failed'})"


def kfp_trigger(host: str, namespace: str, package: str = "", experiment: str = "mlwf") -> Trigger:
    """A trigger that creates a run of the training package on Kubeflow Pipelines.

    Without a package the training pipeline is compiled here, from the code installed in this image and with
    this image (the step's MLWF_STEP_IMAGE; else the configured components image): the retraining runs the
    code the monitor was built with.
    """

    def start(arguments: dict[str, Any]) -> str:
        payload = {"host": host, "namespace": namespace, "package": package, "experiment": experiment, "arguments": arguments}
        return str(_outside_kfp_runtime("start_kfp_training", payload)["run"])

    return start
