"""Fault: hostile input and careless handling of secrets: a bundle that would need unpickling or was tampered
with, S3 object keys that climb out of the download directory, oversized bodies and debug endpoints, secrets in
the environment of a training step, a model server and the compiler, and images that would run as root.

Expected: bundles load with no unpickler at all and only with every digest matching; a traversal key is refused
before anything lands outside the target; the server answers 413 and 404; no secret appears in logs, answers,
MLflow parameters/tags/artifacts or compiled packages; every image's final stage sets a non-root USER before its
CMD/ENTRYPOINT. Proof that nothing was lost or leaked: the files outside the target are listed (none), the
marker values are searched for everywhere they could land (absent), and a refused server never started serving.
The Roles' verbs against the allow-list are checked in tests/contract/test_manifests.py (not repeated here).
"""

from __future__ import annotations

import ast
import json
import os
import pickle
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests

from components.core import bundle as bundle_lib
from components.core import storage
from tests.factories import free_port
from tests.reliability.conftest import make_bundle, synthetic_frame, use_s3

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
MODEL = "sec-model"
MARKER = "MARKER-5e6f7a8b9c"  # the value every secret gets; it must never appear anywhere we look
SECRETS = {
    "AWS_SECRET_ACCESS_KEY": f"aws-{MARKER}",
    "MLFLOW_TRACKING_PASSWORD": f"mlflow-{MARKER}",
    "AWS_SESSION_TOKEN": f"session-{MARKER}",
}


# ---------------------------------------------------------------- loading bundles


def test_a_bundle_loads_and_serves_with_the_full_unpickler_disabled(small_bundle, monkeypatch):
    """Fault: a loader that unpickled would run whatever code a bundle carries. Behaviour: with pickle.load,
    pickle.loads and pickle.Unpickler (what every full unpickling goes through) raising, the serving runtime loads
    the bundle and scores, and every torch.load it makes is weights-only. Proof nothing was lost: the predictions
    equal the bundle's own scores; the serving and bundle code has no call to an unpickling loader."""
    import torch

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the full unpickler was called while loading a bundle")

    from serving.model import BundleModel

    expected = bundle_lib.load(small_bundle)
    rows = bundle_lib.columns_from_frame(synthetic_frame(20, 4), expected.feature_names)
    want = expected.predict_proba(rows)
    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    real_load, calls = torch.load, []

    def recording_load(*args: Any, **kwargs: Any) -> Any:
        forced = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD") == "1"
        calls.append(kwargs.get("weights_only") is True or forced)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    model = BundleModel(MODEL, small_bundle)
    assert model.load() and model.scorer is not None
    assert all(calls), f"torch.load calls that were not weights-only: {calls}"
    got = model.scorer.score(rows, 20)
    assert list(got) == pytest.approx(list(want), rel=1e-5, abs=1e-6)

    unpicklers = {
        "pickle.load",
        "pickle.loads",
        "pickle.Unpickler",
        "torch.load",
        "joblib.load",
        "dill.load",
        "cloudpickle.load",
        "cloudpickle.loads",
        "pandas.read_pickle",
        "pd.read_pickle",
        "numpy.load",
        "np.load",
    }
    found = []
    for path in [
        *ROOT.joinpath("serving").glob("*.py"),
        ROOT / "components" / "core" / "bundle.py",
        ROOT / "components" / "core" / "storage.py",
    ]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) in unpicklers:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {ast.unparse(node)}")
            if (
                isinstance(node, ast.keyword)
                and node.arg in ("weights_only", "allow_pickle")
                and ast.unparse(node.value) != ("True" if node.arg == "weights_only" else "False")
            ):
                found.append(f"{path.relative_to(ROOT)}:{node.value.lineno} {node.arg}={ast.unparse(node.value)}")
    assert not found, f"code that can unpickle on the serving path: {found}"


class _Payload:
    """Pickles to a call of exec: what a crafted model.pt2 would carry."""

    def __init__(self, flag: Path) -> None:
        self.flag = flag

    def __reduce__(self) -> Any:
        return (exec, (f"open({str(self.flag)!r}, 'w').write('code ran')",))


