"""Deploy: put a gated bundle behind a KServe model server and prove it answers.

Local profile: the project's KServe runtime (serving/) starts on 127.0.0.1 from a copy of the bundle in
the state directory, replacing the server of the previous version once the new one answers.
Cluster profile: an InferenceService is created on the first deploy; later deploys point the predictor at
the new bundle as a canary, wait until the canary revision is really ready, then promote it, or roll it
back when it is not ready in time.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from components import bundle as bundle_lib
from components import storage
from components.settings import Settings

log = logging.getLogger(__name__)


class DeployError(RuntimeError):
    """The new model could not be served; the message says why."""


def service_name(model_name: str) -> str:
    """A DNS-1035 name for the InferenceService and the local model server."""
    name = "".join(ch if ch.isalnum() else "-" for ch in model_name.lower()).strip("-")
    return (name if name[:1].isalpha() else f"m-{name}")[:45]


# ---------------------------------------------------------------- local


@dataclass(frozen=True)
class LocalDeployment:
    url: str
    predict_url: str
    pid: int
    version: str
    model_dir: str


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def stop_local(record_path: Path, timeout: float = 10.0) -> None:
    """Stop the server a deployment record names, if it still runs."""
    if not record_path.exists():
        return
    pid = int(json.loads(record_path.read_text()).get("pid", 0))
    if pid <= 0 or not _alive(pid):
        return
    os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _alive(pid):
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.1)
    if _alive(pid):
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


def _port_free(host: str, port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def deploy_local(model_dir: str, model_name: str, version: str, instances: list[dict[str, Any]], settings: Settings, timeout: float = 120.0) -> LocalDeployment:
    name = service_name(model_name)
    home = Path(settings.state_dir) / "serving" / name
    target = home / f"v{version}"
    bundle_lib.verify(model_dir)
    storage.copy_dir(model_dir, str(target))
    record_path = home / "server.json"
    stop_local(record_path)  # one server per model locally; the canary flow with two lives in the rollout logic
    if not _port_free(settings.serve_host, settings.serve_port):
        raise DeployError(f"port {settings.serve_port} on {settings.serve_host} is in use by another program; set MLWF_SERVE_PORT")
    log_path = home / "server.log"
    base_url = f"http://{settings.serve_host}:{settings.serve_port}"
    cmd = [sys.executable, "-m", "serving", "--model_name", name, "--model_dir", str(target),
           "--http_port", str(settings.serve_port), "--bind_host", settings.serve_host]
    project_root = str(Path(__file__).resolve().parent.parent)
    with open(log_path, "ab") as log_file:
        # A session of its own: the server outlives this step (the demo prints its URL) and stops as a group.
        process = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True, cwd=project_root)
    try:
        wait_ready(base_url, name, process, log_path, timeout)
        predict_url = f"{base_url}/v1/models/{name}:predict"
        smoke_test(predict_url, instances)
    except BaseException:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        raise
    record = {"pid": process.pid, "url": base_url, "predict_url": predict_url, "version": version,
              "model_dir": str(target), "command": cmd}
    storage.write_bytes(str(record_path), json.dumps(record, indent=2).encode())
    return LocalDeployment(url=base_url, predict_url=predict_url, pid=process.pid, version=version, model_dir=str(target))
