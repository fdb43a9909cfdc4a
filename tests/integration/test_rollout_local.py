"""The local progressive rollout with real model servers on 127.0.0.1: a good canary is promoted through every
step, a broken one (a real bundle whose signature no longer fits the traffic) is rolled back while stable keeps
answering, and a rollout cut short by a killed deploy process converges on a rerun with no server left behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests

from components.core import bundle as bundle_lib
from components.core.settings import get_settings
from components.core.stats import prediction_psi
from components.deployment.local import deploy_local
from components.deployment.processes import stop_local
from components.deployment.rollout import DeployError
from pipelines.demo_bundles import make_broken_bundle

pytestmark = pytest.mark.integration
MODEL = "Rollout Model"
NAME = "rollout-model"


def _frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=n), rng.lognormal(size=n)
    colour = rng.choice(["red", "green", "blue"], n)
    label = (rng.random(n) < 1 / (1 + np.exp(-(2 * x1 + (colour == "red") - 0.5)))).astype(int)
    return pd.DataFrame(
        {
            "event_timestamp": pd.date_range("2026-01-01", periods=n, freq="h", tz="UTC"),
            "x1": x1,
            "x2": x2,
            "colour": colour,
            "label": label,
        }
    )


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    from components.training.train import TrainParams, build_bundle, train_model

    root = tmp_path_factory.mktemp("bundles")
    out = {}
    frame = _frame(900, 0)  # a calibration tail of ~67 rows: enough to calibrate, few enough for Platt (smooth scores)
    for version, seed in (("1", 0), ("2", 1)):
        # Two seeds on the same data: a retrained model, close to the old one but not the same.
        program, vocab, result = train_model(frame, ["x1", "x2"], ["colour"], TrainParams(epochs=10, seed=seed, patience=3))
        build_bundle(
            root / f"v{version}",
            program,
            vocab,
            result,
            frame,
            ["x1", "x2"],
            ["colour"],
            {"dataset": "synthetic", "model_version": version},
            "# test\n",
        )
        out[version] = str(root / f"v{version}")
    out["broken"] = make_broken_bundle(out["2"], str(root / "broken"), "errors")
    return out


@pytest.fixture(scope="module")
def traffic() -> list[dict]:
    frame = _frame(600, 9)
    columns = bundle_lib.columns_from_frame(frame, ["x1", "x2", "colour"])
    return [{k: v[i] for k, v in columns.items()} for i in range(len(frame))]


@pytest.fixture
def local(state_dir: Path, free_port: int, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MLWF_SERVE_PORT", str(free_port))
    monkeypatch.setenv("MLWF_CANARY_STEPS", "10,50,100")
    monkeypatch.setenv("MLWF_CANARY_STEP_SECONDS", "0.5")
    monkeypatch.setenv("MLWF_CANARY_MIN_REQUESTS", "40")
    # As in a deploy step that imported Feast (which exports a multiprocess directory of its own): the servers
    # this process starts must still count only their own requests, or the canary is judged on stable's answers.
    inherited = state_dir / "inherited-metrics"
    inherited.mkdir(parents=True)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(inherited))
    monkeypatch.setenv("PROMETHEUS_MULTIPROCESS_DIR", str(inherited))
    home = state_dir / "serving" / NAME
    yield home
    stop_local(home / "server.json")
    assert server_processes(state_dir) == [], "a model server outlived the test"


def server_processes(state_dir: Path) -> list[int]:
    """Live (not zombie) `python -m serving` processes serving a bundle under this test's state directory."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        text = b" ".join(args).decode(errors="replace")
        if state != "Z" and "-m serving" in text and str(state_dir) in text:
            found.append(int(proc.name))
    return sorted(found)


def record(home: Path, name: str = "server.json") -> dict:
    return json.loads((home / name).read_text())


