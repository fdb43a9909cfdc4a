"""The whole pipeline under kfp.local, as `make demo` runs it: the gated deploy really runs for a good
model and really does not run for one that fails the gate (kfp.local skips a branch silently when it
cannot evaluate a condition, so both outcomes are asserted on what ran and what serves)."""

import json

import pandas as pd
import pytest
import requests

from components import tracking
from components.deploy import stop_local
from components.settings import get_settings
from pipelines.local import run_local
from tests.conftest import make_csv

pytestmark = pytest.mark.integration
ALL_STEPS = {"ingest-op", "validate-op", "features-op", "train-op", "evaluate-op", "deploy-op"}


def test_good_model_is_deployed_and_a_gated_one_is_not(tmp_path, state_dir, free_port, monkeypatch):
    monkeypatch.setenv("MLWF_SERVE_PORT", str(free_port))
    data = make_csv(tmp_path / "tx.csv", rows=6000, bad_fraction=0.01)
    # The latency budget is generous here: this test is about the branch, and CI machines are shared.
    args = {"dataset_spec": "transactions", "source_uri": str(data), "epochs": 12, "min_roc_auc": 0.6, "max_p99_latency_ms": 100.0}
    record = state_dir / "serving" / "transactions-classifier" / "server.json"
    try:
        first = run_local(args)
        assert set(first.tasks) == ALL_STEPS
        version = first.output("train-op", "version")
        assert first.output("evaluate-op", "Output") is True

        # the served model answers over HTTP on loopback, and refuses a malformed request with a 400
        served = json.loads(record.read_text())
        assert served["url"].startswith("http://127.0.0.1:") and served["version"] == version
        row = {"amount": 950.0, "hour_of_day": 2, "card_age_days": 12, "distance_km": 400.0, "txn_count_24h": 5,
               "merchant_category": "jewelry", "channel": "online", "country": "NG"}
        ok = requests.post(served["predict_url"], json={"instances": [row]}, timeout=10)
        assert ok.status_code == 200 and 0.0 <= ok.json()["predictions"][0]["probability"] <= 1.0
        bad = requests.post(served["predict_url"], json={"instances": [{**row, "amount": "lots"}]}, timeout=10)
        assert bad.status_code == 400 and "amount" in bad.json()["error"]

        # nothing lost: every input row is valid or quarantined, and the quarantine says why
        quarantine = pd.read_parquet(first.artifact("validate-op", "quarantine"))
        valid = pd.read_parquet(first.artifact("validate-op", "valid"))
        assert len(valid) + len(quarantine) == 6000 and len(quarantine) > 0
        assert quarantine["failed_expectations"].str.len().gt(0).all()

        client = tracking.configure(get_settings())
        assert str(client.get_model_version_by_alias("transactions_classifier", "champion").version) == version

        # the same inputs again, with a gate no model can pass: training is reused, deploy must not run
        second = run_local({**args, "min_roc_auc": 1.01})
        assert set(second.tasks) == ALL_STEPS - {"deploy-op"}
        assert second.output("evaluate-op", "Output") is False
        assert second.output("train-op", "version") == version  # idempotent: no duplicate version
        assert len(client.search_model_versions("name = 'transactions_classifier'")) == 1
        assert requests.post(served["predict_url"], json={"instances": [row]}, timeout=10).status_code == 200
        gate = client.get_model_version("transactions_classifier", version).tags["mlwf.gate_reasons"]
        assert "below the minimum 1.0100" in gate
    finally:
        stop_local(record)
