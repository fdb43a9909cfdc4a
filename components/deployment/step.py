"""The deploy step: serve the version (locally, or as an InferenceService canary) and move the champion alias.

Each function takes the step's KFP artifacts (anything with `.path` and `.metadata`), calls the stage's
logic, and records outputs and metadata. Tests call these directly with artifacts on local paths;
pipelines/ops.py wraps them as @dsl.component bodies.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from components.core.logs import setup_logging

log = logging.getLogger("mlwf")


def deploy_step(model: Any, test_set: Any, model_name: str, version: str, deployment: Any) -> str:
    setup_logging()
    import pandas as pd

    from components.core import bundle as bundle_lib
    from components.core import storage, tracking
    from components.core.settings import get_settings
    from components.deployment.rollout import expected_prediction_shift

    started = time.perf_counter()
    settings = get_settings()
    # The evaluate step's choice names its version on the bundle artifact; a plain bundle uses the parameter.
    version = str((getattr(model, "metadata", None) or {}).get("version") or version)
    test = pd.read_parquet(test_set.path)
    candidate = bundle_lib.load(model.path)
    sample = bundle_lib.columns_from_frame(test.head(3), candidate.feature_names)
    instances = [{k: v[i] for k, v in sample.items()} for i in range(len(test.head(3)))]
    replay_rows = 2000  # the traffic a local canary replays, cycled as long as the steps need
    client = tracking.configure(settings)
    # A retrained model is meant to score differently from the champion (after drift, that is the point):
    # the canary analysis allows the shift that the two versions show offline on the test period.
    expected_psi, champion = expected_prediction_shift(client, model_name, version, candidate, test.head(replay_rows))
    if champion is not None:
        log.info(
            "deploy: prediction PSI between champion v%s and v%s on the test period: %.3f (allowed in the canary analysis)",
            champion,
            version,
            expected_psi,
        )
    if settings.is_local:
        from components.deployment.local import deploy_local

        # A later version is canaried against the one serving with the test period replayed as traffic;
        # a rollback raises here, before the alias below moves.
        rows = bundle_lib.columns_from_frame(test.head(replay_rows), candidate.feature_names)
        replay = [{k: v[i] for k, v in rows.items()} for i in range(min(len(test), replay_rows))]
        result = deploy_local(model.path, model_name, version, instances, settings, replay=replay, expected_psi=expected_psi)
        url, predict_url = result.url, result.predict_url
    else:
        from components.deployment.kserve import deploy_cluster

        out = deploy_cluster(model.path, model_name, version, settings, expected_psi=expected_psi)
        url, predict_url = out["url"], out["predict_url"]
    client.set_registered_model_alias(model_name, "champion", version)  # only after the new version serves
    text = (
        f"# Deployed {model_name} v{version}\n\n- URL: {url}\n- Predict (V1): `POST {predict_url}`\n"
        f"- Example:\n\n```\ncurl -s -H 'Content-Type: application/json' {predict_url} -d '{json.dumps({'instances': instances[:1]})}'\n```\n"
    )
    storage.write_bytes(deployment.path, text.encode())
    deployment.metadata.update({"url": url, "predict_url": predict_url, "version": version})
    log.info("deploy: %s v%s serving at %s in %.1fs", model_name, version, url, time.perf_counter() - started)
    return predict_url
