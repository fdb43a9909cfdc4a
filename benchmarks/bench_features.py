"""Materialization into the SQLite online store: the bulk writer vs Feast's stock `materialize`.

Both write the same N entity rows x 10 features (6 numeric, 4 categorical) from the same offline store in
the same run, each into a fresh store; rows/s = entities / seconds. Also the p99 of one online lookup
through the FeatureService, as the serving path makes it. Goal: >= 3x the stock rate.
"""

from __future__ import annotations

import os
import tempfile
import time
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

from benchmarks.harness import Figure

NUMERIC = [f"n{i}" for i in range(6)]
CATEGORICAL = [f"c{i}" for i in range(4)]
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _spec():
    from components.core.spec import parse_spec

    return parse_spec(
        {
            "name": "bench",
            "label": {"column": "y", "positive": 1},
            "entity": "entity_id",
            "timestamp": "ts",
            "features": {"numeric": NUMERIC, "categorical": CATEGORICAL},
        }
    )


def _rows(n: int) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    data = {
        "entity_id": [f"e{i:08d}" for i in range(n)],
        "event_timestamp": pd.to_datetime(T0) + pd.to_timedelta(rng.integers(0, 30 * 86400, n), unit="s"),
    }
    for name in NUMERIC:
        data[name] = rng.normal(size=n).round(4)
    for name in CATEGORICAL:
        data[name] = rng.choice([f"v{j}" for j in range(20)], n)
    return pd.DataFrame(data)


def _fresh_store(root: str, rows: pd.DataFrame):
    os.environ["MLWF_STATE_DIR"] = root
    from components.core.settings import get_settings
    from components.features import store as features

    spec, settings = _spec(), get_settings()
    repo = features.declare(spec, settings)
    features.write_offline(rows, spec, settings)
    store = features.open_store(spec, settings)
    store.apply([repo.entity, repo.view, repo.service("bench_v1")])
    return spec, settings, store


def run(quick: bool) -> list[Figure]:
    from components.features.materialize import materialize_incremental

    n = 20_000 if quick else int(os.environ.get("MLWF_BENCH_FEATURES_ROWS", 1_000_000))
    rows = _rows(n)
    end = T0 + timedelta(days=31)
    saved = os.environ.get("MLWF_STATE_DIR")
    try:
        with tempfile.TemporaryDirectory() as stock_root, tempfile.TemporaryDirectory() as bulk_root:
            spec, _, stock = _fresh_store(stock_root, rows)
            started = time.perf_counter()
            stock.materialize(start_date=end - timedelta(days=3650), end_date=end, feature_views=[spec.name])
            stock_s = time.perf_counter() - started

            spec, settings, bulk = _fresh_store(bulk_root, rows)
            started = time.perf_counter()
            from components.features.store import read_offline

            offline = read_offline(spec, settings, T0 - timedelta(days=1), end)
            done = materialize_incremental(bulk, spec, offline, end, settings.feast_online)
            bulk_s = time.perf_counter() - started
            assert done.entities == n, done

            service = bulk.get_feature_service("bench_v1")
            keys = rows["entity_id"].sample(300, random_state=1).tolist()
            for key in keys[:20]:
                bulk.get_online_features(features=service, entity_rows=[{"entity_id": key}])
            lat = []
            for key in keys:
                t = time.perf_counter()
                bulk.get_online_features(features=service, entity_rows=[{"entity_id": key}])
                lat.append((time.perf_counter() - t) * 1000)
    finally:
        if saved is None:
            os.environ.pop("MLWF_STATE_DIR", None)
        else:
            os.environ["MLWF_STATE_DIR"] = saved
    bulk_rate, stock_rate = n / bulk_s, n / stock_s
    return [
        Figure(
            "features",
            f"materialize {n:,} entities x 10 features into SQLite (entity rows/s, read included)",
            bulk_rate,
            stock_rate,
            "Feast stock materialize",
            True,
            ">= 3x stock",
            met=bulk_rate >= 3 * stock_rate,
        ),
        Figure(
            "features",
            "one online lookup via the FeatureService, p99 (ms)",
            float(np.percentile(lat, 99)),
            None,
            f"p50 {float(np.percentile(lat, 50)):.2f} ms",
            False,
            "report",
            notes="Feast SDK get_online_features, SQLite",
        ),
    ]
