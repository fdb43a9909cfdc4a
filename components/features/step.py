"""The features step: Feast offline store, online materialization, point-in-time train and test sets.

Each function takes the step's KFP artifacts (anything with `.path` and `.metadata`), calls the stage's
logic, and records outputs and metadata. Tests call these directly with artifacts on local paths;
pipelines/ops.py wraps them as @dsl.component bodies.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from components.core.logs import setup_logging

log = logging.getLogger("mlwf")


def features_step(dataset_spec: str, valid: Any, train_set: Any, test_set: Any) -> str:
    setup_logging()
    import pandas as pd

    from components.core import storage
    from components.core.settings import get_settings
    from components.core.spec import load_spec
    from components.core.storage import to_parquet_bytes
    from components.features.store import build_features

    started = time.perf_counter()
    spec = load_spec(dataset_spec)
    outcome = build_features(spec, pd.read_parquet(valid.path), get_settings())
    storage.write_bytes(train_set.path, to_parquet_bytes(outcome.train))
    storage.write_bytes(test_set.path, to_parquet_bytes(outcome.test))
    for artifact, frame in ((train_set, outcome.train), (test_set, outcome.test)):
        artifact.metadata.update(
            {
                "rows": len(frame),
                "feature_service": outcome.service,
                "from": str(frame["event_timestamp"].min()),
                "to": str(frame["event_timestamp"].max()),
            }
        )
    log.info(
        "features: %s, %d train / %d test rows in %.1fs",
        outcome.service,
        len(outcome.train),
        len(outcome.test),
        time.perf_counter() - started,
    )
    return outcome.service
