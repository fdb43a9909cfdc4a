"""What each pipeline step does, between its KFP artifacts and the pure modules.

Each function takes the step's artifacts (anything with `.path` and `.metadata`, plus `log_metric`
for Metrics), calls the logic, and records outputs and metadata. Tests call these directly with
artifacts on local paths; components/steps.py wraps them for Kubeflow.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

log = logging.getLogger("mlwf")


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    for noisy in ("feast", "great_expectations", "alembic", "urllib3", "kserve.trace"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _log_metrics(artifact: Any, values: dict[str, float]) -> None:
    for key, value in values.items():
        artifact.log_metric(key, float(value))


def ingest_step(dataset_spec: str, source_uri: str, raw: Any) -> tuple[int, str]:
    _setup_logging()
    from components.ingest import ingest
    from components.settings import get_settings
    from components.spec import load_spec

    started = time.perf_counter()
    spec = load_spec(dataset_spec)
    result = ingest(spec, source_uri, raw.path, get_settings().state_dir)
    raw.metadata.update({"rows": result.rows, "source": source_uri, "sha256": result.fingerprint, "ingested_at": result.ingested_at})
    log.info("ingest: %d rows from %s (sha256 %s) in %.1fs", result.rows, source_uri, result.fingerprint[:12], time.perf_counter() - started)
    return result.rows, result.fingerprint


def validate_step(dataset_spec: str, run_id: str, raw: Any, valid: Any, quarantine: Any, report: Any, metrics: Any) -> int:
    _setup_logging()
    import pandas as pd

    from components import storage
    from components.settings import get_settings
    from components.spec import load_spec
    from components.validate import enforce_threshold, report_html, to_parquet_bytes, validate

    started = time.perf_counter()
    spec = load_spec(dataset_spec)
    source = str(raw.metadata.get("source", raw.uri))
    frame = pd.read_parquet(raw.path)
    outcome = validate(spec, frame, run_id=run_id, source=source)
    quarantined = to_parquet_bytes(outcome.quarantined)
    storage.write_bytes(valid.path, to_parquet_bytes(outcome.valid))
    storage.write_bytes(quarantine.path, quarantined)
    # The quarantine store outlives the run: keyed by the input's digest, so a rerun rewrites, never duplicates.
    fingerprint = str(raw.metadata.get("sha256", "unknown"))[:16]
    store_path = storage.join(get_settings().state_dir, "quarantine", spec.name, f"{fingerprint}.parquet")
    storage.write_bytes(store_path, quarantined)
    storage.write_bytes(report.path, report_html(spec, outcome, source).encode())
    values = {"rows": outcome.rows, "valid": len(outcome.valid), "quarantined": len(outcome.quarantined), "bad_fraction": outcome.bad_fraction}
    values.update({f"failed.{k}": v for k, v in outcome.failures.items() if v})
    _log_metrics(metrics, values)
    valid.metadata.update({"rows": len(outcome.valid), "source_sha256": raw.metadata.get("sha256", "")})
    quarantine.metadata.update({"rows": len(outcome.quarantined), "store": store_path})
    warning = enforce_threshold(spec, outcome)  # raises above the limit, after the quarantine is safely written
    if warning:
        log.warning("validate: %s; see %s", warning, store_path)
    log.info("validate: %d valid, %d quarantined in %.1fs", len(outcome.valid), len(outcome.quarantined), time.perf_counter() - started)
    return len(outcome.valid)


def features_step(dataset_spec: str, valid: Any, train_set: Any, test_set: Any) -> str:
    _setup_logging()
    import pandas as pd

    from components import storage
    from components.features import build_features
    from components.settings import get_settings
    from components.spec import load_spec
    from components.validate import to_parquet_bytes

    started = time.perf_counter()
    spec = load_spec(dataset_spec)
    outcome = build_features(spec, pd.read_parquet(valid.path), get_settings())
    storage.write_bytes(train_set.path, to_parquet_bytes(outcome.train))
    storage.write_bytes(test_set.path, to_parquet_bytes(outcome.test))
    for artifact, frame in ((train_set, outcome.train), (test_set, outcome.test)):
        artifact.metadata.update({"rows": len(frame), "feature_service": outcome.service,
                                  "from": str(frame["event_timestamp"].min()), "to": str(frame["event_timestamp"].max())})
    log.info("features: %s, %d train / %d test rows in %.1fs", outcome.service, len(outcome.train), len(outcome.test), time.perf_counter() - started)
    return outcome.service


def train_step(dataset_spec: str, train_set: Any, feature_service: str, dataset_fingerprint: str, epochs: int, seed: int, model: Any, metrics: Any) -> tuple[str, str]:
    _setup_logging()
    from components.spec import load_spec
    from components.train import TrainParams
    from components.training_run import run_training_step

    started = time.perf_counter()
    spec = load_spec(dataset_spec)
    out = run_training_step(spec, train_set.path, model.path, TrainParams(epochs=int(epochs), seed=int(seed)), feature_service, dataset_fingerprint)
    model.metadata.update({k: v for k, v in out.items() if isinstance(v, (str, int, float, bool))})
    model.metadata["framework"] = "pytorch (torch.export bundle)"
    _log_metrics(metrics, {k: out[k] for k in ("val_roc_auc", "epochs") if k in out})
    log.info("train: %s version %s (%s) in %.1fs", out["model_name"], out["version"], "reused" if out["reused"] else "new", time.perf_counter() - started)
    return str(out["model_name"]), str(out["version"])


def evaluate_step(model: Any, test_set: Any, model_name: str, version: str, min_roc_auc: float, max_p99_latency_ms: float, max_regression: float, metrics: Any, roc: Any, report: Any) -> bool:
    _setup_logging()
    import pandas as pd

    from components import storage, tracking
    from components.evaluate import GatePolicy, evaluate, report_html
    from components.settings import get_settings

    started = time.perf_counter()
    policy = GatePolicy(min_roc_auc=float(min_roc_auc), max_p99_latency_ms=float(max_p99_latency_ms), max_regression=float(max_regression))
    ev = evaluate(model.path, pd.read_parquet(test_set.path), policy, model_name, version)
    _log_metrics(metrics, {k: v for k, v in ev.metrics.items() if v == v})  # NaN (one-class test set) is not loggable
    if ev.curves:
        roc.log_roc_curve(ev.curves["roc"]["fpr"], ev.curves["roc"]["tpr"], ev.curves["roc"]["thresholds"])
        roc.log_confusion_matrix(["negative", "positive"], ev.curves["confusion"])
    storage.write_bytes(report.path, report_html(ev, model_name, version, policy).encode())
    client = tracking.configure(get_settings())
    mv = client.get_model_version(model_name, version)
    import mlflow

    with mlflow.start_run(run_id=mv.run_id):
        mlflow.log_metrics({f"test_{k}": v for k, v in ev.metrics.items() if v == v})
        mlflow.log_text(json.dumps({"passed": ev.passed, "reasons": ev.reasons, "champion": ev.champion}, indent=2, default=str), "evaluation/gate.json")
    client.set_model_version_tag(model_name, version, "mlwf.gate", "passed" if ev.passed else "failed")
    client.set_model_version_tag(model_name, version, "mlwf.gate_reasons", "; ".join(ev.reasons)[:4000] or "none")
    if ev.passed:
        client.set_registered_model_alias(model_name, "challenger", version)
    reasons = "; ".join(ev.reasons) or "all checks passed"
    report.metadata.update({"passed": ev.passed, "reasons": reasons})
    log.info("evaluate: gate %s for %s v%s (%s) in %.1fs", "PASSED" if ev.passed else "FAILED", model_name, version, reasons, time.perf_counter() - started)
    return bool(ev.passed)


def deploy_step(model: Any, test_set: Any, model_name: str, version: str, deployment: Any) -> str:
    _setup_logging()
    import pandas as pd

    from components import bundle as bundle_lib
    from components import storage, tracking
    from components.settings import get_settings

    started = time.perf_counter()
    settings = get_settings()
    test = pd.read_parquet(test_set.path)
    candidate = bundle_lib.load(model.path)
    sample = bundle_lib.columns_from_frame(test.head(3), candidate.feature_names)
    instances = [{k: v[i] for k, v in sample.items()} for i in range(len(test.head(3)))]
    if settings.is_local:
        from components.deploy import deploy_local

        result = deploy_local(model.path, model_name, version, instances, settings)
        url, predict_url = result.url, result.predict_url
    else:
        from components.kserve_deploy import deploy_cluster

        out = deploy_cluster(model.path, model_name, version, settings)
        url, predict_url = out["url"], out["predict_url"]
    client = tracking.configure(settings)
    client.set_registered_model_alias(model_name, "champion", version)  # only after the new version serves
    text = (f"# Deployed {model_name} v{version}\n\n- URL: {url}\n- Predict (V1): `POST {predict_url}`\n"
            f"- Example:\n\n```\ncurl -s -H 'Content-Type: application/json' {predict_url} -d '{json.dumps({'instances': instances[:1]})}'\n```\n")
    storage.write_bytes(deployment.path, text.encode())
    deployment.metadata.update({"url": url, "predict_url": predict_url, "version": version})
    log.info("deploy: %s v%s serving at %s in %.1fs", model_name, version, url, time.perf_counter() - started)
    return predict_url
