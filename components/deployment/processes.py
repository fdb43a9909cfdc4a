"""The local model-server processes: their records on disk, liveness, readiness, stopping, a smoke test.

components/deployment/local.py starts servers and rolls versions out; this module knows how to tell whether a
recorded server still runs and how to stop it (the whole process group), so a rerun after a crash converges.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import requests

from components.deployment.rollout import DeployError

SERVER_RECORD, CANARY_RECORD = "server.json", "canary.json"  # beside the served bundle, one per server


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def running(record: dict[str, Any] | None) -> bool:
    """The record's server still runs: its pid is alive and (where /proc tells) runs the recorded command.

    The command check keeps a rerun from trusting, or killing, an unrelated process that reused a dead server's pid.
    """
    pid = int((record or {}).get("pid", 0))
    if pid <= 0 or not alive(pid):
        return False
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.parent.exists() and record.get("command"):  # type: ignore[union-attr]
        try:
            args = cmdline.read_bytes().split(b"\0")[:-1]
        except OSError:
            return False
        return [a.decode(errors="replace") for a in args] == [str(c) for c in record["command"]]  # type: ignore[index]
    return True


def read_record(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def stop_local(record_path: Path, timeout: float = 10.0) -> None:
    """Stop the server a deployment record names, if it still runs.

    For a model's server.json this also stops a canary still recorded beside it (a rollout interrupted by a
    crash), so `mlwf stop` and test clean-ups leave no server behind.
    """
    record = read_record(record_path) if record_path.exists() else None
    if record_path.name == SERVER_RECORD and (record_path.parent / CANARY_RECORD).exists():
        canary = read_record(record_path.parent / CANARY_RECORD) or {}
        for extra in (canary, canary.get("previous")):
            if extra and int(extra.get("pid", 0)) != int((record or {}).get("pid", -1)):
                stop_record(extra, timeout)
        (record_path.parent / CANARY_RECORD).unlink(missing_ok=True)
    if record is not None:
        stop_record(record, timeout)


def stop_record(record: dict[str, Any], timeout: float = 10.0) -> None:
    if not running(record):
        return
    pid = int(record["pid"])
    os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive(pid):
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.1)
    if alive(pid):
        os.killpg(pid, signal.SIGKILL)


def wait_ready(base_url: str, name: str, process: subprocess.Popen[bytes] | None, log_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            tail = log_path.read_text(errors="replace")[-1500:] if log_path.exists() else ""
            raise DeployError(f"model server exited with code {process.returncode} before it was ready:\n{tail}")
        try:
            if requests.get(f"{base_url}/v2/models/{name}/ready", timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.25)
    raise DeployError(f"model server at {base_url} not ready after {timeout:.0f}s (log: {log_path})")


def smoke_test(predict_url: str, instances: list[dict[str, Any]]) -> list[float]:
    """One real prediction through HTTP; every probability must be a number in [0, 1]."""
    response = requests.post(predict_url, json={"instances": instances}, timeout=10)
    if response.status_code != 200:
        raise DeployError(f"smoke prediction failed: HTTP {response.status_code}: {response.text[:300]}")
    probs = [p["probability"] for p in response.json()["predictions"]]
    if len(probs) != len(instances) or not all(0.0 <= p <= 1.0 for p in probs):
        raise DeployError(f"smoke prediction returned invalid probabilities: {probs}")
    return probs


def port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True
