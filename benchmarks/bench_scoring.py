"""Batch scoring on the pandas engine: rows per second from a CSV to the scores' Parquet, every row validated.

Data: the demo generator (components/data/datagen.py), 200k rows (quick: 20k) with bad_fraction 0.01, as a CSV.
Model: the serving benchmark's bundle (a network trained here on 3,000 generated rows), registered as
`bench@champion` in a temporary MLflow store (resolved, downloaded and loaded inside every timed run, as a
scheduled run does it).

Figures (medians of repeats, in the same run on the same rows):
1. End to end: components/scoring/step.py `score_batch` (resolve the model, read the CSV as text, validate every
   row with the dataset's GX suite and quarantine the bad ones, score, write both Parquet files). Anchor: the
   bundle's own predict (`Bundle.predict_proba`) on the same file read with pandas (what does not parse coerced to
   missing), which validates nothing: the ratio is what validation, quarantine and the deterministic output cost.
2. The scoring part alone on the valid rows: batch.py's vectorized encode + chunked program call vs the same
   bundle's `predict_proba` (value-by-value encode), on identical rows; the probabilities must agree.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness import Figure, median_seconds

NAME = "scoring"
MODEL = "bench"


def _register(tmp: str) -> Any:
    """The serving benchmark's bundle (a network on generated transactions), registered as bench@champion."""
    import mlflow

    from benchmarks.bench_serving import build_bundle
    from components.core import bundle as bundle_lib
    from components.core import tracking
    from components.core.settings import get_settings

    bundle_dir = Path(tmp) / "bundle"
    build_bundle(str(bundle_dir))
    client = tracking.configure(get_settings())
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(bundle_dir), artifact_path="bundle")
    version = tracking.register(client, MODEL, run.info.run_id, f"{run.info.artifact_uri}/bundle", {}, "benchmark")
    client.set_registered_model_alias(MODEL, "champion", version)
    return bundle_lib.load(bundle_dir)


def run(quick: bool) -> list[Figure]:
    import pandas as pd
    import pyarrow as pa

    from components.core.bundle import columns_from_frame
    from components.data.datagen import GenConfig, write
    from components.scoring import batch
    from components.scoring.step import ScoringRequest, score_batch
    from pipelines.scoring_data import data_stage

    rows = 20_000 if quick else 200_000
    repeats = 1 if quick else 3
    saved = {k: os.environ.get(k) for k in ("MLWF_STATE_DIR", "MLWF_PROFILE", "MLFLOW_TRACKING_URI")}
    with tempfile.TemporaryDirectory(prefix="bench-scoring-") as tmp:
        os.environ.update({"MLWF_STATE_DIR": str(Path(tmp) / "state"), "MLWF_PROFILE": "local"})
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        try:
            bundle = _register(tmp)
            data = write(GenConfig(rows=rows, seed=7, bad_fraction=0.01), str(Path(tmp) / "rows.csv"))
            request = ScoringRequest(f"{MODEL}@champion", data, str(Path(tmp) / "out" / "scores.parquet"))
            stage = data_stage()
            result = score_batch(request, stage)
            project_s = median_seconds(lambda: score_batch(request, stage), repeats=repeats, warmup=0)

            def anchor() -> np.ndarray:  # the ordinary way: read, coerce what does not parse to missing, predict all
                frame = pd.read_csv(data)
                frame = frame.assign(**{n: pd.to_numeric(frame[n], errors="coerce") for n in bundle.numeric})
                return bundle.predict_proba(columns_from_frame(frame, bundle.feature_names))

            anchor_s = median_seconds(anchor, repeats=repeats, warmup=0)

            scores = pd.read_parquet(request.out_uri)
            typed = pd.read_csv(data, dtype=str).set_index("transaction_id").loc[scores["transaction_id"]]
            typed = typed.astype({f: "float64" for f in bundle.numeric}).reset_index()
            table = pa.Table.from_pandas(typed[bundle.feature_names], preserve_index=False)
            columns = columns_from_frame(typed, bundle.feature_names)
            started = time.perf_counter()
            ours = batch.score(bundle, table)
            ours_s = time.perf_counter() - started
            started = time.perf_counter()
            theirs = bundle.predict_proba(columns)
            theirs_s = time.perf_counter() - started
            agree = bool(np.allclose(ours, theirs, rtol=0, atol=1e-6)) and bool(
                np.allclose(scores[batch.PROBABILITY], theirs, rtol=0, atol=1e-6)
            )
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
    project_rate, anchor_rate = result.rows_in / project_s, rows / anchor_s
    return [
        Figure(
            NAME,
            f"batch scoring, {rows:,} CSV rows -> Parquet, every row validated (rows/s)",
            project_rate,
            anchor_rate,
            "the bundle's own predict_proba on the same CSV read by pandas (bad values coerced, no validation, no output)",
            True,
            ">= 0.25x the bare predict while validating and quarantining every row",
            met=project_rate >= 0.25 * anchor_rate,
            notes=f"{result.scored:,} scored + {result.quarantined:,} quarantined; {repeats} repeat(s)",
        ),
        Figure(
            NAME,
            f"scoring part alone, {len(scores):,} valid rows (rows/s)",
            len(scores) / ours_s,
            len(scores) / theirs_s,
            "Bundle.predict_proba (value-by-value encode) on the same rows",
            True,
            ">= 1x, same probabilities (atol 1e-6)",
            met=agree and ours_s <= theirs_s,
            notes="probabilities agree" if agree else "PROBABILITIES DIFFER",
        ),
    ]
