"""Deploy: put a gated bundle behind a KServe model server and prove it answers.

Local profile: the project's KServe runtime (serving/) starts on 127.0.0.1 from a copy of the bundle in
the state directory. The first version starts on MLWF_SERVE_PORT after a smoke test. A later version, while
another one serves, goes through the progressive rollout of components/deployment/rollout.py with two servers: the
canary starts on a second port, traffic replayed from the test period (components/deployment/replay.py) is
split between the two by the current percent, and the analysis reads the servers' /metrics and what the replaying
client saw. Promoted: the canary becomes THE server (server.json) and the old one stops. Rolled back: the
canary stops, the old server never stopped answering. Records on disk (server.json, canary.json) let a rerun
after a crash find every server it started and converge, resuming a rollout at its last step.
Cluster profile: components/deployment/kserve.py, the same rollout through an InferenceService.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests

from components.core import bundle as bundle_lib
from components.core import storage
from components.core.paths import service_name
from components.core.settings import Settings
from components.deployment.processes import (
    CANARY_RECORD,
    SERVER_RECORD,
    port_free,
    read_record,
    running,
    smoke_test,
    stop_local,
    stop_record,
    wait_ready,
)
from components.deployment.replay import replay_split, scrape_requests
from components.deployment.rollout import DeployError

if TYPE_CHECKING:
    from components.deployment.rollout import Observation, RolloutReport

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- local


@dataclass(frozen=True)
class LocalDeployment:
    url: str
    predict_url: str
    pid: int
    version: str
    model_dir: str
    rollout: str = ""  # the canary rollout's summary, when this deploy went through one
    percents: tuple[int, ...] = ()  # the traffic steps it went through, in order


def _start_server(name: str, model_dir: Path, host: str, port: int, log_path: Path) -> tuple[subprocess.Popen[bytes], list[str]]:
    cmd = [
        sys.executable,
        "-m",
        "serving",
        "--model_name",
        name,
        "--model_dir",
        str(model_dir),
        "--http_port",
        str(port),
        "--bind_host",
        host,
    ]
    project_root = str(Path(__file__).resolve().parents[2])  # the repository: components/deployment/local.py
    with open(log_path, "ab") as log_file:
        # A session of its own: the server outlives this step (the demo prints its URL) and stops as a group.
        process = subprocess.Popen(
            cmd, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True, cwd=project_root, env=_server_environment()
        )
    return process, cmd


def _server_environment() -> dict[str, str]:
    """This process's environment without a Prometheus multiprocess directory: `import feast` exports one, and two
    servers that inherit it would sum each other's counters (a broken canary read the stable's 2xx as its own)."""
    drop = {"PROMETHEUS_MULTIPROC_DIR", "PROMETHEUS_MULTIPROCESS_DIR", "prometheus_multiproc_dir", "MLWF_SERVING_METRICS_DIR"}
    return {k: v for k, v in os.environ.items() if k not in drop}


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def _write_record(path: Path, record: dict[str, Any]) -> None:
    storage.write_bytes(str(path), json.dumps(record, indent=2).encode())


def _deployment(record: dict[str, Any]) -> LocalDeployment:
    return LocalDeployment(
        url=record["url"],
        predict_url=record["predict_url"],
        pid=int(record["pid"]),
        version=str(record["version"]),
        model_dir=record["model_dir"],
    )


def deploy_local(
    model_dir: str,
    model_name: str,
    version: str,
    instances: list[dict[str, Any]],
    settings: Settings,
    timeout: float = 120.0,
    replay: list[dict[str, Any]] | None = None,
    expected_psi: float = 0.0,
) -> LocalDeployment:
    """Serve `version` on 127.0.0.1: the first version directly, a later one through the progressive rollout.

    `instances` are the smoke-test rows; `replay` the traffic a rollout replays (default: `instances`);
    `expected_psi` the prediction shift between the two versions that offline scoring predicts (see RolloutPolicy).
    Raises DeployError when the new version cannot serve or its canary is rolled back (stable keeps serving).
    """
    name = service_name(model_name)
    home = Path(settings.state_dir) / "serving" / name
    target = home / f"v{version}"
    bundle_lib.verify(model_dir)
    digest = bundle_lib.bundle_digest(model_dir)
    home.mkdir(parents=True, exist_ok=True)
    stable, canary = converge_local(home, version, digest)
    if stable is not None and str(stable.get("version")) == str(version) and stable.get("digest", digest) == digest:
        log.info("local deploy: %s v%s already serves at %s", name, version, stable["url"])
        return _deployment(stable)
    if stable is None:
        return _first_local(name, home, target, model_dir, version, digest, instances, settings, timeout)
    deployment, report = rollout_local(
        name, home, stable, canary, model_dir, version, digest, replay or instances, settings, timeout, expected_psi
    )
    return dataclasses.replace(deployment, rollout=report.summary(), percents=tuple(report.percents))


def _first_local(
    name: str,
    home: Path,
    target: Path,
    model_dir: str,
    version: str,
    digest: str,
    instances: list[dict[str, Any]],
    settings: Settings,
    timeout: float,
) -> LocalDeployment:
    """No server runs: start this version on MLWF_SERVE_PORT and prove it answers."""
    storage.copy_dir(model_dir, str(target))
    record_path = home / SERVER_RECORD
    stop_local(record_path)
    if not port_free(settings.serve_host, settings.serve_port):
        raise DeployError(f"port {settings.serve_port} on {settings.serve_host} is in use by another program; set MLWF_SERVE_PORT")
    log_path = home / "server.log"
    base_url = f"http://{settings.serve_host}:{settings.serve_port}"
    process, cmd = _start_server(name, target, settings.serve_host, settings.serve_port, log_path)
    try:
        wait_ready(base_url, name, process, log_path, timeout)
        predict_url = f"{base_url}/v1/models/{name}:predict"
        smoke_test(predict_url, instances)
    except BaseException:
        _kill_group(process)
        raise
    record = {
        "pid": process.pid,
        "url": base_url,
        "predict_url": predict_url,
        "version": version,
        "model_dir": str(target),
        "command": cmd,
        "digest": digest,
    }
    _write_record(record_path, record)
    return _deployment(record)


# ---------------------------------------------------------------- local progressive rollout


def converge_local(home: Path, version: str, digest: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """Bring the records in `home` back to a consistent state after any crash; (live stable, resumable canary).

    A promotion that was cut short is finished; a canary of another version (or a dead one) is stopped and
    forgotten; a live canary of this very bundle is handed back so the rollout resumes at its recorded step.
    """
    server_path, canary_path = home / SERVER_RECORD, home / CANARY_RECORD
    stable = read_record(server_path)
    canary = read_record(canary_path) if canary_path.exists() else None
    if canary is not None and canary.get("promoting"):
        previous = canary.get("previous") or {}
        winner = {k: v for k, v in canary.items() if k not in ("promoting", "previous", "percent", "failures")}
        if running(winner):  # the canary had won: make it THE server and stop the old one
            _write_record(server_path, winner)
            if int(previous.get("pid", 0)) != int(winner["pid"]):
                stop_record(previous)
            stable = winner
        elif running(previous):  # the winner died mid-promotion: the old one still serves
            _write_record(server_path, previous)
            stable = previous
        canary_path.unlink(missing_ok=True)
        canary = None
    if canary is not None:
        resumable = running(canary) and running(stable) and str(canary.get("version")) == str(version) and canary.get("digest") == digest
        if not resumable:
            log.info("local deploy: stopping the leftover canary v%s (pid %s)", canary.get("version"), canary.get("pid"))
            stop_record(canary)
            canary_path.unlink(missing_ok=True)
            canary = None
    if not running(stable):
        stable = None
    return stable, canary


def _canary_port(settings: Settings, stable: dict[str, Any]) -> int:
    """The other of MLWF_SERVE_PORT and the port after it, so the served URL alternates between two known ports."""
    stable_port = int(str(stable["url"]).rsplit(":", 1)[1])
    for port in (settings.serve_port + 1, settings.serve_port):
        if port != stable_port and port_free(settings.serve_host, port):
            return port
    with socket.socket() as sock:  # both taken by something else: any free port
        sock.bind((settings.serve_host, 0))
        return int(sock.getsockname()[1])


def rollout_local(
    name: str,
    home: Path,
    stable: dict[str, Any],
    canary: dict[str, Any] | None,
    model_dir: str,
    version: str,
    digest: str,
    replay: list[dict[str, Any]],
    settings: Settings,
    timeout: float = 120.0,
    expected_psi: float = 0.0,
) -> tuple[LocalDeployment, RolloutReport]:
    """Canary `version` against the live `stable` server; returns the new deployment and the rollout report."""
    from components.deployment import rollout

    try:
        policy = rollout.policy_from_settings(settings, expected_psi)
    except ValueError as err:
        raise DeployError(str(err)) from err
    if not replay:
        raise DeployError("a local rollout needs rows to replay (the test set)")
    canary_path = home / CANARY_RECORD
    if canary is None:
        target = home / f"v{version}"
        storage.copy_dir(model_dir, str(target))
        port = _canary_port(settings, stable)
        base_url = f"http://{settings.serve_host}:{port}"
        log_path = home / f"canary-v{version}.log"
        process, cmd = _start_server(name, target, settings.serve_host, port, log_path)
        canary = {
            "pid": process.pid,
            "url": base_url,
            "predict_url": f"{base_url}/v1/models/{name}:predict",
            "version": version,
            "model_dir": str(target),
            "command": cmd,
            "digest": digest,
            "percent": 0,
            "failures": 0,
        }
        _write_record(canary_path, canary)  # first: a crash from here on leaves a record a rerun can find
        try:
            wait_ready(base_url, name, process, log_path, timeout)
        except BaseException:
            _kill_group(process)
            canary_path.unlink(missing_ok=True)
            raise
    else:
        log.info("local deploy: resuming the canary v%s at %s%%", version, canary.get("percent"))
    backend = LocalCanary(
        home=home, name=name, stable=stable, canary=canary, rows=replay, min_requests=policy.min_requests, request_timeout=5.0
    )
    what = f"canary v{version} of {name} (stable v{stable['version']})"
    report = rollout.run_rollout(
        backend, policy, what, start_percent=int(canary.get("percent") or 0) or None, failures=int(canary.get("failures") or 0)
    )
    return _deployment(backend.winner), report


@dataclass
class LocalCanary:
    """rollout.Backend with two local servers; traffic is replayed from the test period, split by the percent."""

    home: Path
    name: str
    stable: dict[str, Any]
    canary: dict[str, Any]
    rows: list[dict[str, Any]]
    min_requests: int = 50  # per side and window: the policy's, so a window is never too thin by construction
    request_timeout: float = 5.0
    workers: int = 4
    winner: dict[str, Any] = field(default_factory=dict)
    _offset: int = 0  # where in the rows the next window starts, so steps replay different rows

    def _check_serving(self, record: dict[str, Any], role: str) -> None:
        if not running(record):
            raise DeployError(f"the {role} server (pid {record.get('pid')}) is not running")
        try:
            ready = requests.get(f"{record['url']}/v2/models/{self.name}/ready", timeout=self.request_timeout).status_code == 200
        except requests.RequestException as err:
            raise DeployError(f"the {role} server at {record['url']} does not answer: {err}") from err
        if not ready:
            raise DeployError(f"the {role} server at {record['url']} is not ready")

    def set_traffic(self, percent: int) -> None:
        # Locally the split is the replaying client's: the canary only has to be up to take its share.
        self._check_serving(self.canary, "canary")
        self._check_serving(self.stable, "stable")

    def observe(self, percent: int, seconds: float) -> tuple[Observation, Observation]:
        from components.deployment.rollout import Observation

        before = {role: scrape_requests(rec["url"], self.name) for role, rec in (("stable", self.stable), ("canary", self.canary))}
        sides = replay_split(
            self.stable["predict_url"],
            self.canary["predict_url"],
            self.rows,
            percent,
            seconds,
            min_requests=self.min_requests,
            offset=self._offset,
            timeout=self.request_timeout,
            workers=self.workers,
        )
        self._offset += sides["stable"].requests + sides["canary"].requests
        out = []
        for role, rec in (("stable", self.stable), ("canary", self.canary)):
            client = sides[role]
            after = scrape_requests(rec["url"], self.name)
            server_requests = server_errors = None
            if before[role] is not None and after is not None:
                server_requests = after[0] - before[role][0]  # type: ignore[index]
                server_errors = after[1] - before[role][1]  # type: ignore[index]
            # The server also counts requests others sent (the stable one keeps serving users); the client also
            # counts what never reached a server (timeouts, refused connections). Each side takes the larger.
            requests_n = max(client.requests, int(server_requests or 0))
            errors = max(client.errors, int(server_errors or 0))
            source = f"client replay ({client.requests} requests)" + (
                f" + {rec['url']}/metrics ({int(server_requests or 0)} requests, {int(server_errors or 0)} errors)"
                if server_requests is not None
                else f"; {rec['url']}/metrics has no mlwf_inference_requests_total"
            )
            out.append(Observation(requests_n, errors, client.p99_ms, client.predictions, source))
        return out[0], out[1]

    def checkpoint(self, percent: int, failures: int) -> None:
        self.canary = {**self.canary, "percent": percent, "failures": failures}
        _write_record(self.home / CANARY_RECORD, self.canary)

    def promote(self) -> None:
        # Crash-safe order: the canary record first says "promoting" and names the old server, so a rerun that
        # finds it finishes the job (converge_local) instead of leaving the old server running unrecorded.
        self.canary = {**self.canary, "promoting": True, "previous": self.stable}
        _write_record(self.home / CANARY_RECORD, self.canary)
        winner = {k: v for k, v in self.canary.items() if k not in ("promoting", "previous", "percent", "failures")}
        _write_record(self.home / SERVER_RECORD, winner)
        stop_record(self.stable)
        (self.home / CANARY_RECORD).unlink(missing_ok=True)
        self.winner = winner

    def rollback(self) -> None:
        stop_record(self.canary)
        (self.home / CANARY_RECORD).unlink(missing_ok=True)
        self.winner = self.stable
