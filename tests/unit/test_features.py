"""Point-in-time correctness and training-serving consistency against a real Feast repo (local provider)."""

from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from components.core.settings import get_settings
from components.core.spec import parse_spec
from components.data.validate import validate
from components.features import store as features
from components.features.online import OnlineFeatures
from tests.conftest import ingest_frame, make_csv

T0 = datetime(2026, 1, 1, tzinfo=UTC)
SPEC = parse_spec(
    {
        "name": "accounts",
        "label": {"column": "y", "positive": 1},
        "entity": "account",
        "timestamp": "ts",
        "features": {"numeric": ["balance"], "categorical": ["tier"]},
        "feature_store": {"ttl_days": 10},
    }
)


def _store_with(rows: list[tuple[str, datetime, float, str]]):
    settings = get_settings()
    valid = pd.DataFrame(rows, columns=["account", "event_timestamp", "balance", "tier"])
    valid["event_timestamp"] = pd.to_datetime(valid["event_timestamp"], utc=True)
    repo = features.declare(SPEC, settings)
    features.write_offline(valid, SPEC, settings)
    store = features.open_store(SPEC, settings)
    store.apply([repo.entity, repo.view, repo.service("accounts_v1")])
    return store


def test_no_feature_value_from_after_the_label_time_leaks(state_dir):
    store = _store_with(
        [
            ("a", T0, 10.0, "gold"),
            ("a", T0 + timedelta(days=2), 20.0, "gold"),
            ("a", T0 + timedelta(days=4), 999.0, "platinum"),  # after both labels: must never appear
        ]
    )
    labels = pd.DataFrame({"account": ["a", "a"], "event_timestamp": [T0 + timedelta(days=1), T0 + timedelta(days=3)]})
    out = features.point_in_time(store, "accounts_v1", labels, "account").sort_values("event_timestamp")
    assert out["balance"].tolist() == [10.0, 20.0]
    assert 999.0 not in out["balance"].tolist()


def test_values_older_than_the_ttl_come_back_null(state_dir):
    store = _store_with([("a", T0, 10.0, "gold")])
    labels = pd.DataFrame({"account": ["a", "a"], "event_timestamp": [T0 + timedelta(days=9), T0 + timedelta(days=11)]})
    out = features.point_in_time(store, "accounts_v1", labels, "account").sort_values("event_timestamp")
    assert len(out) == 2  # Feast alone drops the expired row; the join keeps every label
    assert out["balance"].iloc[0] == 10.0
    assert pd.isna(out["balance"].iloc[1]) and pd.isna(out["tier"].iloc[1])


def test_online_features_equal_the_offline_training_features(tmp_path, state_dir, transactions_spec):
    raw = ingest_frame(transactions_spec, make_csv(tmp_path / "tx.csv", rows=600), state_dir)
    valid = validate(transactions_spec, raw, run_id="r", source="x").valid
    outcome = features.build_features(transactions_spec, valid, get_settings())
    offline = pd.concat([outcome.train, outcome.test]).set_index("transaction_id")
    sample = offline.sample(25, random_state=1).index.tolist()
    online = pd.DataFrame(OnlineFeatures(transactions_spec, outcome.service, transactions_spec.feature_names).lookup(sample), index=sample)
    for name in transactions_spec.feature_names:
        assert online.loc[sample, name].tolist() == offline.loc[sample, name].tolist(), name


def test_service_versions_follow_the_feature_set(tmp_path, state_dir, transactions_spec):
    raw = ingest_frame(transactions_spec, make_csv(tmp_path / "tx.csv", rows=300), state_dir)
    valid = validate(transactions_spec, raw, run_id="r", source="x").valid
    first = features.build_features(transactions_spec, valid, get_settings()).service
    again = features.build_features(transactions_spec, valid, get_settings()).service
    assert first == again == "transactions_v1"  # same features, same service: applying twice changes nothing


def test_split_holds_out_the_latest_period():
    df = pd.DataFrame({"event_timestamp": pd.date_range("2026-01-01", periods=10, tz="UTC")[::-1], "x": range(10)})
    train, test = features.time_split(df, 0.3)
    assert train["event_timestamp"].max() < test["event_timestamp"].min()
    assert len(test) == 3
    with pytest.raises(ValueError):
        features.time_split(df.head(1), 0.3)
