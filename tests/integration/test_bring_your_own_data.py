"""Bring your own data: a CSV with "Yes"/"No" labels, text categoricals and no id or timestamp column runs
through the whole pipeline from nothing but a spec file, and the served model answers for it."""

import json

import numpy as np
import pandas as pd
import pytest
import requests

from components.deployment.processes import stop_local
from pipelines.cli import main

pytestmark = pytest.mark.integration

SPEC = """
name: churn
label: {column: Churn, positive: "Yes", negative: "No"}
features:
  numeric:
    tenure: {min: 0, max: 120}
    monthly_charges: {min: 0}
  categorical:
    contract: {values: [Month-to-month, One year, Two year]}
    payment_method: {}
"""


def churn_csv(path, n=2500, seed=3):
    rng = np.random.default_rng(seed)
    tenure = rng.integers(0, 72, n)
    contract = rng.choice(["Month-to-month", "One year", "Two year"], n, p=[0.55, 0.25, 0.2])
    charges = rng.normal(70, 25, n).clip(18, 120).round(2)
    logit = -1.0 - 0.05 * tenure + 1.6 * (contract == "Month-to-month") + 0.02 * (charges - 70)
    churn = np.where(rng.random(n) < 1 / (1 + np.exp(-logit)), "Yes", "No")
    frame = pd.DataFrame(
        {
            "tenure": tenure,
            "monthly_charges": charges,
            "contract": contract,
            "payment_method": rng.choice(["Electronic check", "Mailed check", "Card"], n),
            "Churn": churn,
        }
    )
    frame.loc[7, "contract"] = "Three year"  # one bad row: quarantined, not dropped
    frame.to_csv(path, index=False)
    return path


def test_text_labels_no_id_no_timestamp_end_to_end(tmp_path, state_dir, free_port, monkeypatch):
    monkeypatch.setenv("MLWF_SERVE_PORT", str(free_port))
    spec = tmp_path / "churn.yaml"
    spec.write_text(SPEC)
    data = churn_csv(tmp_path / "churn.csv")
    record = state_dir / "serving" / "churn-classifier" / "server.json"
    try:
        # as a user runs it: the CLI writes the validation suite beside the spec on first use
        code = main(
            [
                "run",
                "--local",
                "--dataset",
                str(spec),
                "--data",
                str(data),
                "--epochs",
                "10",
                "--min-roc-auc",
                "0.6",
                "--max-p99-latency-ms",
                "100",
            ]
        )
        assert code == 0 and (tmp_path / "churn.suite.json").exists()
        run_dir = max((state_dir / "kfp").iterdir(), key=lambda p: p.stat().st_mtime)
        assert (run_dir / "deploy-op").is_dir()
        quarantine = pd.read_parquet(run_dir / "validate-op" / "quarantine")
        assert len(quarantine) == 1 and "contract" in quarantine["failed_expectations"].iloc[0]
        train = pd.read_parquet(run_dir / "features-op" / "train_set")
        assert train["row_id"].is_unique and set(train["label"]) == {0, 1}  # generated ids, Yes/No -> 1/0
        served = json.loads(record.read_text())
        row = {"tenure": 2, "monthly_charges": 95.0, "contract": "Month-to-month", "payment_method": "Electronic check"}
        answer = requests.post(served["predict_url"], json={"instances": [row]}, timeout=10)
        assert answer.status_code == 200 and 0 <= answer.json()["predictions"][0]["probability"] <= 1
    finally:
        stop_local(record)
