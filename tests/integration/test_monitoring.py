"""The monitor on real request logs (written by RequestLogWriter) against a real bundle registered as champion:
no drift -> no trigger; drift -> exactly one trigger within the cooldown; after the cooldown -> the next one.
Then the monitoring pipeline under kfp.local, whose retrain branch really runs the training pipeline once."""

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families

from components.core import bundle as bundle_lib
from components.core import tracking
from components.core.request_log import RequestLogWriter
from components.core.settings import get_settings
from components.data.datagen import GenConfig, generate
from components.monitoring.monitor import read_cooldown, run_monitor
from components.monitoring.records import MonitorConfig
from components.training.train import TrainParams, build_bundle, train_model

pytestmark = pytest.mark.integration
MODEL = "transactions_classifier"
SERVICE = "transactions-classifier"
NUMERIC = ["amount", "hour_of_day", "card_age_days", "distance_km", "txn_count_24h"]
CATEGORICAL = ["merchant_category", "channel", "country"]


def frame(rows: int, seed: int, drift: float = 0.0) -> pd.DataFrame:
    df = generate(GenConfig(rows=rows, seed=seed, drift=drift))
    return df.assign(event_timestamp=pd.to_datetime(df["event_time"], utc=True), label=df["is_fraud"])


@pytest.fixture
def champion(tmp_path, state_dir) -> bundle_lib.Bundle:
    """A small real bundle, logged to MLflow and registered as the champion, as deploy leaves it."""
    import mlflow

    # Enough rows and epochs for a model that ranks better than chance without class weights (3% positives).
    train = frame(8000, seed=1)
    program, vocab, result = train_model(train, NUMERIC, CATEGORICAL, TrainParams(epochs=12, seed=1))
    directory = tmp_path / "bundle"
    build_bundle(
        directory,
        program,
        vocab,
        result,
        train,
        NUMERIC,
        CATEGORICAL,
        {"inputs_fingerprint": "f" * 64, "model_name": MODEL},
        "# test champion\n",
    )
    client = tracking.configure(get_settings())
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(directory), artifact_path="bundle")
    version = tracking.register(client, MODEL, run.info.run_id, f"{run.info.artifact_uri}/bundle", {}, "test champion")
    client.set_registered_model_alias(MODEL, "champion", version)
    return bundle_lib.load(directory)


def serve_log(champion: bundle_lib.Bundle, traffic: pd.DataFrame, at: datetime) -> None:
    """Score rows with the champion and log them the way the model server does."""
    writer = RequestLogWriter(str(Path(get_settings().state_dir) / "request_logs"), SERVICE)
    columns = bundle_lib.columns_from_frame(traffic, champion.feature_names)
    probs = champion.predict_proba(columns)
    rows = [{k: v[i] for k, v in columns.items()} for i in range(len(traffic))]
    for start in range(0, len(rows), 100):
        part = slice(start, start + 100)
        writer.log(
            rows[part],
            probs[part],
            (probs[part] >= champion.threshold).astype(int),
            "f" * 12,
            f"req-{start}",
            entities=traffic["transaction_id"].iloc[part].tolist(),
            now=at,
        )
    writer.flush()


