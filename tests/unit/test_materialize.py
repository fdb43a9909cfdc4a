"""The bulk SQLite materializer writes exactly what Feast's own engine writes, incrementally and idempotently."""

import sqlite3
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

from components.core.settings import get_settings
from components.core.spec import parse_spec
from components.features import store as features
from components.features.materialize import entity_keys, materialize_incremental

T0 = datetime(2026, 3, 1, tzinfo=UTC)
SPEC = parse_spec(
    {
        "name": "cards",
        "label": {"column": "y", "positive": 1},
        "entity": "card",
        "timestamp": "ts",
        "features": {"numeric": {"spend": {"nullable": True}, "count": {}}, "categorical": {"tier": {"nullable": True}}},
    }
)


def offline_rows(n: int = 300, days: int = 3, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    spend = rng.normal(50, 30, n).round(2)
    spend[::17] = np.nan
    spend[5] = 0.0
    tier = rng.choice(["gold", "silver", "bronze", "ünïcode"], n).astype(object)
    tier[::13] = None
    return pd.DataFrame(
        {
            "card": [f"c{i % 90}" for i in range(n)],  # several rows per card: the latest must win
            "event_timestamp": [T0 + timedelta(minutes=int(m)) for m in np.sort(rng.integers(0, days * 1440, n))],
            "spend": spend,
            "count": rng.integers(-3, 40, n).astype(float),
            "tier": tier,
        }
    )


def _applied_store(state_root, monkeypatch, rows):
    monkeypatch.setenv("MLWF_STATE_DIR", str(state_root))
    settings = get_settings()
    repo = features.declare(SPEC, settings)
    features.write_offline(rows, SPEC, settings)
    store = features.open_store(SPEC, settings)
    store.apply([repo.entity, repo.view])
    return store, settings


def _table(settings):
    conn = sqlite3.connect(settings.feast_online)
    try:
        return conn.execute(
            "SELECT entity_key, feature_name, value, value_text, vector_value, event_ts, created_ts "
            "FROM cards_cards ORDER BY entity_key, feature_name"
        ).fetchall()
    finally:
        conn.close()


def test_bulk_rows_are_byte_identical_to_feast(tmp_path, monkeypatch):
    rows = offline_rows()
    end = T0 + timedelta(days=4)
    stock, stock_settings = _applied_store(tmp_path / "stock", monkeypatch, rows)
    stock.materialize(start_date=end - timedelta(days=3650), end_date=end, feature_views=["cards"])
    expected = _table(stock_settings)

    bulk, bulk_settings = _applied_store(tmp_path / "bulk", monkeypatch, rows)
    done = materialize_incremental(bulk, SPEC, rows, end, bulk_settings.feast_online)
    assert done.engine == "bulk-sqlite" and done.entities == 90
    assert _table(bulk_settings) == expected
    assert len(expected) == 90 * 3


def test_entity_key_encoding_matches_feast():
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    for value in ["a", "tx0000000001", "ünïcode", ""]:
        proto = EntityKey(join_keys=["card"], entity_values=[Value(string_val=value)])
        assert entity_keys("card", pd.Series([value]))[0] == serialize_entity_key(proto, 3)


def test_incremental_and_idempotent(tmp_path, monkeypatch):
    rows = offline_rows(days=2)
    store, settings = _applied_store(tmp_path, monkeypatch, rows)
    mid = T0 + timedelta(days=1)
    first = materialize_incremental(store, SPEC, rows, mid, settings.feast_online)
    snapshot = _table(settings)
    again = materialize_incremental(features.open_store(SPEC, settings), SPEC, rows, mid, settings.feast_online)
    assert again.engine == "none" and _table(settings) == snapshot  # the same window twice changes nothing
    later = materialize_incremental(features.open_store(SPEC, settings), SPEC, rows, T0 + timedelta(days=3), settings.feast_online)
    assert later.start == first.end  # the next window starts where the last one ended
    online = (
        features.open_store(SPEC, settings)
        .get_online_features(features=["cards:spend", "cards:count", "cards:tier"], entity_rows=[{"card": "c1"}])
        .to_dict()
    )
    latest = rows[rows.card == "c1"].sort_values("event_timestamp").iloc[-1]
    assert online["count"] == [latest["count"]]
