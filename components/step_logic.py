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


def ingest_step(dataset_spec: str, source_uri: str, raw: Any, run_id: str = "local") -> tuple[int, str]:
    """Ingest new or changed input files; `raw` gets the union of every file of the source (see ingest.py)."""
    _setup_logging()
    from components.ingest import ingest
    from components.settings import get_settings
    from components.spec import load_spec
    from components.validate import load_suite

    started = time.perf_counter()
    spec = load_spec(dataset_spec)
    suite = load_suite(spec, dataset_spec)  # missing or stale: fail before reading anything
    result = ingest(spec, source_uri, raw.path, get_settings().state_dir, run_id=run_id, suite_version=suite.version)
    raw.metadata.update({
        "rows": result.rows, "source": source_uri, "dataset_fingerprint": result.fingerprint, "sha256": result.fingerprint,
        "suite_version": suite.version, "ingested_at": result.ingested_at, "run_id": run_id, "files": len(result.files),
        "new_files": len(result.new_files), "skipped_files": len(result.skipped_files), "duplicate_files": len(result.duplicate_files),
    })
    for dup in result.duplicate_files:
        log.warning("ingest: %s has the same content as another input file: left out", dup)
    log.info("ingest: %d rows from %d file(s) of %s (%d new, %d unchanged and skipped), dataset version %s in %.1fs",
             result.rows, len(result.files), source_uri, len(result.new_files), len(result.skipped_files),
             result.fingerprint[:16], time.perf_counter() - started)
    return result.rows, result.fingerprint


def validate_step(dataset_spec: str, run_id: str, raw: Any, valid: Any, quarantine: Any, report: Any, metrics: Any) -> int:
    _setup_logging()
    import hashlib

    import pandas as pd

    from components import lineage, storage
    from components.settings import get_settings
    from components.spec import load_spec
    from components.validate import enforce_threshold, load_suite, report_html, to_parquet_bytes, validate

    started = time.perf_counter()
    state = get_settings().state_dir
    spec = load_spec(dataset_spec)
    suite = load_suite(spec, dataset_spec)
    source = str(raw.metadata.get("source", raw.uri))
    fingerprint = str(raw.metadata.get("dataset_fingerprint") or raw.metadata.get("sha256", "unknown"))
    with pd.option_context("future.infer_string", True):  # text arrives as Arrow strings: no Python objects per cell
        frame = pd.read_parquet(raw.path)
    manifest = lineage.manifest(state, spec.name, fingerprint)
    # The run that first validated each file under this suite is written on its quarantined rows, so a
    # rerun on the same input writes byte-identical records.
    run_ids = {f["uri"]: str(lineage.write_once(storage.join(state, "validate", spec.name, "first_runs", suite.version, f"{f['sha256']}.json"),
                                                {"run_id": run_id})["run_id"]) for f in manifest["files"]}
    outcome = validate(spec, frame, run_id=run_id, source=source, suite=suite, run_ids=run_ids)
    record = {
        "dataset": spec.name, "dataset_fingerprint": fingerprint, "suite_version": suite.version,
        "spec_sha256": suite.spec_sha256, "code_version": manifest["code_version"], "first_run_id": manifest["run_id"],
        "files": [{"uri": f["uri"], "sha256": f["sha256"], "rows": f["rows"]} for f in manifest["files"]],
    }
    valid_bytes = to_parquet_bytes(outcome.valid_table, {"mlwf.lineage": json.dumps(record, sort_keys=True)})
    quarantined = to_parquet_bytes(outcome.quarantined, {"mlwf.lineage": json.dumps(record, sort_keys=True)})
    # The quarantine store outlives the run: keyed by the dataset version, so a rerun rewrites the same
    # bytes and never duplicates; a new input file makes a new version.
    store_path = storage.join(state, "quarantine", spec.name, f"{fingerprint[:16]}.parquet")
    storage.write_bytes(store_path, quarantined)
    storage.write_bytes(quarantine.path, quarantined)
    storage.write_bytes(valid.path, valid_bytes)
    storage.write_bytes(report.path, report_html(spec, outcome, source, {**record, "run_id": run_id, "quarantine_store": store_path}).encode())
    lineage.write_once(lineage.validation_path(state, spec.name, fingerprint), {
        **{k: v for k, v in record.items() if k != "files"}, "rows": outcome.rows, "valid": outcome.valid_table.num_rows,
        "quarantined": len(outcome.quarantined), "failures": outcome.failures, "quarantine_store": store_path,
        "valid_sha256": hashlib.sha256(valid_bytes).hexdigest(), "run_id": run_id,
    })
    values = {"rows": outcome.rows, "valid": outcome.valid_table.num_rows, "quarantined": len(outcome.quarantined),
              "bad_fraction": outcome.bad_fraction, "files": len(manifest["files"])}
    values.update({f"failed.{k}": v for k, v in outcome.failures.items()})
    _log_metrics(metrics, values)
    lineage_meta = {**{k: v for k, v in record.items() if k != "files"}, "run_id": run_id, "input_files": json.dumps(record["files"])}
    valid.metadata.update({"rows": outcome.valid_table.num_rows, "source_sha256": fingerprint, **lineage_meta})
    quarantine.metadata.update({"rows": len(outcome.quarantined), "store": store_path, **lineage_meta})
    warning = enforce_threshold(spec, outcome)  # raises above the limit, after the quarantine is safely written
    if warning:
        log.warning("validate: %s; see %s", warning, store_path)
    log.info("validate: %d valid, %d quarantined (suite %s) in %.1fs", outcome.valid_table.num_rows, len(outcome.quarantined),
             suite.version, time.perf_counter() - started)
    return int(outcome.valid_table.num_rows)


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