def test_drift_triggers_retraining_exactly_once_within_the_cooldown(tmp_path, state_dir, champion):
    now = datetime.now(UTC)
    serve_log(champion, frame(1500, seed=2), now - timedelta(hours=5))  # like training: no drift
    drifted = frame(1500, seed=3, drift=1.0)
    serve_log(champion, drifted, now - timedelta(minutes=30))
    labels = tmp_path / "labels.csv"
    drifted.assign(entity=drifted["transaction_id"], label=drifted["is_fraud"], ts=now.isoformat())[["entity", "label", "ts"]].to_csv(
        labels, index=False
    )

    calls: list[dict] = []

    def trigger(arguments: dict) -> str:
        calls.append(arguments)
        return f"fake-run-{len(calls)}"

    settings = get_settings()
    args = {"source_uri": "s3://bucket/new.csv"}
    quiet = MonitorConfig(MODEL, window_hours=1, cooldown_hours=6)
    # the undrifted hour: no alert, no trigger
    calm = run_monitor(quiet, settings, trigger, args, now=now - timedelta(hours=4))
    assert calm.analysis.summary.rows == 1500 and calm.decision.action == "no_drift" and calls == []

    config = MonitorConfig(MODEL, window_hours=1, cooldown_hours=6, labels_uri=str(labels))
    first = run_monitor(config, settings, trigger, args, now=now)
    summary = first.analysis.summary
    assert summary.rows == 1500 and summary.alert
    assert {"amount", "distance_km", "channel", "merchant_category"} <= set(summary.drifted)
    assert "hour_of_day" not in summary.drifted and "country" not in summary.drifted  # datagen does not shift them
    assert first.decision.action == "retrain" and calls == [args]

    second = run_monitor(config, settings, trigger, args, now=now + timedelta(minutes=10))
    assert second.decision.action == "cooldown" and len(calls) == 1  # the loop is broken

    later = run_monitor(
        MonitorConfig(MODEL, window_hours=8, cooldown_hours=6, labels_uri=str(labels)),
        settings,
        trigger,
        args,
        now=now + timedelta(hours=6, minutes=1),
    )
    assert later.decision.action == "retrain" and len(calls) == 2  # the cooldown has passed
    state = read_cooldown(settings, SERVICE)
    assert [t["run"] for t in state["triggers"]] == ["fake-run-1", "fake-run-2"]

    # live performance from the delayed labels, in the report and the gauges
    assert first.analysis.labeled == 1500 and first.analysis.performance["roc_auc"].notna().all()
    report = Path(first.report_path).read_text()
    assert "DRIFT ALERT" in report and report.count("data:image/png;base64,") == 2 and "Live performance" in report
    families = {f.name: f for f in text_string_to_metric_families(Path(first.prometheus_path).read_text())}
    psi = {s.labels["feature"]: s.value for s in families["mlwf_drift_psi"].samples}
    assert psi["channel"] > 0.25 and psi["country"] < 0.1 and "prediction" in psi
    assert families["mlwf_drift_alert"].samples[0].value == 1.0
    assert 0.5 < families["mlwf_live_roc_auc"].samples[0].value <= 1.0


def test_an_empty_window_and_a_missing_champion_are_clear(state_dir, champion, tmp_path):
    from components.monitoring.records import MonitorError

    settings = get_settings()
    result = run_monitor(MonitorConfig(MODEL, window_hours=1), settings, None, {})
    assert result.decision.action == "insufficient_data" and result.analysis.summary.rows == 0
    with pytest.raises(MonitorError, match="no 'champion'.*make demo"):
        run_monitor(MonitorConfig("nobody_classifier"), settings, None, {})
    bad = tmp_path / "labels.csv"
    bad.write_text("entity,outcome\na,1\n")
    with pytest.raises(MonitorError, match=r"lacks column\(s\) \['label'\]"):
        run_monitor(MonitorConfig(MODEL, labels_uri=str(bad)), settings, None, {})


def test_monitoring_pipeline_retrains_for_real_once(tmp_path, state_dir, champion, free_port, monkeypatch):
    """kfp.local: drift -> dsl.If -> retrain runs the real training pipeline once (about a minute and a half)."""
    from components.deployment.processes import stop_local
    from pipelines.monitoring import run_monitoring_local

    monkeypatch.setenv("MLWF_SERVE_PORT", str(free_port))
    serve_log(champion, frame(800, seed=4, drift=1.0), datetime.now(UTC) - timedelta(minutes=5))
    data = tmp_path / "retrain.csv"
    frame(3000, seed=5, drift=1.0).drop(columns=["event_timestamp", "label"]).to_csv(data, index=False)
    training = {
        "dataset_spec": "transactions",
        "source_uri": str(data),
        "epochs": 3,
        "min_roc_auc": 0.5,
        "max_regression": 1.0,
        "max_p99_latency_ms": 100.0,
    }
    arguments = {"model_name": MODEL, "window_hours": 1.0, "cooldown_hours": 6.0, "training_arguments": json.dumps(training)}
    client = tracking.configure(get_settings())
    try:
        run = run_monitoring_local(arguments)
        assert run.output("drift-op", "Output") is True and run.ran("retrain-op")
        assert run.output("retrain-op", "Output") == "retrain"
        versions = client.search_model_versions(f"name = '{MODEL}'")
        # the retraining registered one version per candidate family, beside the champion
        assert len(versions) == 4 and {v.tags.get("mlwf.family") for v in versions} >= {"network", "lightgbm", "logistic"}
        trigger = read_cooldown(get_settings(), SERVICE)["triggers"][0]
        assert trigger["run"].startswith("local:mlwf-training") and "channel" in trigger["drifted"]
        drift = json.loads(run.artifact("drift-op", "drift").read_text())
        assert drift["summary"]["alert"] is True

    finally:
        stop_local(state_dir / "serving" / SERVICE / "server.json")