@pytest.mark.parametrize("route", ["sample_inputs", "pickled_weight"])
def test_a_crafted_program_that_would_run_code_on_load_is_refused(small_bundle, tmp_path, route):
    """Fault: an attacker who can write to the model store rewrites model.pt2 so that torch.export.load would fall
    back to full pickle (a sample-inputs entry the safe unpickler refuses, or a weight the archive marks as
    pickled) and reseals the manifest, so every digest matches. Behaviour: loading refuses the program with a
    BundleError naming the refused global, in the bundle loader and in the server's model. Proof nothing ran:
    the file the payload would write does not exist."""
    import io
    import zipfile

    import torch

    from serving.model import BundleModel

    hostile = tmp_path / "hostile"
    shutil.copytree(small_bundle, hostile)
    flag = tmp_path / "code-ran"
    payload = io.BytesIO()
    torch.save(_Payload(flag), payload)
    source = (hostile / bundle_lib.PROGRAM).read_bytes()
    rebuilt = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(source)) as zin, zipfile.ZipFile(rebuilt, "w", zipfile.ZIP_STORED) as zout:
        config_name = next(n for n in zin.namelist() if n.endswith("model_weights_config.json"))
        config = json.loads(zin.read(config_name))
        first = next(iter(config["config"].values()))
        for info in zin.infolist():
            data = zin.read(info.filename)
            if route == "sample_inputs" and info.filename.endswith("data/sample_inputs/model.pt"):
                data = payload.getvalue()
            elif route == "pickled_weight" and info.filename == config_name:
                first["use_pickle"] = True
                data = json.dumps(config).encode()
            elif route == "pickled_weight" and info.filename.endswith(f"data/weights/{first['path_name']}"):
                data = payload.getvalue()
            zout.writestr(info, data)
    (hostile / bundle_lib.PROGRAM).write_bytes(rebuilt.getvalue())
    bundle_lib.write_manifest(hostile)  # the attacker reseals: every digest matches
    bundle_lib.verify(hostile)

    with pytest.raises(bundle_lib.BundleError, match="safe loader refuses.*Unsupported global.*exec"):
        bundle_lib.load(hostile)
    model = BundleModel(MODEL, str(hostile))
    with pytest.raises(bundle_lib.BundleError):
        model.load()
    assert not model.ready
    assert not flag.exists(), "the crafted program ran code while loading"


def test_the_server_refuses_a_tampered_program_at_load(small_bundle, tmp_path):
    """Fault: one byte of model.pt2 is changed after the bundle was sealed. Behaviour: `python -m serving` exits 1
    with an error naming the file, before it listens. Proof nothing was served: the port never accepted a connection."""
    tampered = tmp_path / "tampered"
    shutil.copytree(small_bundle, tampered)
    program = bytearray((tampered / bundle_lib.PROGRAM).read_bytes())
    program[len(program) // 2] ^= 0x01
    (tampered / bundle_lib.PROGRAM).write_bytes(bytes(program))
    port = free_port()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "serving",
            "--model_name",
            MODEL,
            "--model_dir",
            str(tampered),
            "--http_port",
            str(port),
            "--bind_host",
            "127.0.0.1",
            "--request_log_root",
            "off",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr[-2000:]
    assert "model.pt2 does not match its sha256" in done.stderr, done.stderr[-2000:]
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0


# ---------------------------------------------------------------- path traversal


@pytest.mark.parametrize("hostile", ["../../escaped.txt", "sub/../../../escaped.txt", "/tmp/escaped-abs.txt"])
def test_s3_keys_that_climb_out_of_the_target_are_refused(moto_endpoint, monkeypatch, tmp_path, small_bundle, hostile):
    """Fault: a bundle prefix on S3 holds an object whose key walks out of the download directory. Behaviour:
    download_dir (and so the server's load from s3://) refuses it with an error naming the key. Proof nothing
    landed outside: the directory tree around the target holds no file but what was there before."""
    use_s3(monkeypatch, moto_endpoint)
    client = storage.s3_client()
    bucket = "hostile"
    if not any(b["Name"] == bucket for b in client.list_buckets()["Buckets"]):
        client.create_bucket(Bucket=bucket)
    prefix = f"models/{abs(hash(hostile))}/v1"
    storage.upload_dir(small_bundle, f"s3://{bucket}/{prefix}")
    key = f"{prefix}/{hostile}"  # "/tmp/…" makes "…/v1//tmp/…": an absolute path once the prefix is cut
    client.put_object(Bucket=bucket, Key=key, Body=b"written by an attacker")
    assert key in {o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]}
    outside = tmp_path / "outside"
    target = outside / "a" / "b" / "target"
    target.mkdir(parents=True)
    with pytest.raises(ValueError, match="refusing object outside the target directory"):
        storage.download_dir(f"s3://{bucket}/{prefix}", str(target))
    escaped = [p for p in outside.rglob("*") if p.is_file() and target not in p.parents]
    assert escaped == [] and not Path("/tmp/escaped-abs.txt").exists()

    from serving.model import BundleModel

    model = BundleModel(MODEL, f"s3://{bucket}/{prefix}")
    with pytest.raises(ValueError, match="refusing object outside"):
        model.load()
    assert not model.ready


