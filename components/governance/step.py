"""The readiness step at the end of the training pipeline: the report of the version the evaluate step chose.

It records, it does not refuse: the deploy step before it has already served the version (the gate is what stops
a bad model), and a red step would hide the report from the run's outputs. The verdict goes to the step's HTML and
Markdown outputs (the Kubeflow UI shows both), to the version's MLflow run (readiness/readiness.{md,html,json},
beside evaluation/report.html, which the report links to) and to the version's `mlwf.readiness` tag.
`mlwf readiness NAME@ALIAS` is the gate-keeping form: it exits 1 when a blocking item fails.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from components.core.logs import setup_logging

log = logging.getLogger("mlwf")

READINESS_TAG = "mlwf.readiness"


def readiness_step(model_name: str, version: str, chosen: Any, report: Any, summary: Any, policy: str = "", dataset_spec: str = "") -> bool:
    """Write the readiness report of `model_name` at the chosen version (the `chosen` bundle's metadata names it,
    else `version`). Returns whether no blocking item failed."""
    setup_logging()
    from components.core import storage, tracking
    from components.core.settings import get_settings
    from components.governance.report import run_readiness

    settings = get_settings()
    version = str((getattr(chosen, "metadata", None) or {}).get("version") or version)
    ref = f"{model_name}/{version}"
    with tempfile.TemporaryDirectory(prefix="readiness-") as tmp:
        written = run_readiness(ref, tmp, policy, dataset_spec, settings=settings)
        files = written.files
        storage.write_bytes(report.path, Path(files["html"]).read_bytes())
        storage.write_bytes(summary.path, Path(files["markdown"]).read_bytes())
        a = written.assessment
        client = tracking.configure(settings)
        run_id = client.get_model_version(model_name, version).run_id
        for path in files.values():
            client.log_artifact(run_id, path, artifact_path="readiness")
    word = "ready" if a.ready else "not ready: " + ", ".join(r.item for r in a.blocking_failures)
    client.set_model_version_tag(model_name, version, READINESS_TAG, word[:4000])
    meta = {"ready": a.ready, "version": version, "blocking_failures": ", ".join(r.item for r in a.blocking_failures)}
    meta["advisory_failures"] = ", ".join(r.item for r in a.items if not r.passed and r.severity == "advisory")
    for artifact in (report, summary):
        artifact.metadata.update(meta)
    log.info("readiness: %s v%s %s", model_name, version, word)
    return a.ready