def test_schedule_creates_a_recurring_run_through_the_kfp_api(monkeypatch):
    """`mlwf schedule` with a real kfp.Client against a stub of the KFP REST API on 127.0.0.1."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import yaml

    from pipelines.cli import main
    from pipelines.compile import MONITORING_PACKAGE

    requests_seen: list[tuple[str, str, dict]] = []

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            requests_seen.append(("GET", self.path, {}))
            if self.path.startswith("/apis/v2beta1/experiments"):
                self._answer(
                    {"experiments": [{"experiment_id": "exp-1", "display_name": "mlwf-monitoring", "namespace": "mlwf"}], "total_size": 1}
                )
            else:
                self._answer({})

        def do_POST(self) -> None:  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            requests_seen.append(("POST", self.path, body))
            self._answer({**body, "recurring_run_id": "rr-1"} if "recurringruns" in self.path else body)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    for var in ("KFP_TOKEN", "KFP_COOKIE"):
        monkeypatch.delenv(var, raising=False)
    try:
        assert (
            main(
                [
                    "schedule",
                    "--host",
                    f"http://127.0.0.1:{server.server_port}",
                    "--cron",
                    "30 * * * *",
                    "--arg",
                    "window_hours=1",
                    "--arg",
                    'training_arguments={"epochs": 5}',
                ]
            )
            == 0
        )
    finally:
        server.shutdown()
    posts = [(path, body) for method, path, body in requests_seen if method == "POST"]
    assert [p for p, _ in posts] == ["/apis/v2beta1/recurringruns"]
    body = posts[0][1]
    assert body["experiment_id"] == "exp-1" and body["display_name"] == "mlwf-drift-monitor"
    assert body["trigger"]["cron_schedule"]["cron"] == "0 30 * * * *"
    assert body["max_concurrency"] == "1" or body["max_concurrency"] == 1
    assert body["no_catchup"] is True
    assert body["runtime_config"]["parameters"] == {"window_hours": 1, "training_arguments": '{"epochs": 5}'}
    spec = next(yaml.safe_load_all(Path(MONITORING_PACKAGE).read_text()))
    sent = body["pipeline_spec"].get("pipeline_spec", body["pipeline_spec"])
    assert sent["pipelineInfo"]["name"] == spec["pipelineInfo"]["name"] == "mlwf-monitoring"


def test_committed_monitoring_package_is_current_and_gates_the_retraining(tmp_path):
    """`mlwf compile` writes pipelines/compiled/monitoring.yaml; the committed one must match the code."""
    import yaml

    from pipelines.compile import MONITORING_PACKAGE, compile_package
    from pipelines.monitoring import monitoring_pipeline

    fresh = compile_package(str(tmp_path / "monitoring.yaml"), None, monitoring_pipeline)
    assert Path(fresh).read_text() == Path(MONITORING_PACKAGE).read_text(), "run `mlwf compile` and commit the result"
    spec = next(yaml.safe_load_all(Path(MONITORING_PACKAGE).read_text()))
    tasks = spec["root"]["dag"]["tasks"]
    condition = tasks["condition-1"]
    assert condition["triggerPolicy"]["condition"] == "inputs.parameter_values['pipelinechannel--drift-op-Output'] == true"
    inner = spec["components"]["comp-condition-1"]["dag"]["tasks"]
    assert set(inner) == {"retrain-op"} and "retryPolicy" not in inner["retrain-op"]  # a retry must not retrain twice
    assert tasks["drift-op"]["cachingOptions"] == {} and inner["retrain-op"]["cachingOptions"] == {}
