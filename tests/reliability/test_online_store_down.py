"""Fault: the Feast online store behind entity-key requests is missing, or locked by another writer.

The real model server (`python -m serving` on 127.0.0.1) serves a bundle trained here on features built by the
real Feast store (local provider, SQLite online store), as in tests/integration/test_serving.py.
Expected: entity-key requests get 503 with a message naming the online store, never a crash or a hang; requests
that carry feature values keep getting 200 meanwhile; when the store is back, entity-key requests succeed again
without a restart. Proof that nothing was lost: every request got an answer, the server process never exited,
and the recovered answers equal the model's scores on the same features.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import requests

from tests.factories import free_port, transactions_frame

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
MODEL = "clf"
V1 = f"/v1/models/{MODEL}:predict"
# sqlite3's default busy timeout is 5 s: a locked store is reported after that. Generous bound for "no hang".
FAILS_WITHIN_S = 30


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from components.core import bundle as bundle_lib
    from components.core.settings import get_settings
    from components.core.spec import load_spec
    from components.features.store import build_features
    from components.training.train import TrainParams, build_bundle, train_model

    tmp = tmp_path_factory.mktemp("online")
    state = tmp / "state"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLWF_STATE_DIR", str(state))
        mp.setenv("MLWF_PROFILE", "local")
        for var in ("MLWF_FEAST_REGISTRY", "MLWF_FEAST_ONLINE", "MLWF_FEAST_OFFLINE_ROOT"):
            mp.delenv(var, raising=False)
        spec = load_spec("transactions")
        valid, numeric, categorical = transactions_frame(3000, seed=8)
        settings = get_settings()
        outcome = build_features(spec, valid, settings)
        program, vocab, result = train_model(outcome.train, numeric, categorical, TrainParams(epochs=2, seed=3))
        bundle_dir = tmp / "bundle"
        lineage = {"dataset": spec.name, "feature_service": outcome.service, "model_name": MODEL, "inputs_fingerprint": "online0123456"}
        build_bundle(bundle_dir, program, vocab, result, outcome.train, numeric, categorical, lineage, "test bundle\n")
    port, log_path = free_port(), tmp / "server.log"
    cmd = [
        sys.executable,
        "-m",
        "serving",
        "--model_name",
        MODEL,
        "--model_dir",
        str(bundle_dir),
        "--http_port",
        str(port),
        "--bind_host",
        "127.0.0.1",
        "--request_log_root",
        "off",
        "--entity_lookup",
        "lazy",
    ]
    env = {**os.environ, "MLWF_STATE_DIR": str(state), "MLWF_PROFILE": "local"}
    with open(log_path, "ab") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        from components.deployment.processes import wait_ready

        wait_ready(url, MODEL, process, log_path, timeout=120)
        offline = pd.concat([outcome.train, outcome.test]).set_index("transaction_id")
        yield {
            "url": url,
            "process": process,
            "online_db": Path(settings.feast_online),
            "offline": offline,
            "features": numeric + categorical,
            "bundle": bundle_lib.load(bundle_dir),
            "log": log_path,
        }
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(30)


def row(s: dict[str, Any], key: str) -> dict[str, Any]:
    values = s["offline"].loc[key, s["features"]].to_dict()
    return {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in values.items()}


def post(s: dict[str, Any], instances: list[dict[str, Any]]) -> requests.Response:
    return requests.post(s["url"] + V1, json={"instances": instances}, timeout=60)


def by_key(s: dict[str, Any], key: str) -> requests.Response:
    return post(s, [{"transaction_id": key}])


def assert_scores_match(s: dict[str, Any], response: requests.Response, key: str) -> None:
    assert response.status_code == 200, response.text
    want = s["bundle"].predict_proba({f: [v] for f, v in row(s, key).items()})
    np.testing.assert_allclose(response.json()["predictions"][0]["probability"], want[0], rtol=1e-5, atol=1e-6)


def test_a_missing_online_store_gets_503_and_recovers_when_it_is_back(served: dict[str, Any]) -> None:
    """Fault: the online store's file is gone when the first entity-key request comes. Behaviour: 503 naming the
    online store; feature-value requests 200 meanwhile. Proof nothing was lost: the server still runs, and once
    the file is back the same key is scored exactly as from its features, without a restart."""
    key = served["offline"].index[3]
    db: Path = served["online_db"]
    aside = db.with_name(db.name + ".aside")
    os.replace(db, aside)
    try:
        refused = by_key(served, key)
        assert refused.status_code == 503, refused.text
        assert "online store" in refused.json()["error"], refused.json()
        assert post(served, [row(served, key)]).status_code == 200
    finally:
        os.replace(aside, db)
    assert served["process"].poll() is None
    assert_scores_match(served, by_key(served, key), key)


def test_a_locked_online_store_gets_503_while_feature_values_keep_being_served(served: dict[str, Any]) -> None:
    """Fault: another connection holds an exclusive lock on the SQLite online store. Behaviour: an entity-key
    request gets 503 naming the lock within a bounded time, and requests with feature values keep getting 200
    while it waits. Proof nothing was lost: every request was answered, the process still runs, and after the
    lock is released the key is scored exactly as from its features."""
    key = served["offline"].index[7]
    holder = sqlite3.connect(served["online_db"], timeout=0, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    answers: dict[str, Any] = {}

    def entity_request() -> None:
        started = time.monotonic()
        answers["response"] = by_key(served, key)
        answers["seconds"] = time.monotonic() - started

    waiting = threading.Thread(target=entity_request)
    try:
        waiting.start()
        codes = []
        while waiting.is_alive() and len(codes) < 2000:  # the model keeps answering while the lookup waits
            codes.append(post(served, [row(served, served["offline"].index[len(codes) % 50])]).status_code)
            time.sleep(0.01)
        waiting.join(FAILS_WITHIN_S)
    finally:
        holder.rollback()
        holder.close()
    assert not waiting.is_alive(), "the entity-key request hung on the locked store"
    refused = answers["response"]
    assert refused.status_code == 503, refused.text
    assert "online store" in refused.json()["error"] and "locked" in refused.json()["error"], refused.json()
    assert answers["seconds"] < FAILS_WITHIN_S
    assert codes and set(codes) == {200}, f"feature-value requests during the lock: {sorted(set(codes))}"
    assert served["process"].poll() is None
    assert_scores_match(served, by_key(served, key), key)
