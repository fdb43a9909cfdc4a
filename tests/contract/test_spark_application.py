"""A data step as a SparkApplication: the object validates strictly against the Spark Operator's CRD, its pods
meet the "restricted" profile and carry settings and credentials by reference only, and the create/wait calls
run against a small HTTP stub of the API server. The stub's "controller" really runs the driver's entry module
(components/data/spark_entry.py) as spark-submit would, on this machine, and reports COMPLETED or FAILED from
how it ended; other outcomes play back the operator's failure and a run that never ends.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from components.core import spark_application as sa
from components.core.settings import get_settings
from components.data import spark_entry
from tests.contract import manifest_tools as mt

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO / "tests" / "data" / "bad_inputs"
ENTRY = REPO / "components" / "data" / "spark_entry.py"
PATH = re.compile(r"^/apis/sparkoperator\.k8s\.io/v1beta2/namespaces/([a-z0-9-]+)/sparkapplications(?:/([a-z0-9.-]+))?$")
OPERATOR_MESSAGE = "driver container failed with ExitCode: 1, Reason: Error"


def validator() -> Any:
    return mt.crd_validator(sa.GROUP, sa.VERSION, sa.KIND)


def errors(obj: Any) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator().iter_errors(obj)]


class SparkApplicationStub:
    """POST, GET and DELETE of SparkApplications on 127.0.0.1; every request recorded, every object validated.

    outcome "run": the first GET starts the driver (`python <mainApplicationFile> <arguments>`) on this machine and
    later GETs report RUNNING, then COMPLETED or FAILED (the operator's message) when it ends; "fail": FAILED after
    two GETs; "submission": SUBMISSION_FAILED at once; "never": RUNNING for ever.
    """

    def __init__(self, outcome: str = "run") -> None:
        self.outcome = outcome
        self.requests: list[tuple[str, str, str | None, Any]] = []
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.processes: dict[tuple[str, str], subprocess.Popen] = {}
        self.logs: dict[tuple[str, str], Path] = {}
        self.gets: dict[tuple[str, str], int] = {}
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
        for log in self.logs.values():
            log.unlink(missing_ok=True)

    def calls(self) -> list[tuple[str, str]]:
        return [(m, p.rsplit("/", 1)[-1]) for m, p, _, _ in self.requests]

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
                return 422, {"kind": "Status", "code": 422, "message": "SparkApplication is invalid: " + "; ".join(problems[:5])}
            key = (namespace, body["metadata"]["name"])
            if key in self.objects:
                return 409, {"kind": "Status", "code": 409, "reason": "AlreadyExists", "message": f"{key[1]} already exists"}
            self.objects[key] = {**body, "status": {"driverInfo": {}}}
            self.gets[key] = 0
            return 201, self.objects[key]
        key = (namespace, name or "")
        if name is None or key not in self.objects:
            return (
                (404, {"kind": "Status", "code": 404, "message": f"sparkapplications {name} not found"})
                if method in ("GET", "DELETE")
                else (
                    405,
                    {"kind": "Status", "code": 405, "message": f"{method} not served on {path}"},
                )
            )
        if method == "GET":
            self.gets[key] += 1
            self.reconcile(key)
            problems = errors(self.objects[key])
            if problems:  # the stub's own status must fit the CRD: a 400 fails the client at once
                return 400, {"kind": "Status", "code": 400, "message": "stub status breaks the CRD: " + "; ".join(problems[:5])}
            return 200, self.objects[key]
        if method == "DELETE":
            process = self.processes.pop(key, None)
            if process is not None and process.poll() is None:  # the operator's owner references take the driver pod
                process.kill()
                process.wait()
            return 200, {"kind": "Status", "status": "Success", "details": {"name": name}, "removed": self.objects.pop(key)["metadata"]}
        return 405, {"kind": "Status", "code": 405, "message": f"{method} not served on {path}"}

    def reconcile(self, key: tuple[str, str]) -> None:
        obj = self.objects[key]
        if (obj["status"].get("applicationState") or {}).get("state") in ("COMPLETED", "FAILED", "SUBMISSION_FAILED"):
            return  # an ended application stays as it ended, as the operator leaves it
        state, message = "SUBMITTED", ""
        if self.outcome == "submission":
            state, message = "SUBMISSION_FAILED", "failed to run spark-submit: image pull back-off"
        elif self.outcome == "fail" and self.gets[key] >= 2:
            state, message = "FAILED", OPERATOR_MESSAGE
        elif self.outcome == "never":
            state = "RUNNING"
        elif self.outcome == "run":
            process = self.processes.get(key)
            if process is None:
                spec = obj["spec"]
                assert spec["type"] == "Python" and spec["mainApplicationFile"].startswith("local://"), spec
                entry = spec["mainApplicationFile"][len("local://") :]
                env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable}
                # The driver's log goes to a file (the pod's log): a pipe nobody reads would stall it once full.
                log = tempfile.NamedTemporaryFile(prefix=f"{key[1]}-driver-", suffix=".log", delete=False)  # noqa: SIM115
                self.logs[key] = Path(log.name)
                with log:
                    self.processes[key] = subprocess.Popen(
                        [sys.executable, entry, *spec["arguments"]], stdout=log, stderr=subprocess.STDOUT, env=env
                    )
            elif process.poll() is None:
                state = "RUNNING"
            elif process.returncode == 0:
                state = "COMPLETED"
            else:
                state, message = "FAILED", OPERATOR_MESSAGE
        app = {"state": state, **({"errorMessage": message} if message else {})}
        obj["status"] = {"applicationState": app, "driverInfo": {"podName": f"{key[1]}-driver"}, "submissionAttempts": 1}


@pytest.fixture
def stub_factory():
    made: list[SparkApplicationStub] = []

    def make(outcome: str = "run") -> SparkApplicationStub:
        made.append(SparkApplicationStub(outcome))
        return made[-1]

    yield make
    for stub in made:
        stub.close()


def api_client(url: str) -> Any:
    import kubernetes

    return kubernetes.client.ApiClient(kubernetes.client.Configuration(host=url))


@pytest.fixture
def spark_settings(monkeypatch):
    monkeypatch.setenv("MLWF_SPARK_IMAGE", "ghcr.io/mlwf/components-spark:0.1.0")
    monkeypatch.setenv("MLWF_SPARK_DRIVER_CORES", "2")
    monkeypatch.setenv("MLWF_SPARK_DRIVER_MEMORY", "3g")
    monkeypatch.setenv("MLWF_SPARK_EXECUTOR_CORES", "3")
    monkeypatch.setenv("MLWF_SPARK_EXECUTOR_MEMORY", "6g")
    monkeypatch.setenv("MLWF_SPARK_EXECUTOR_INSTANCES", "4")
    monkeypatch.setenv("MLWF_SPARK_MAIN_FILE", f"local://{ENTRY}")
    return get_settings()


def build(settings: Any, name: str = "mlwf-validate-r1", work: str = "s3://b/state/spark/x") -> dict[str, Any]:
    return sa.build_spark_application(name, "mlwf", ["validate", "--work", work], settings)


def test_application_validates_strictly_and_takes_its_sizes_from_settings(spark_settings):
    body = build(spark_settings)
    assert errors(body) == []
    spec = body["spec"]
    assert (spec["type"], spec["mode"], spec["pythonVersion"]) == ("Python", "cluster", "3")
    assert spec["sparkVersion"] == sa.spark_version() == "4.1.4"
    assert spec["image"] == "ghcr.io/mlwf/components-spark:0.1.0"
    assert spec["mainApplicationFile"] == f"local://{ENTRY}" and spec["arguments"] == ["validate", "--work", "s3://b/state/spark/x"]
    assert (spec["driver"]["cores"], spec["driver"]["coreLimit"], spec["driver"]["memory"]) == (2, "2", "3g")
    assert (spec["executor"]["instances"], spec["executor"]["cores"], spec["executor"]["memory"]) == (4, 3, "6g")
    assert spec["driver"]["serviceAccount"] == spec["executor"]["serviceAccount"] == "mlwf-spark"
    assert spec["restartPolicy"] == {"type": "Never"} and spec["timeToLiveSeconds"] == 86400
    # The ports the NetworkPolicy opens are the ones the application fixes.
    assert {spec["sparkConf"][k] for k in ("spark.driver.port", "spark.driver.blockManager.port", "spark.blockManager.port")} == {
        "7078",
        "7079",
    }
    # Strict: a misspelt field is an error, not silently pruned.
    spec["executor"]["instance"] = spec["executor"].pop("instances")
    assert any("instance" in e for e in errors(body))


def test_a_size_below_one_is_refused(monkeypatch):
    monkeypatch.setenv("MLWF_SPARK_EXECUTOR_INSTANCES", "0")
    with pytest.raises(ValueError, match="MLWF_SPARK_EXECUTOR_INSTANCES must be at least 1, got 0"):
        build(get_settings())


def _as_pod(part: dict[str, Any]) -> dict[str, Any]:
    """The pod Spark makes from a driver/executor section: cores -> cpu request, coreLimit -> cpu limit, memory -> both."""
    container = {
        "name": "spark-kubernetes-driver",
        "securityContext": part["securityContext"],
        "resources": {
            "requests": {"cpu": str(part["cores"]), "memory": part["memory"]},
            "limits": {"cpu": part["coreLimit"], "memory": part["memory"]},
        },
    }
    return {"securityContext": part["podSecurityContext"], "containers": [container]}


def test_driver_and_executor_pods_meet_the_restricted_profile(spark_settings):
    body = build(spark_settings)
    spec = body["spec"]
    for part in ("driver", "executor"):
        pod = {**_as_pod(spec[part]), "volumes": spec["volumes"]}
        assert mt.restricted_violations(f"{part}", pod) == [], part
        assert spec[part]["labels"]["app.kubernetes.io/component"] == "spark"  # what the NetworkPolicy selects
    # The check is real: an escalating container fails it.
    spec["driver"]["securityContext"]["allowPrivilegeEscalation"] = True
    assert mt.restricted_violations("driver", _as_pod(spec["driver"]))


def test_settings_and_credentials_travel_by_reference_only(spark_settings, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEKEYID0001")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMIexampleSECRETvalue0000000")
    monkeypatch.setenv("MLWF_PII_HASH_KEY", "a-pii-hash-key-of-some-length")
    text = json.dumps(build(get_settings()))
    for value in ("AKIAEXAMPLEKEYID0001", "wJalrXUtnFEMIexampleSECRETvalue0000000", "a-pii-hash-key-of-some-length"):
        assert value not in text
    body = json.loads(text)
    for part in ("driver", "executor"):
        section = body["spec"][part]
        assert section["envFrom"] == [{"configMapRef": {"name": "mlwf-settings"}}]
        refs = [e["valueFrom"] for e in section["env"] if "valueFrom" in e]
        assert refs and all(set(r) == {"secretKeyRef"} and set(r["secretKeyRef"]) == {"name", "key", "optional"} for r in refs)
        assert {e["name"] for e in section["env"] if "value" in e} == {"PYTHONUNBUFFERED"}


def test_names_are_stable_per_run_and_step_and_fit():
    assert sa.application_name("Run_42", "validate") == sa.application_name("Run_42", "validate") == "mlwf-validate-run-42"
    assert sa.application_name("Run_42", "validate") != sa.application_name("Run_42", "features")
    long_a, long_b = "0123456789abcdef" * 4 + "a", "0123456789abcdef" * 4 + "b"
    names = {sa.application_name(run, "validate") for run in (long_a, long_b)}
    assert len(names) == 2 and all(len(n) <= sa.MAX_NAME and re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", n) for n in names)


def test_verdicts_follow_the_operator_states():
    def of(state: str, message: str = "") -> tuple[str, str]:
        app = {"state": state, **({"errorMessage": message} if message else {})}
        return sa.verdict({"status": {"applicationState": app, "driverInfo": {"podName": "x-driver"}}})

    assert of("COMPLETED") == ("complete", "COMPLETED")
    assert of("FAILED", "boom\n  at line 3") == ("failed", "FAILED (driver pod x-driver): boom at line 3")
    assert of("SUBMISSION_FAILED")[0] == "failed"
    assert [of(s)[0] for s in ("", "SUBMITTED", "RUNNING", "PENDING_RERUN", "SUCCEEDING", "FAILING", "UNKNOWN")] == ["waiting"] * 7
    assert sa.verdict({}) == ("waiting", "not submitted yet")


def test_a_failed_application_raises_with_the_operators_message(stub_factory, spark_settings):
    stub = stub_factory("fail")
    with pytest.raises(
        sa.SparkApplicationError, match=rf"mlwf/mlwf-validate-f failed: FAILED \(driver pod mlwf-validate-f-driver\): {OPERATOR_MESSAGE}"
    ):
        sa.run_spark_application(build(spark_settings, "mlwf-validate-f"), timeout_s=30, api_client=api_client(stub.url), poll_s=0.05)
    stub = stub_factory("submission")
    with pytest.raises(sa.SparkApplicationError, match="SUBMISSION_FAILED .*image pull back-off"):
        sa.run_spark_application(build(spark_settings, "mlwf-validate-s"), timeout_s=30, api_client=api_client(stub.url), poll_s=0.05)


def test_a_retried_step_waits_for_the_application_it_already_created(stub_factory, spark_settings):
    stub = stub_factory("never")
    body = build(spark_settings, "mlwf-validate-again")
    client = api_client(stub.url)
    sa.create(sa.custom_objects_api(client), body)
    with pytest.raises(sa.SparkApplicationError, match=r"not complete after 0.3s \(running\): deleted"):
        sa.run_spark_application(body, timeout_s=0.3, api_client=client, poll_s=0.05)
    calls = stub.calls()
    assert calls[:3] == [("POST", "sparkapplications"), ("POST", "sparkapplications"), ("GET", "mlwf-validate-again")]
    assert [m for m, _ in calls].count("POST") == 2  # the second create met 409 and read it back: one object
    assert calls[-1] == ("DELETE", "mlwf-validate-again") and not stub.objects  # the deadline stopped the work


def test_a_retry_replaces_an_application_an_earlier_attempt_left_failed(stub_factory, spark_settings):
    stub = stub_factory("fail")
    body = build(spark_settings, "mlwf-validate-r")
    client = api_client(stub.url)
    with pytest.raises(sa.SparkApplicationError, match="failed"):
        sa.run_spark_application(body, timeout_s=30, api_client=client, poll_s=0.05)
    stub.outcome = "never"
    stub.requests.clear()
    sa.create(sa.custom_objects_api(client), body, poll_s=0.05)
    assert stub.calls() == [
        ("POST", "sparkapplications"),
        ("GET", "mlwf-validate-r"),
        ("DELETE", "mlwf-validate-r"),
        ("POST", "sparkapplications"),
    ]
    assert list(stub.objects) == [("mlwf", "mlwf-validate-r")] and stub.gets[("mlwf", "mlwf-validate-r")] == 0


# ------------------------------------------------------------------ the validate step's Spark work, end to end


@pytest.fixture
def corpus(tmp_path, state_dir):
    from components.core.spec import load_spec
    from components.data.ingest import ingest
    from components.data.suite import write_suite

    spec_path = tmp_path / "spec.yaml"
    shutil.copy(CORPUS / "spec.yaml", spec_path)
    write_suite(str(spec_path))
    raw = tmp_path / "raw.parquet"
    ingest(load_spec(str(spec_path)), str(CORPUS / "mixed.csv"), str(raw), str(state_dir))
    return spec_path, raw


@pytest.mark.integration  # real Spark in the driver: a local session starts in 8-16 s, the run takes a minute or two on 2 cores
def test_the_validate_step_runs_as_an_application_and_reads_its_committed_outcome(stub_factory, spark_settings, corpus, tmp_path):
    from components.core.spec import load_spec
    from components.data.suite import load_suite
    from components.data.validate import validate

    # No skip without Java: pyspark is pinned and Java 17 is on every machine that runs the suite (CI's too), so a
    # missing runtime fails here with require_spark's one-line reason instead of passing unseen.
    spec_path, raw = corpus
    work = str(tmp_path / "work")
    stub = stub_factory("run")
    try:
        outcome = spark_entry.run_validation_application(
            work, str(spec_path), str(raw), "run-1", str(CORPUS / "mixed.csv"), {}, get_settings(), api_client(stub.url), poll_s=0.5
        )
    except sa.SparkApplicationError as err:
        pytest.fail(f"{err}\n" + "".join(log.read_text()[-3000:] for log in stub.logs.values()))
    spec = load_spec(str(spec_path))
    with pd.option_context("future.infer_string", True):
        frame = pd.read_parquet(raw)
    reference = validate(spec, frame, run_id="run-1", source=str(CORPUS / "mixed.csv"), suite=load_suite(spec, str(spec_path)))
    pd.testing.assert_frame_equal(outcome.quarantined, reference.quarantined)
    pd.testing.assert_frame_equal(outcome.valid_table.to_pandas(), reference.valid_table.to_pandas())
    assert (outcome.failures, outcome.verdicts, outcome.per_file, outcome.examples) == (
        reference.failures,
        reference.verdicts,
        reference.per_file,
        reference.examples,
    )
    assert len(outcome.quarantined) > 0 and outcome.rows == reference.rows
    methods = [m for m, _ in stub.calls()]
    assert methods[0] == "POST" and set(methods[1:]) == {"GET"}  # created once, then only read
    record = json.loads(Path(work, spark_entry.COMMIT).read_text())
    assert Path(record["attempt"]).parent == Path(work, "attempts") and len(list(Path(work, "attempts").iterdir())) == 1


def test_a_failing_driver_fails_the_step_with_its_message_and_commits_nothing(stub_factory, spark_settings, corpus, tmp_path):
    from components.data.suite import suite_path

    spec_path, raw = corpus
    Path(suite_path(str(spec_path))).unlink()  # the driver refuses to validate without the suite, before any Spark work
    work = tmp_path / "work"
    work.mkdir()
    (work / spark_entry.COMMIT).write_text("{}")  # left by an earlier attempt: must not survive a failed one
    stub = stub_factory("run")
    with pytest.raises(sa.SparkApplicationError) as err:
        spark_entry.run_validation_application(
            str(work), str(spec_path), str(raw), "run-2", "mixed.csv", {}, get_settings(), api_client(stub.url), poll_s=0.2
        )
    message = str(err.value)
    assert f"FAILED (driver pod mlwf-validate-run-2-driver): {OPERATOR_MESSAGE}; driver: SuiteError: no validation suite" in message
    assert "\n" not in message
    assert not (work / spark_entry.COMMIT).exists() and not (work / "attempts").exists()


def test_a_committed_outcome_reads_back_as_validate_built_it(corpus, tmp_path):
    """What the driver writes and the step reads back is the outcome itself: frames, dtypes, counts and examples."""
    from components.core.spec import load_spec
    from components.data.suite import load_suite
    from components.data.validate import validate

    spec_path, raw = corpus
    spec = load_spec(str(spec_path))
    with pd.option_context("future.infer_string", True):
        frame = pd.read_parquet(raw)
    reference = validate(spec, frame, run_id="r", source="mixed.csv", suite=load_suite(spec, str(spec_path)))
    work, attempt = tmp_path / "work", tmp_path / "work" / "attempts" / "a1"
    hashes = spark_entry.write_outcome(reference, str(attempt))
    record = {"format": spark_entry.FORMAT, "step": "validate", "attempt": str(attempt), "sha256": hashes}
    (work / spark_entry.COMMIT).write_text(json.dumps(record))
    back = spark_entry.read_committed(str(work))
    pd.testing.assert_frame_equal(back.quarantined, reference.quarantined)
    assert back.valid_table.schema == reference.valid_table.schema
    pd.testing.assert_frame_equal(back.valid_table.to_pandas(), reference.valid_table.to_pandas())
    assert (back.failures, back.verdicts, back.examples, back.per_file, back.suite, back.suite_version) == (
        reference.failures,
        reference.verdicts,
        reference.examples,
        reference.per_file,
        reference.suite,
        reference.suite_version,
    )


def test_the_step_reads_only_a_complete_commit(tmp_path):
    from components.data.outcome import ValidationFailed

    work = tmp_path / "work"
    with pytest.raises(ValidationFailed, match="committed no output"):
        spark_entry.read_committed(str(work))
    attempt = work / "attempts" / "a1"
    attempt.mkdir(parents=True)
    for name in spark_entry.FILES:
        (attempt / name).write_bytes(b"partial")
    record = {"format": spark_entry.FORMAT, "step": "validate", "attempt": str(attempt), "sha256": dict.fromkeys(spark_entry.FILES, "0")}
    (work / spark_entry.COMMIT).write_text(json.dumps(record))
    with pytest.raises(ValidationFailed, match="does not match its sha256"):
        spark_entry.read_committed(str(work))


def test_on_a_cluster_the_state_directory_must_be_shared(state_dir):
    with pytest.raises(sa.SparkApplicationError, match="needs MLWF_STATE_DIR on s3://"):
        spark_entry.validate_on_cluster("spec.yaml", "/tmp/raw.parquet", "r", "src")


def test_on_s3_the_step_uploads_its_input_and_a_failed_driver_commits_nothing(
    stub_factory, spark_settings, corpus, moto_endpoint, monkeypatch
):
    """The cluster path end to end on an S3 endpoint (moto): request and input under the work prefix, the driver's
    error read back from there, and no commit record left. The driver fails before Spark (no suite), so no s3a."""
    from components.core import storage
    from components.data.suite import suite_path

    for var, value in {
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "MLWF_STATE_DIR": "s3://mlwf-spark/state",
    }.items():
        monkeypatch.setenv(var, value)
    client = storage.s3_client()
    if not any(b["Name"] == "mlwf-spark" for b in client.list_buckets()["Buckets"]):
        client.create_bucket(Bucket="mlwf-spark")
    spec_path, raw = corpus
    Path(suite_path(str(spec_path))).unlink()
    stub = stub_factory("run")
    work = spark_entry.work_prefix("s3://mlwf-spark/state", sa.application_name("run-3", "validate"))
    storage.write_bytes(storage.join(work, spark_entry.COMMIT), b"{}")  # an earlier attempt's
    with pytest.raises(sa.SparkApplicationError, match="driver: SuiteError: no validation suite next to the spec"):
        spark_entry.validate_on_cluster(str(spec_path), str(raw), "run-3", "mixed.csv", api_client=api_client(stub.url), poll_s=0.2)
    request = json.loads(storage.read_bytes(storage.join(work, spark_entry.REQUEST)))
    assert request["raw"] == storage.join(work, "raw.parquet") and storage.read_bytes(request["raw"]) == raw.read_bytes()
    assert not storage.exists(storage.join(work, spark_entry.COMMIT))
    assert stub.objects[("mlwf", "mlwf-validate-run-3")]["spec"]["arguments"] == ["validate", "--work", work]


def test_the_validate_step_on_a_cluster_hands_its_spark_work_to_an_application(state_dir, monkeypatch, tmp_path):
    """MLWF_ENGINE=spark with the cluster profile: the step pod runs no Spark (no Java needed there) and goes to the
    SparkApplication path, which first insists on a state directory the pods share."""
    from components.data.step import ingest_step, validate_step
    from tests.conftest import make_csv
    from tests.factories import LocalArtifact

    raw = LocalArtifact(tmp_path / "raw")
    ingest_step("transactions", str(make_csv(tmp_path / "tx.csv", rows=60)), raw, "run-c")
    no_java = tmp_path / "bin"
    no_java.mkdir()
    monkeypatch.setenv("PATH", str(no_java))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("MLWF_PROFILE", "cluster")
    outputs = [LocalArtifact(tmp_path / n) for n in ("valid", "quarantine", "report", "metrics")]
    with pytest.raises(sa.SparkApplicationError, match="needs MLWF_STATE_DIR on s3://"):
        validate_step("transactions", "run-c", raw, *outputs, engine="spark")
    assert not any(Path(o.path).exists() for o in outputs)