# ---------------------------------------------------------------- secrets


class _Collect:
    """Every log record's final text, from every logger (pytest's logging plugin may be off)."""

    def __init__(self) -> None:
        import logging

        self.lines: list[str] = []
        self.handler = logging.Handler(level=logging.DEBUG)
        self.handler.emit = lambda record: self.lines.append(f"{record.getMessage()} {record.__dict__}")  # type: ignore[method-assign]

    def __enter__(self) -> _Collect:
        import logging

        root = logging.getLogger()
        self.level = root.level
        root.addHandler(self.handler)
        root.setLevel(logging.DEBUG)
        return self

    def __exit__(self, *exc: Any) -> None:
        import logging

        logging.getLogger().removeHandler(self.handler)
        logging.getLogger().setLevel(self.level)


def _secret_env(monkeypatch: pytest.MonkeyPatch, port: int) -> str:
    """Every secret set to a marker value; the Feast registry a PostgreSQL URL whose password is the marker."""
    for var, value in SECRETS.items():
        monkeypatch.setenv(var, value)
    registry = f"postgresql+psycopg://mlwf:pg-{MARKER}@127.0.0.1:{port}/feast"
    monkeypatch.setenv("MLWF_FEAST_REGISTRY", registry)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "mlwf")
    return registry


def _hits(text: str) -> list[str]:
    return [m.group(0) for m in re.finditer(rf".{{0,60}}{MARKER}.{{0,20}}", text)]


def test_no_secret_reaches_logs_mlflow_or_compiled_packages(state_dir, monkeypatch, tmp_path, capfd):
    """Fault: the environment of a training step and of the compiler holds secrets (S3 key, MLflow password, a
    PostgreSQL URL with its password). Behaviour: the step trains, registers and logs as usual. Proof nothing
    leaked: the marker is in none of the log records, stdout/stderr, MLflow parameters, tags, registered-version
    tags, logged artifacts, nor the compiled training and monitoring packages."""
    from mlflow.tracking import MlflowClient

    from components.core.settings import get_settings
    from components.core.spec import parse_spec
    from components.training.run import run_training_step
    from components.training.train import TrainParams
    from pipelines.compile import compile_package
    from pipelines.monitoring import monitoring_pipeline

    _secret_env(monkeypatch, free_port())
    spec = parse_spec(
        {"name": "secrets", "label": {"column": "label", "positive": 1}, "features": {"numeric": ["x1", "x2"], "categorical": ["colour"]}}
    )
    frame = synthetic_frame(1500, 2).assign(row_id=lambda f: [f"r{i}" for i in range(len(f))])
    frame.to_parquet(tmp_path / "train.parquet")
    with _Collect() as logs:
        out = run_training_step(spec, str(tmp_path / "train.parquet"), str(tmp_path / "model"), TrainParams(epochs=2), "secrets_v1", "fp")
        training = compile_package(str(tmp_path / "compiled" / "training.yaml"))
        monitoring = compile_package(str(tmp_path / "compiled" / "monitoring.yaml"), None, monitoring_pipeline)
    captured = capfd.readouterr()
    client = MlflowClient(tracking_uri=get_settings().mlflow_tracking_uri)
    run = client.get_run(out["run_id"])
    version = client.get_model_version(out["model_name"], out["version"])
    places = {
        "log records": "\n".join(logs.lines),
        "stdout/stderr": captured.out + captured.err,
        "mlflow params": json.dumps(run.data.params),
        "mlflow tags": json.dumps(run.data.tags),
        "model version tags": json.dumps(version.tags) + str(version.description),
        "bundle": "".join(p.read_text(errors="replace") for p in (tmp_path / "model").iterdir()),
        "compiled packages": Path(training).read_text() + Path(monitoring).read_text(),
    }
    artifacts = Path(run.info.artifact_uri.removeprefix("file://"))
    places["mlflow artifacts"] = "".join(p.read_text(errors="replace") for p in artifacts.rglob("*") if p.is_file())
    assert run.data.params and places["compiled packages"]
    leaks = {where: _hits(text) for where, text in places.items() if MARKER in text}
    assert not leaks, f"secrets leaked: {leaks}"


