"""The whole pipeline under kfp.local, as `make demo` runs it: the gated deploy really runs for a good
model and really does not run for one that fails the gate (kfp.local skips a branch silently when it
cannot evaluate a condition, so both outcomes are asserted on what ran and what serves)."""

import json
import re
from pathlib import Path

import pandas as pd
import pytest
import requests

from components.core import tracking
from components.core.settings import get_settings
from components.deployment.processes import stop_local
from pipelines.local import run_local
from tests.conftest import make_csv

pytestmark = pytest.mark.integration
ALL_STEPS = {"ingest-op", "validate-op", "features-op", "train-op", "evaluate-op", "deploy-op", "readiness-op"}


def test_good_model_is_deployed_and_a_gated_one_is_not(tmp_path, state_dir, free_port, monkeypatch):
    monkeypatch.setenv("MLWF_SERVE_PORT", str(free_port))
    data = make_csv(tmp_path / "tx.csv", rows=6000, bad_fraction=0.01)
    # The latency budget is generous here: this test is about the branch, and CI machines are shared.
    args = {"dataset_spec": "transactions", "source_uri": str(data), "epochs": 12, "min_roc_auc": 0.6, "max_p99_latency_ms": 100.0}
    record = state_dir / "serving" / "transactions-classifier" / "server.json"
    try:
        first = run_local(args)
        assert set(first.tasks) == ALL_STEPS
        assert first.output("evaluate-op", "Output") is True
        # three candidates trained and registered; the evaluate step chose one, and that one serves
        trained = first.metadata("train-op", "model")["candidates"]
        assert [c.split(" v")[0] for c in trained.split(", ")] == ["network", "lightgbm", "logistic"]
        chosen = first.metadata("evaluate-op", "chosen")
        version, family = chosen["version"], chosen["family"]
        assert f"{family} v{version}" in trained

        # the served model answers over HTTP on loopback, and refuses a malformed request with a 400
        served = json.loads(record.read_text())
        assert served["url"].startswith("http://127.0.0.1:") and served["version"] == version
        row = {
            "amount": 950.0,
            "hour_of_day": 2,
            "card_age_days": 12,
            "distance_km": 400.0,
            "txn_count_24h": 5,
            "merchant_category": "jewelry",
            "channel": "online",
            "country": "NG",
        }
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

        # MLflow says what the run is: dataset, version and the pipeline run it links back to (the id ingest
        # recorded); a local run records no image, since it ran in this virtualenv, not in one
        mv = client.get_model_version("transactions_classifier", version)
        run = client.get_run(mv.run_id)
        pipeline_run = _ingest_run_id(first)
        assert run.info.run_name == f"transactions · candidate v{version} · run {pipeline_run[:8]} · {family}"
        # the candidate's run is a child of the training run, which carries the same evaluation
        parent = client.get_run(run.data.tags["mlflow.parentRunId"])
        assert parent.info.run_id == first.metadata("train-op", "model")["run_id"] and parent.data.tags["mlwf.gate"] == "passed"
        assert parent.data.tags["mlwf.candidates"] == "network,lightgbm,logistic"
        gate_json = json.loads(Path(client.download_artifacts(parent.info.run_id, "evaluation/gate.json", str(tmp_path))).read_text())
        assert [r["family"] for r in gate_json["candidates"]] == ["network", "lightgbm", "logistic"]
        assert sum(r["chosen"] for r in gate_json["candidates"]) == 1 and gate_json["selection"]
        for other in client.search_model_versions("name = 'transactions_classifier'"):
            if str(other.version) != version:
                assert other.tags["mlwf.selection"] and other.tags["mlwf.family"] != family
        assert run.data.tags["mlwf.pipeline_run"] == pipeline_run
        assert run.data.tags["mlwf.pipeline_run_name"] == first.run_dir.name
        assert "mlwf.image" not in run.data.tags and "mlwf.pipeline_run_url" not in run.data.tags
        assert run.data.tags["mlwf.gate"] == "passed"
        assert "**Gate: PASS**" in mv.description and f"ROC-AUC {_evaluate_metric(first, 'roc_auc'):.4f}" in mv.description
        verdict = first.artifact("evaluate-op", "verdict").read_text()
        assert verdict.startswith(f"# Gate PASS: transactions_classifier v{version}\n")

        # the same inputs again, with a gate no model can pass: training is reused, deploy must not run
        second = run_local({**args, "min_roc_auc": 1.01})
        assert set(second.tasks) == ALL_STEPS - {"deploy-op", "readiness-op"}  # the gated branch: deploy, then readiness
        assert second.output("evaluate-op", "Output") is False
        assert second.output("train-op", "version") == first.output("train-op", "version")  # idempotent
        assert second.metadata("train-op", "model")["candidates"] == trained
        assert len(client.search_model_versions("name = 'transactions_classifier'")) == 3  # no duplicate versions
        assert requests.post(served["predict_url"], json={"instances": [row]}, timeout=10).status_code == 200
        # the run list is not silently green: the evaluate step's Markdown says FAIL and why (for the best candidate)
        verdict = second.artifact("evaluate-op", "verdict").read_text()
        version = re.match(r"# Gate FAIL: transactions_classifier v(\d+)\n", verdict).group(1)
        gate = client.get_model_version("transactions_classifier", version).tags["mlwf.gate_reasons"]
        assert "below the minimum 1.0100" in gate
        assert "the version is **not deployed**" in verdict and "below the minimum 1.0100" in verdict.split("## Checks")[0]
        assert "| FAIL | min_roc_auc |" in verdict
        # the version's description now carries this (second) evaluation, not the first one's verdict
        mv = client.get_model_version("transactions_classifier", version)
        assert mv.description.count("**Gate:") == 1 and "**Gate: FAIL**" in mv.description
        assert "below the minimum 1.0100" in mv.description and f"pipeline run `{_ingest_run_id(second)}`" in mv.description
        assert client.get_run(mv.run_id).data.tags["mlwf.evaluation_pipeline_run"] == _ingest_run_id(second)
    finally:
        stop_local(record)


def _ingest_run_id(run) -> str:
    """The KFP run id the ingest step was given (dsl.PIPELINE_JOB_ID_PLACEHOLDER), from its artifact's metadata."""
    out = json.loads((run.tasks["ingest-op"] / "executor_output.json").read_text())
    return str(out["artifacts"]["raw"]["artifacts"][0]["metadata"]["run_id"])


def _evaluate_metric(run, name: str) -> float:
    """A metric the evaluate step logged to its Metrics output."""
    out = json.loads((run.tasks["evaluate-op"] / "executor_output.json").read_text())
    return float(out["artifacts"]["metrics"]["artifacts"][0]["metadata"][name])
