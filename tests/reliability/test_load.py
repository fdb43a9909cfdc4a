"""Fault: sustained load on the real model server, and the model swapped under that load.

Expected: at a fixed request rate (MLWF_LOAD_RPS, default 200/s) held for MLWF_LOAD_SECONDS (default 60, the
issue's figure; set it lower for a quick run) every request is answered 200 with p99 latency within the budget;
a local rollout (components/deployment/local.py: canary, analysis, promotion, old server stopped) under a client that keeps
sending loses no request. Proof that nothing was lost: the client counts every request it scheduled and every
answer it got; none failed, and after the swap the new version answers.

The latency budget over HTTP on this shared 2-core machine is LATENCY_BUDGET_MS (50 ms, p99 from sending a
request to reading its answer): the gate policy's 5 ms is the model alone, without HTTP or a Python client that
shares the CPU with the server. It is a generous bound, not a speed measurement (benchmarks/ measures speed).
"""

from __future__ import annotations

import http.client
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from components.core import bundle as bundle_lib
from tests.factories import free_port as pick_port
from tests.reliability.conftest import make_bundle, synthetic_frame

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
RATE = float(os.environ.get("MLWF_LOAD_RPS", "200"))
SECONDS = float(os.environ.get("MLWF_LOAD_SECONDS", "60"))
LATENCY_BUDGET_MS = 50.0
MAX_SCHEDULE_LAG_S = 1.0  # generous: the client must really hold the rate, or the test proves nothing
MODEL = "load-model"


@pytest.fixture(scope="module")
def rows() -> list[dict[str, Any]]:
    frame = synthetic_frame(600, 9)
    columns = bundle_lib.columns_from_frame(frame, ["x1", "x2", "colour"])
    return [{k: v[i] for k, v in columns.items()} for i in range(len(frame))]


def fixed_rate(port: int, path: str, bodies: list[bytes], rate: float, seconds: float, workers: int = 8) -> dict[str, Any]:
    """Send request i at t0 + i/rate (open loop: a slow answer does not slow the schedule), from `workers`
    threads with a kept-alive connection each. Returns statuses, latencies (ms, send -> answer) and lags (s)."""
    total = int(rate * seconds)
    counter = itertools.count()
    lock = threading.Lock()
    statuses: list[int] = []
    latencies: list[float] = []
    lags: list[float] = []
    t0 = time.perf_counter() + 0.2

    def work() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        while True:
            with lock:
                i = next(counter)
            if i >= total:
                break
            due = t0 + i / rate
            pause = due - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            sent = time.perf_counter()
            try:
                conn.request("POST", path, body=bodies[i % len(bodies)], headers={"content-type": "application/json"})
                response = conn.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException):
                status = -1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            done = time.perf_counter()
            with lock:
                statuses.append(status)
                latencies.append((done - sent) * 1000)
                lags.append(sent - due)
        conn.close()

    threads = [threading.Thread(target=work) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"total": total, "statuses": statuses, "latencies": np.asarray(latencies), "lags": np.asarray(lags)}


