"""The cluster profile against real services: MLflow on PostgreSQL, Feast's SQL registry on PostgreSQL and
its online store on Redis (127.0.0.1:5432 and :6379 on the test machines). Only settings change.

On a machine without them these tests are skipped with the reason; under CI (CI=true) they fail instead,
because CI always has both services.
"""

import os
import socket
import uuid

import pandas as pd
import pytest

from components.core import tracking
from components.core.settings import get_settings
from components.core.spec import parse_spec
from components.data.validate import validate
from components.features import store as features
from components.features.online import OnlineFeatures
from components.training.run import run_training_step
from components.training.train import TrainParams
from tests.conftest import ingest_frame, make_csv

pytestmark = pytest.mark.services
POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
REDIS = "redis://127.0.0.1:6379"


def _reachable(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture
def cluster_profile(state_dir, monkeypatch):
    missing = [name for name, port in (("PostgreSQL", 5432), ("Redis", 6379)) if not _reachable(port)]
    if missing:
        message = f"{' and '.join(missing)} not reachable on 127.0.0.1"
        if os.environ.get("CI"):
            pytest.fail(f"{message}: CI must provide them")
        pytest.skip(message)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", POSTGRES)
    monkeypatch.setenv("MLWF_MLFLOW_EXPERIMENT", f"ct-{uuid.uuid4().hex[:8]}")
    monkeypatch.setenv("MLWF_FEAST_REGISTRY", POSTGRES)
    monkeypatch.setenv("MLWF_FEAST_ONLINE", REDIS)
    monkeypatch.setenv("MLWF_MODEL_NAME", f"ct_model_{uuid.uuid4().hex[:8]}")
    return state_dir


def test_feast_sql_registry_and_redis_then_mlflow_on_postgres(tmp_path, cluster_profile, transactions_spec):
    # a project of its own in the shared database, so reruns and parallel runs cannot collide
    spec = parse_spec(
        {
            "name": f"ct_{uuid.uuid4().hex[:8]}",
            "label": {"column": "is_fraud", "positive": 1, "negative": 0},
            "entity": "transaction_id",
            "timestamp": "event_time",
            "features": {
                "numeric": [f.name for f in transactions_spec.numeric],
                "categorical": [c.name for c in transactions_spec.categorical],
            },
        }
    )
    raw = ingest_frame(spec, make_csv(tmp_path / "tx.csv", rows=1500), cluster_profile)
    valid = validate(spec, raw, run_id="ct", source="tx.csv").valid
    settings = get_settings()
    outcome = features.build_features(spec, valid, settings)
    store = features.open_store(spec, settings)
    assert type(store.registry).__name__ == "SqlRegistry"
    assert type(store._get_provider().online_store).__name__ == "RedisOnlineStore"
    assert outcome.service in {s.name for s in store.list_feature_services()}

    # what serving reads online (Redis) equals what training got offline, for a sample of entities
    offline = pd.concat([outcome.train, outcome.test]).set_index("transaction_id")
    sample = offline.sample(20, random_state=3).index.tolist()
    online = pd.DataFrame(OnlineFeatures(spec, outcome.service, spec.feature_names).lookup(sample), index=sample)
    for name in spec.feature_names:
        assert online.loc[sample, name].tolist() == offline.loc[sample, name].tolist(), name

    # MLflow on PostgreSQL: a tracked run, a registered version, and reuse on identical inputs
    train_path = tmp_path / "train.parquet"
    outcome.train.to_parquet(train_path)
    first = run_training_step(spec, str(train_path), str(tmp_path / "m1"), TrainParams(epochs=3), outcome.service, "fp")
    again = run_training_step(spec, str(train_path), str(tmp_path / "m2"), TrainParams(epochs=3), outcome.service, "fp")
    assert not first["reused"] and again["reused"] and again["version"] == first["version"]
    client = tracking.configure(get_settings())
    assert client.get_run(first["run_id"]).data.tags["mlwf.feature_service"] == outcome.service
    assert (tmp_path / "m2" / "manifest.json").read_bytes() == (tmp_path / "m1" / "manifest.json").read_bytes()
    store.teardown()