def test_the_server_leaks_no_secret_limits_bodies_and_has_no_debug_endpoints(tmp_path, monkeypatch):
    """Fault: a model server whose environment holds secrets, whose Feast registry (a PostgreSQL URL with its
    password) is unreachable, and clients that send an oversized body, ask for debug pages or an entity key.
    Behaviour: 413 for the body, 404 for /docs, /redoc and /openapi.json, 503 for the entity key, 200 for
    features. Proof nothing leaked: the marker is in no answer and nowhere in the server's whole log."""
    registry = _secret_env(monkeypatch, free_port())  # nothing listens there: the lookup fails
    bundle = make_bundle(tmp_path / "bundle", "1", lineage={"dataset": "transactions", "feature_service": "transactions_v1"})
    port, log_path = free_port(), tmp_path / "server.log"
    limit = 10_000
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
        "off",
        "--max_request_bytes",
        str(limit),
        "--log_requests",
        "--log_level",
        "DEBUG",
    ]
    env = {**os.environ, "MLWF_STATE_DIR": str(tmp_path / "state"), "MLWF_PROFILE": "local", "MLWF_FEAST_REGISTRY": registry}
    with open(log_path, "ab") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    url = f"http://127.0.0.1:{port}"
    answers = []
    try:
        from components.deployment.processes import wait_ready

        wait_ready(url, MODEL, process, log_path, timeout=120)
        predict = f"{url}/v1/models/{MODEL}:predict"
        row = {"x1": 0.3, "x2": 1.2, "colour": "red"}
        ok = requests.post(predict, json={"instances": [row]}, timeout=30)
        big = requests.post(predict, data=json.dumps({"instances": [row] * 400}), headers={"content-type": "application/json"}, timeout=30)
        keyed = requests.post(predict, json={"instances": [{"transaction_id": "tx1"}]}, timeout=60)
        debug = {path: requests.get(url + path, timeout=10) for path in ("/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect")}
        answers = [ok, big, keyed, *debug.values()]
        assert ok.status_code == 200, ok.text
        assert big.status_code == 413 and f"limit of {limit} bytes" in big.json()["error"]
        assert keyed.status_code == 503 and "feature service" in keyed.json()["error"], keyed.text
        assert {p: r.status_code for p, r in debug.items()} == dict.fromkeys(debug, 404)
        assert requests.post(predict, json={"instances": [row]}, timeout=30).status_code == 200
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    text = log_path.read_text(errors="replace")
    assert '"request refused"' in text or "request refused" in text  # the failures were logged...
    leaks = _hits(text) + [h for r in answers for h in _hits(r.text + json.dumps(dict(r.headers)))]
    assert not leaks, f"secrets leaked by the server: {leaks}"  # ...without the secret


# ---------------------------------------------------------------- images


@pytest.mark.parametrize(
    "dockerfile", ["components/Dockerfile", "components/Dockerfile.cuda", "components/Dockerfile.spark", "serving/Dockerfile"]
)
def test_images_run_as_a_non_root_user(dockerfile):
    """Fault: a container running as root turns any code execution into root in the pod. Behaviour: the final
    stage sets USER to a non-root user before its CMD/ENTRYPOINT and nothing switches back. Proof: the parsed
    instructions of the final stage."""
    lines, current = [], ""
    for raw in (ROOT / dockerfile).read_text().splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        current += stripped.rstrip("\\") + " "
        if not stripped.endswith("\\"):
            lines.append(current.strip())
            current = ""
    final = lines[max(i for i, line in enumerate(lines) if line.upper().startswith("FROM ")) :]
    users = [(i, line.split(None, 1)[1].strip()) for i, line in enumerate(final) if line.upper().startswith("USER ")]
    starts = [i for i, line in enumerate(final) if line.upper().startswith(("CMD ", "ENTRYPOINT "))]
    assert users and starts, f"{dockerfile}: final stage has no USER or no CMD/ENTRYPOINT"
    assert users[-1][0] < starts[0], f"{dockerfile}: USER comes after CMD/ENTRYPOINT"
    user = users[-1][1].split(":")[0]
    assert user not in ("root", "0", ""), f"{dockerfile}: runs as {users[-1][1]}"