def test_fixed_request_rate_for_a_minute_zero_errors_and_p99_within_budget(tmp_path, rows):
    """Fault: RATE requests/s for SECONDS against one server. Behaviour: all answered 200, p99 within
    LATENCY_BUDGET_MS. Proof nothing was lost: the answers counted equal the requests scheduled, and the server's
    own counter of successful requests grew by exactly that many."""
    bundle = make_bundle(tmp_path / "v1", "1")
    port, log_path = pick_port(), tmp_path / "server.log"
    cmd = [
        sys.executable,
        "-m",
        "serving",
        "--model_name",
        MODEL,
        "--model_dir",
        bundle,
        "--http_port",
        str(port),
        "--bind_host",
        "127.0.0.1",
        "--request_log_root",
        str(tmp_path / "request_logs"),
    ]
    with open(log_path, "ab") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        from components.deployment.processes import wait_ready
        from components.deployment.replay import scrape_requests

        url = f"http://127.0.0.1:{port}"
        wait_ready(url, MODEL, process, log_path, timeout=120)
        bodies = [json.dumps({"instances": [r]}).encode() for r in rows]
        before = scrape_requests(url, MODEL)
        result = fixed_rate(port, f"/v1/models/{MODEL}:predict", bodies, RATE, SECONDS)
        after = scrape_requests(url, MODEL)
        assert process.poll() is None
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    statuses = result["statuses"]
    assert len(statuses) == result["total"] and set(statuses) == {200}, (
        f"{sum(s != 200 for s in statuses)} of {len(statuses)} requests failed: {sorted(set(statuses))}"
    )
    assert before is not None and after is not None and after[0] - before[0] == result["total"] and after[1] == before[1]
    assert float(np.max(result["lags"])) < MAX_SCHEDULE_LAG_S, "the client fell behind its schedule: the rate was not held"
    p99 = float(np.percentile(result["latencies"], 99))
    assert p99 <= LATENCY_BUDGET_MS, f"p99 {p99:.1f} ms over the {LATENCY_BUDGET_MS} ms budget at {RATE:.0f} req/s"


def test_swapping_the_model_under_load_loses_no_request(state_dir, free_port, monkeypatch, tmp_path, rows):
    """Fault: a new version is rolled out (canary on a second port, analysis, promotion, the old server stopped)
    while a client keeps sending. Behaviour: every request is answered 200, first by v1, then by v2. Proof nothing
    was lost: the client counted each request and its answer; none failed, and the last answers come from v2.

    The client does what a local user of `mlwf` does to follow a promotion: it reads the served URL from the
    deployment record (server.json) before each request."""
    from components.core.paths import service_name
    from components.core.settings import get_settings
    from components.deployment.local import deploy_local
    from components.deployment.processes import stop_local

    monkeypatch.setenv("MLWF_SERVE_PORT", str(free_port))
    monkeypatch.setenv("MLWF_CANARY_STEPS", "50,100")
    monkeypatch.setenv("MLWF_CANARY_STEP_SECONDS", "0.5")
    monkeypatch.setenv("MLWF_CANARY_MIN_REQUESTS", "40")
    settings = get_settings()
    # Two seeds, trained to convergence: a retrained model close to the old one, so the analysis promotes it.
    v1, v2 = (make_bundle(tmp_path / f"v{v}", v, seed=s, epochs=10) for v, s in (("1", 0), ("2", 1)))
    record = Path(settings.state_dir) / "serving" / service_name(MODEL) / "server.json"
    first = deploy_local(v1, MODEL, "1", rows[:3], settings, replay=rows)
    answers: list[tuple[int, str]] = []
    stop = threading.Event()

    def user() -> None:
        session = requests.Session()
        i = 0
        while not stop.is_set():
            url = json.loads(record.read_text())["predict_url"]
            try:
                response = session.post(url, json={"instances": [rows[i % len(rows)]]}, timeout=10)
                answers.append((response.status_code, str(response.json().get("model_version"))))
            except (requests.RequestException, ValueError) as err:
                answers.append((-1, f"{type(err).__name__}: {err}"))
            i += 1
            time.sleep(0.005)

    thread = threading.Thread(target=user)
    try:
        thread.start()
        time.sleep(0.5)
        second = deploy_local(v2, MODEL, "2", rows[:3], settings, replay=rows)
        time.sleep(1.0)  # keep sending to the new server for a while
    finally:
        stop.set()
        thread.join(30)
        stop_local(record)
    assert second.version == "2" and second.pid != first.pid and second.rollout.startswith("canary promoted")
    failed = [a for a in answers if a[0] != 200]
    assert not failed, f"{len(failed)} of {len(answers)} requests failed during the swap: {failed[:5]}"
    versions = [v for _, v in answers]
    assert versions[0] == "1" and versions[-1] == "2" and len(answers) > 100