def train_step(dataset_spec: str, train_set: Any, feature_service: str, dataset_fingerprint: str, epochs: int, seed: int, model: Any, metrics: Any,
               nodes: int = 1, gpus_per_node: int = 1, pipeline_run: str = "", pipeline_run_name: str = "") -> tuple[str, str]:
    _setup_logging()
    from components.spec import load_spec
    from components.train import TrainParams
    from components.training_run import run_training_step

    started = time.perf_counter()
    spec = load_spec(dataset_spec)
    out = run_training_step(spec, train_set.path, model.path, TrainParams(epochs=int(epochs), seed=int(seed)), feature_service, dataset_fingerprint,
                            nodes=int(nodes), gpus_per_node=int(gpus_per_node), pipeline_run=pipeline_run,
                            pipeline_run_name=pipeline_run_name)
    model.metadata.update({k: v for k, v in out.items() if isinstance(v, (str, int, float, bool))})
    model.metadata["framework"] = "pytorch (torch.export bundle)"
    _log_metrics(metrics, {k: out[k] for k in ("val_roc_auc", "epochs", "world_size") if k in out})
    log.info("train: %s version %s (%s) in %.1fs", out["model_name"], out["version"], "reused" if out["reused"] else "new", time.perf_counter() - started)
    return str(out["model_name"]), str(out["version"])


def evaluate_step(model: Any, train_set: Any, test_set: Any, model_name: str, version: str, dataset_spec: str, gate_policy: str,
                  min_roc_auc: float, max_p99_latency_ms: float, max_regression: float,
                  metrics: Any, roc: Any, report: Any, model_card: Any, verdict: Any = None, pipeline_run: str = "") -> bool:
    """Judge the version by its gate policy; record the verdict, report and model card; `challenger` on pass only.

    The verdict (PASS/FAIL, each check and the key metrics) goes to the `verdict` Markdown output, the MLflow
    run and the registered version's description, so a failed gate shows wherever someone looks at this run.
    """
    _setup_logging()
    from pathlib import Path

    import pandas as pd

    from components import bundle as bundle_lib
    from components import storage, tracking
    from components.evaluate import evaluate
    from components.evaluation_report import full_card, report_html
    from components.policy import policy_for_run
    from components.settings import get_settings
    from components.spec import load_spec
    from components.verdict import evaluation_summary, verdict_markdown

    started = time.perf_counter()
    pipeline_run = tracking.pipeline_run_id(pipeline_run)
    spec = load_spec(dataset_spec)
    policy = policy_for_run(gate_policy, dataset_spec, spec.name, float(min_roc_auc), float(max_p99_latency_ms), float(max_regression))
    client = tracking.configure(get_settings())
    ev = evaluate(model.path, pd.read_parquet(test_set.path), policy, model_name, version,
                  train=pd.read_parquet(train_set.path), client=client)
    scalars = dict(ev.metrics)
    scalars.update({f"baseline.{k}": v for k, v in (ev.baseline or {}).items() if isinstance(v, float)})
    scalars.update({f"champion.{k}": v for k, v in (ev.champion or {}).items() if isinstance(v, float) and k != "threshold"})
    scalars.update({f"slice_gap.{g['attribute']}.{g['metric']}": g["gap"] for g in ev.slice_gaps if "gap" in g})
    scalars["gate_passed"] = float(ev.passed)
    finite = {k: float(v) for k, v in scalars.items() if v == v}  # NaN (one-class test set) is not loggable
    _log_metrics(metrics, finite)
    if ev.curves:
        roc.log_roc_curve(ev.curves["roc"]["fpr"], ev.curves["roc"]["tpr"], ev.curves["roc"]["thresholds"])
        roc.log_confusion_matrix(["negative", "positive"], ev.curves["confusion"])
    page = report_html(ev, model_name, version)
    card = full_card(Path(model.path, bundle_lib.CARD).read_text(), ev, model_name, version)
    verdict_text = verdict_markdown(ev, model_name, version, pipeline_run)
    storage.write_bytes(report.path, page.encode())
    storage.write_bytes(model_card.path, card.encode())
    if verdict is not None:
        storage.write_bytes(verdict.path, verdict_text.encode())
    mv = client.get_model_version(model_name, version)
    import mlflow

    with mlflow.start_run(run_id=mv.run_id):
        mlflow.log_metrics({f"test_{k}": v for k, v in finite.items()})
        mlflow.log_text(json.dumps(ev.summary(), indent=2, default=str), "evaluation/gate.json")
        mlflow.log_text(verdict_text, "evaluation/verdict.md")
        mlflow.log_text(page, "evaluation/report.html")
        mlflow.log_text(card, "model_card.md")  # the full card: training-time card + this evaluation
        # On the run too, so the runs table can show the verdict as a column; a version reused by a later
        # pipeline run is re-evaluated there, and this names the latest one.
        mlflow.set_tags({"mlwf.gate": "passed" if ev.passed else "failed",
                         **({"mlwf.evaluation_pipeline_run": pipeline_run} if pipeline_run else {})})
    client.update_model_version(model_name, version, description=tracking.with_evaluation(mv.description or "", evaluation_summary(ev, pipeline_run)))
    client.set_model_version_tag(model_name, version, "mlwf.gate", "passed" if ev.passed else "failed")
    client.set_model_version_tag(model_name, version, "mlwf.gate_reasons", "; ".join(ev.reasons)[:4000] or "none")
    client.set_model_version_tag(model_name, version, "mlwf.gate_policy", f"{policy.source} v{policy.version} sha256:{policy.fingerprint()[:16]}"[:4000])
    if ev.passed:  # a fail changes no alias; `champion` moves only after a successful deploy
        client.set_registered_model_alias(model_name, "challenger", version)
    reasons = "; ".join(ev.reasons) or "all checks passed"
    for artifact in (report, model_card, verdict):
        if artifact is not None:
            artifact.metadata.update({"passed": ev.passed, "reasons": reasons, "policy_version": policy.version})
    log.info("evaluate: gate %s for %s v%s (%s) in %.1fs", "PASSED" if ev.passed else "FAILED", model_name, version, reasons, time.perf_counter() - started)
    return bool(ev.passed)


