"""The demos a user runs after `make demo`, end to end through the `mlwf` CLI as the Makefile calls it:
`drift-demo` (drifted traffic is served and logged, drift is detected, the retrained model passes its canary
and becomes champion) and `rollout-demo` (a broken canary is rolled back, the champion keeps answering).

Smaller than the Makefile's defaults (rows, epochs) and with a generous latency budget: CI machines are shared,
and this test is about the flow, not the model's quality."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import requests

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
GATE = ["--min-roc-auc", "0.6", "--max-p99-latency-ms", "100"]


def mlwf(env: dict[str, str], *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_drift_demo_retrains_and_promotes_then_a_broken_canary_is_rolled_back(tmp_path, free_port):
    env = {**os.environ, "MLWF_STATE_DIR": str(tmp_path / "state"), "MLWF_SERVE_PORT": str(free_port),
           "GX_ANALYTICS_ENABLED": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    try:
        demo = mlwf(env, "demo", "--rows", "8000", "--epochs", "12", *GATE)
        assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
        record = tmp_path / "state" / "serving" / "transactions-classifier" / "server.json"
        champion = json.loads(record.read_text())

        drift = mlwf(env, "drift-demo", "--rows", "8000", "--replay", "1500", "--epochs", "12",
                     *[f"--retrain-arg={a.lstrip('-').replace('-', '_')}={v}" for a, v in zip(GATE[::2], GATE[1::2])])
        out = drift.stdout + drift.stderr
        assert drift.returncode == 0, out[-5000:]
        logged = re.search(r"the model server logged (\d+) rows", drift.stdout)  # its own request log, not the fallback
        assert logged and int(logged.group(1)) >= 1500, drift.stdout[-2000:]
        assert "DRIFT ALERT" in drift.stdout
        assert f"Champion now:        v2 (was v{champion['version']})" in drift.stdout
        assert "allowed in the canary analysis" in out  # the expected shift was measured and used

        served = json.loads(record.read_text())
        assert served["version"] == "2"
        row = {"amount": 120.0, "hour_of_day": 3, "card_age_days": 40, "distance_km": 900.0, "txn_count_24h": 6,
               "merchant_category": "electronics", "channel": "online", "country": "US"}
        answer = requests.post(served["predict_url"], json={"instances": [row]}, timeout=10)
        assert answer.status_code == 200 and answer.json()["model_version"]

        # the broken canary is canaried against the new champion (after the drift demo: its replayed, undrifted
        # traffic would otherwise dilute the drifted window the monitor reads)
        rollout = mlwf(env, "rollout-demo", "--broken", "errors")
        assert rollout.returncode == 0, rollout.stdout[-3000:] + rollout.stderr[-3000:]
        assert "rolled back" in rollout.stdout and "success_rate fail" in rollout.stdout
        assert f"the champion v{served['version']} still answers" in rollout.stdout and "HTTP 200" in rollout.stdout
        assert json.loads(record.read_text())["version"] == "2"
    finally:
        mlwf(env, "stop", timeout=120)
