"""The multi-node TrainJob: the object validates strictly against the Kubeflow Trainer CRD, and the create/wait
calls run against a small HTTP stub of the API server whose "controller" really runs the TrainJob's command
(torchrun with numNodes x numProcPerNode gloo processes on this machine) and reports Complete or Failed.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from components.core import bundle as bundle_lib
from components.core.settings import get_settings
from components.training import distributed, trainjob
from components.training.train import TrainParams
from tests.contract.manifest_tools import crd_validator
from tests.factories import SYNTHETIC_SPEC as SPEC
from tests.factories import synthetic

PATH = re.compile(r"^/apis/trainer\.kubeflow\.org/v1alpha1/namespaces/([a-z0-9-]+)/trainjobs(?:/([a-z0-9.-]+))?$")


def validator() -> Any:
    return crd_validator(trainjob.GROUP, trainjob.VERSION, trainjob.KIND)


def errors(obj: Any) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator().iter_errors(obj)]


class TrainJobStub:
    """POST and GET of TrainJobs on 127.0.0.1; every request is recorded, every stored object validated.

    outcome "run": the first GET starts the job's command on this machine and later GETs report Complete or
    Failed when it ends; "fail": Failed after two GETs; "never": stays running.
    """

    def __init__(self, outcome: str = "run") -> None:
        self.outcome = outcome
        self.requests: list[tuple[str, str, str | None, Any]] = []
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.processes: dict[tuple[str, str], subprocess.Popen] = {}
        self.gets = 0
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                content_type = (self.headers.get("Content-Type") or "").split(";")[0] or None
                with stub.lock:
                    status, body = stub.route(self.command, self.path.split("?")[0], content_type, raw)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _serve

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    def close(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
        self.server.shutdown()
        self.server.server_close()

    def route(self, method: str, path: str, content_type: str | None, raw: bytes) -> tuple[int, dict[str, Any]]:
        body = json.loads(raw) if raw else None
        self.requests.append((method, path, content_type, body))
        match = PATH.match(path)
        if not match:
            return 404, {"kind": "Status", "code": 404, "message": f"the stub serves no {path}"}
        namespace, name = match.groups()
        if method == "POST" and name is None:
            if content_type != "application/json":
                return 415, {"kind": "Status", "code": 415, "message": f"POST needs application/json, got {content_type}"}
            problems = errors(body)
            if problems:
                return 422, {"kind": "Status", "code": 422, "message": "TrainJob is invalid: " + "; ".join(problems[:5])}
            key = (namespace, body["metadata"]["name"])
            if key in self.objects:
                return 409, {"kind": "Status", "code": 409, "reason": "AlreadyExists", "message": f"{key[1]} already exists"}
            self.objects[key] = {**body, "status": {}}
            return 201, self.objects[key]
        if method == "GET" and name is not None:
            key = (namespace, name)
            if key not in self.objects:
                return 404, {"kind": "Status", "code": 404, "message": f"trainjobs {name} not found"}
            self.gets += 1
            self.reconcile(key)
            problems = errors(self.objects[key])
            if problems:  # the stub's own status must fit the CRD: a 400 fails the client at once
                return 400, {"kind": "Status", "code": 400, "message": "stub status breaks the CRD: " + "; ".join(problems[:5])}
            return 200, self.objects[key]
        return 405, {"kind": "Status", "code": 405, "message": f"{method} not served on {path}"}

    def reconcile(self, key: tuple[str, str]) -> None:
        obj = self.objects[key]
        condition = None
        if self.outcome == "fail" and self.gets >= 2:
            condition = {"type": "Failed", "status": "True", "reason": "JobsFailed", "message": "node-0 exited with code 1"}
        elif self.outcome == "run":
            process = self.processes.get(key)
            if process is None:
                trainer = obj["spec"]["trainer"]
                assert trainer["command"] == ["torchrun"], trainer["command"]
                world = trainer["numNodes"] * trainer["numProcPerNode"]
                # Every node's processes, here on one machine: the same arguments under one rendezvous.
                self.processes[key] = subprocess.Popen(
                    [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world}", *trainer["args"]],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
            elif process.poll() is not None:
                ok = process.returncode == 0
                tail = (process.stdout.read() if process.stdout else "")[-300:]
                condition = {
                    "type": "Complete" if ok else "Failed",
                    "status": "True",
                    "reason": "JobsCompleted" if ok else "JobsFailed",
                    "message": "" if ok else tail,
                }
        now = "2026-11-24T12:00:00Z"
        running = {"type": "Created", "status": "True", "reason": "JobsCreated", "message": "created", "lastTransitionTime": now}
        obj["status"] = {"conditions": [running] + ([{**condition, "lastTransitionTime": now}] if condition else [])}


@pytest.fixture
def stub_factory():
    made: list[TrainJobStub] = []

    def make(outcome: str = "run") -> TrainJobStub:
        made.append(TrainJobStub(outcome))
        return made[-1]

    yield make
    for stub in made:
        stub.close()


def api_client(url: str) -> Any:
    import kubernetes

    return kubernetes.client.ApiClient(kubernetes.client.Configuration(host=url))


@pytest.fixture
def gpu_settings(monkeypatch):
    monkeypatch.setenv("MLWF_GPU_TOLERATIONS", '[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]')
    monkeypatch.setenv("MLWF_GPU_NODE_SELECTOR", '{"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}')
    monkeypatch.setenv("MLWF_TRAINJOB_SERVICE_ACCOUNT", "mlwf-trainer")
    return get_settings()


def test_gpu_trainjob_validates_strictly_and_places_its_nodes(gpu_settings):
    args = distributed.module_arguments(SPEC, "s3://b/train.parquet", "s3://b/out", TrainParams(), {"run_id": "abc"})
    body = trainjob.build_trainjob(
        trainjob.job_name("0123ABCDEF_run"), "mlwf", "img:1", args, nodes=3, gpus_per_node=2, settings=gpu_settings
    )
    assert errors(body) == []
    assert body["metadata"]["name"] == "mlwf-train-0123abcdef-run"
    trainer = body["spec"]["trainer"]
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (3, 2)
    assert trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "2"
    assert trainer["args"][:2] == ["-m", "components.training.distributed"]
    pod = body["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"][
        "spec"
    ]
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert pod["serviceAccountName"] == "mlwf-trainer"
    secrets = [e["valueFrom"]["secretKeyRef"] for e in trainer["env"] if "secretKeyRef" in e.get("valueFrom", {})]
    assert secrets and all(set(ref) == {"name", "key", "optional"} for ref in secrets)  # by reference, never a value
    # The validation is strict: a misspelt field is an error, not silently dropped.
    trainer["numNode"] = trainer.pop("numNodes")
    assert any("numNode" in e for e in errors(body))


def test_cpu_trainjob_asks_for_no_gpu_and_no_gpu_placement(gpu_settings):
    body = trainjob.build_trainjob("mlwf-train-x", "mlwf", "img:1", ["--out", "s3://b/o"], nodes=2, gpus_per_node=0, settings=gpu_settings)
    assert errors(body) == []
    assert "nvidia.com/gpu" not in body["spec"]["trainer"]["resourcesPerNode"]["limits"]
    pod = body["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"][
        "spec"
    ]
    assert "nodeSelector" not in pod and "tolerations" not in pod
    with pytest.raises(ValueError, match="at least one node"):
        trainjob.build_trainjob("x", "mlwf", "img", [], nodes=0, gpus_per_node=0, settings=gpu_settings)


def test_trainjob_runs_two_nodes_and_rank0_writes_the_bundle(tmp_path, stub_factory, state_dir):
    stub = stub_factory("run")
    train_path = tmp_path / "train.parquet"
    synthetic(1000, seed=9).to_parquet(train_path)
    out = tmp_path / "job"
    args = distributed.module_arguments(SPEC, str(train_path), str(out), TrainParams(epochs=4, batch_size=64, seed=2), {"run_id": "r1"})
    body = trainjob.build_trainjob("mlwf-train-r1", "mlwf", "img:1", args, nodes=2, gpus_per_node=0, settings=get_settings())
    done = trainjob.run_trainjob(body, timeout_s=300, api_client=api_client(stub.url), poll_s=0.2)
    assert trainjob.verdict(done)[0] == "complete"
    methods = [(m, p, c) for m, p, c, _ in stub.requests]
    assert methods[0] == ("POST", "/apis/trainer.kubeflow.org/v1alpha1/namespaces/mlwf/trainjobs", "application/json")
    assert all(m == "GET" and p.endswith("/trainjobs/mlwf-train-r1") for m, p, _ in methods[1:])
    result = distributed.read_result(str(out))
    assert result.world_size == 2 and result.history
    assert bundle_lib.load(out / "bundle").predict_proba({"x1": [2.0], "x2": [1.0], "colour": ["red"]})[0] > 0.5


def test_a_failed_trainjob_raises_with_its_reason(stub_factory, gpu_settings):
    stub = stub_factory("fail")
    body = trainjob.build_trainjob("mlwf-train-f", "mlwf", "img:1", [], nodes=2, gpus_per_node=1, settings=gpu_settings)
    with pytest.raises(trainjob.TrainJobError, match=r"TrainJob mlwf/mlwf-train-f failed: JobsFailed: node-0 exited with code 1"):
        trainjob.run_trainjob(body, timeout_s=30, api_client=api_client(stub.url), poll_s=0.05)


def test_a_retried_step_waits_for_the_job_it_already_created(stub_factory, gpu_settings):
    stub = stub_factory("never")
    body = trainjob.build_trainjob("mlwf-train-again", "mlwf", "img:1", [], nodes=2, gpus_per_node=1, settings=gpu_settings)
    client = api_client(stub.url)
    trainjob.create(trainjob.custom_objects_api(client), body)
    with pytest.raises(trainjob.TrainJobError, match=r"not complete after 0.3s: running"):
        trainjob.run_trainjob(body, timeout_s=0.3, api_client=client, poll_s=0.05)
    statuses = [(m, p.rsplit("/", 1)[-1]) for m, p, _, _ in stub.requests]
    assert statuses[:2] == [("POST", "trainjobs"), ("POST", "trainjobs")]  # the second create met 409 and read it back
    assert len(stub.objects) == 1


def test_several_nodes_need_shared_storage(state_dir, tmp_path, transactions_spec):
    from components.training.run import run_training_step

    with pytest.raises(trainjob.TrainJobError, match="needs MLWF_STATE_DIR on s3://"):
        run_training_step(transactions_spec, str(tmp_path / "t.parquet"), str(tmp_path / "m"), TrainParams(), "svc_v1", "fp", nodes=2)