def deploy_step(model: Any, test_set: Any, model_name: str, version: str, deployment: Any) -> str:
    _setup_logging()
    import pandas as pd

    from components import bundle as bundle_lib
    from components import storage, tracking
    from components.evaluate import expected_prediction_shift
    from components.settings import get_settings

    started = time.perf_counter()
    settings = get_settings()
    test = pd.read_parquet(test_set.path)
    candidate = bundle_lib.load(model.path)
    sample = bundle_lib.columns_from_frame(test.head(3), candidate.feature_names)
    instances = [{k: v[i] for k, v in sample.items()} for i in range(len(test.head(3)))]
    replay_rows = 2000  # the traffic a local canary replays, cycled as long as the steps need
    client = tracking.configure(settings)
    # A retrained model is meant to score differently from the champion (after drift, that is the point):
    # the canary analysis allows the shift that the two versions show offline on the test period.
    expected_psi, champion = expected_prediction_shift(client, model_name, version, candidate, test.head(replay_rows))
    if champion is not None:
        log.info("deploy: prediction PSI between champion v%s and v%s on the test period: %.3f (allowed in the canary analysis)",
                 champion, version, expected_psi)
    if settings.is_local:
        from components.deploy import deploy_local

        # A later version is canaried against the one serving with the test period replayed as traffic;
        # a rollback raises here, before the alias below moves.
        rows = bundle_lib.columns_from_frame(test.head(replay_rows), candidate.feature_names)
        replay = [{k: v[i] for k, v in rows.items()} for i in range(min(len(test), replay_rows))]
        result = deploy_local(model.path, model_name, version, instances, settings, replay=replay, expected_psi=expected_psi)
        url, predict_url = result.url, result.predict_url
    else:
        from components.kserve_deploy import deploy_cluster

        out = deploy_cluster(model.path, model_name, version, settings, expected_psi=expected_psi)
        url, predict_url = out["url"], out["predict_url"]
    client.set_registered_model_alias(model_name, "champion", version)  # only after the new version serves
    text = (f"# Deployed {model_name} v{version}\n\n- URL: {url}\n- Predict (V1): `POST {predict_url}`\n"
            f"- Example:\n\n```\ncurl -s -H 'Content-Type: application/json' {predict_url} -d '{json.dumps({'instances': instances[:1]})}'\n```\n")
    storage.write_bytes(deployment.path, text.encode())
    deployment.metadata.update({"url": url, "predict_url": predict_url, "version": version})
    log.info("deploy: %s v%s serving at %s in %.1fs", model_name, version, url, time.perf_counter() - started)
    return predict_url