def test_good_canary_is_promoted_then_a_broken_one_is_rolled_back(local, bundles, traffic, state_dir):
    settings = get_settings()
    first = deploy_local(bundles["1"], MODEL, "1", traffic[:3], settings, replay=traffic)
    assert server_processes(state_dir) == [first.pid]

    # As the deploy step does: the canary may differ from stable by the shift the two show offline on the same rows
    # (two seeds give calibrated scores on different isotonic steps), and only by more than that fails.
    one, two = bundle_lib.load(bundles["1"]), bundle_lib.load(bundles["2"])
    rows = {k: [r[k] for r in traffic] for k in one.feature_names}
    expected = prediction_psi(one.predict_proba(rows), two.predict_proba(rows))
    second = deploy_local(bundles["2"], MODEL, "2", traffic[:3], settings, replay=traffic, expected_psi=expected)

    # The canary became THE server: the record names it, the old server is gone, no canary record is left.
    assert second.version == "2" and second.pid != first.pid and second.url != first.url
    assert record(local)["pid"] == second.pid and not (local / "canary.json").exists()
    assert server_processes(state_dir) == [second.pid]
    assert second.percents == (10, 50, 100) and second.rollout.startswith("canary promoted after steps 10% -> 50% -> 100%")
    answer = requests.post(second.predict_url, json={"instances": traffic[:2]}, timeout=10).json()
    assert answer["model_version"] == "2"

    # The broken canary: while it is analyzed and rolled back, stable answers every request a user sends.
    codes: list[int] = []
    stop = threading.Event()

    def user() -> None:
        while not stop.is_set():
            codes.append(requests.post(second.predict_url, json={"instances": traffic[5:6]}, timeout=10).status_code)
            time.sleep(0.01)

    thread = threading.Thread(target=user)
    thread.start()
    try:
        with pytest.raises(DeployError) as err:
            deploy_local(bundles["broken"], MODEL, "3", traffic[:3], settings, replay=traffic)
    finally:
        stop.set()
        thread.join()
    message = str(err.value)
    assert "canary v3 of rollout-model (stable v2) rolled back: 2 failed analyses (limit 2)" in message
    assert message.count("[10%] success_rate fail") == 2  # both analyses at the first step, each named
    assert err.value.report.percents == [10] and err.value.report.outcome == "rolled-back"
    assert "failed) vs stable 1.000" in message
    assert codes and set(codes) == {200}
    assert record(local)["pid"] == second.pid and not (local / "canary.json").exists()
    assert server_processes(state_dir) == [second.pid]


CHILD = """
import json, sys
from components.deployment.local import deploy_local
from components.core.settings import get_settings
traffic = json.load(open(sys.argv[2]))
deploy_local(sys.argv[1], "Rollout Model", "2", traffic[:3], get_settings(), replay=traffic)
"""


def test_a_killed_rollout_resumes_on_rerun_and_leaves_no_orphans(local, bundles, traffic, state_dir):
    settings = get_settings()
    first = deploy_local(bundles["1"], MODEL, "1", traffic[:3], settings, replay=traffic)
    rows = state_dir / "traffic.json"
    rows.write_text(json.dumps(traffic))
    # The deploy in a process of its own, with longer steps, so it can be killed mid-rollout like a crashed step.
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, bundles["2"], str(rows)],
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "MLWF_CANARY_STEP_SECONDS": "3"},
    )
    deadline = time.monotonic() + 60
    canary_path = local / "canary.json"
    # Kill the deploying process as soon as the canary has passed its first step: mid-rollout, servers running.
    while time.monotonic() < deadline and (not canary_path.exists() or record(local, "canary.json").get("percent") != 50):
        time.sleep(0.05)
    child.kill()
    child.wait()
    canary = record(local, "canary.json")
    assert canary["percent"] == 50
    assert server_processes(state_dir) == sorted([first.pid, canary["pid"]])

    again = deploy_local(bundles["2"], MODEL, "2", traffic[:3], settings, replay=traffic)

    assert again.pid == canary["pid"]  # the same canary server, resumed, not a third one
    assert again.percents == (50, 100)  # re-analyzed at the step it had reached, then the rest
    assert record(local)["pid"] == again.pid and not canary_path.exists()
    assert server_processes(state_dir) == [again.pid]
    # A third run of the same version converges to the same state and starts nothing.
    assert deploy_local(bundles["2"], MODEL, "2", traffic[:3], settings, replay=traffic).pid == again.pid
