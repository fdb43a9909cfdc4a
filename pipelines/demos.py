"""The demos: the demo data's path, the drift demo (drifted traffic served, drift detected, a retraining) and
the rollout demo (a broken canary rolled back), with serving the champion for them."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC
from pathlib import Path
from typing import Any

from pipelines.kfp_api import training_arguments
from pipelines.summary import fail, monitor_summary


def demo_data_path() -> Path:
    from components.core.settings import get_settings

    return Path(get_settings().state_dir) / "data" / "transactions.csv"


def _ready(url: str, service: str) -> bool:
    import requests

    try:
        return requests.get(f"{url}/v2/models/{service}/ready", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def _serve_champion(settings: Any, model: str, instances: list[dict[str, Any]]) -> tuple[str, str]:
    """The champion's predict URL: the running local server when it serves the champion, else a fresh one."""
    import tempfile

    from components.core import tracking
    from components.core.paths import service_name
    from components.deployment.local import deploy_local

    client = tracking.configure(settings)
    champion = tracking.alias_version(client, model, "champion")
    if champion is None:
        raise LookupError(f"no champion of {model!r} in the MLflow registry ({settings.mlflow_tracking_uri}): run `make demo` first")
    service = service_name(model)
    record = Path(settings.state_dir) / "serving" / service / "server.json"
    if record.exists():
        served = json.loads(record.read_text())
        if str(served.get("version")) == str(champion.version) and _ready(served["url"], service):
            return served["predict_url"], str(champion.version)
    print(f"the champion v{champion.version} is not being served: starting it on {settings.serve_host}:{settings.serve_port}")
    with tempfile.TemporaryDirectory(prefix="champion-") as tmp:
        bundle = tracking.download_bundle(client, champion, tmp)
        deployment = deploy_local(bundle, model, str(champion.version), instances, settings)
    return deployment.predict_url, str(champion.version)


def cmd_drift_demo(args: argparse.Namespace) -> int:
    """Serve the champion, replay drifted traffic through HTTP, run the monitor: it detects drift and retrains."""
    import time
    from datetime import datetime, timedelta

    import requests

    from components.core import bundle as bundle_lib
    from components.core import tracking
    from components.core.paths import service_name
    from components.core.request_log import RequestLogWriter, read_window
    from components.core.settings import get_settings
    from components.data.datagen import GenConfig, generate
    from pipelines.local import PipelineFailed, progress_to
    from pipelines.monitoring import run_monitoring_local

    settings = get_settings()
    service = service_name(args.model)
    traffic = generate(GenConfig(rows=args.rows, seed=args.seed, drift=args.drift))
    features = ["amount", "hour_of_day", "card_age_days", "distance_km", "txn_count_24h", "merchant_category", "channel", "country"]
    columns = bundle_lib.columns_from_frame(traffic, features)
    instances = [{k: v[i] for k, v in columns.items()} for i in range(len(traffic))]
    try:
        predict_url, version = _serve_champion(settings, args.model, instances[:3])
    except (LookupError, RuntimeError) as err:
        return fail(str(err))
    data_path = Path(settings.state_dir) / "data" / "transactions-drifted.csv"
    data_path.parent.mkdir(parents=True, exist_ok=True)
    traffic.to_csv(data_path, index=False)  # the newly labeled period the retraining learns from

    replay = min(args.replay, len(instances))
    started = datetime.now(UTC) - timedelta(seconds=1)
    print(f"replaying {replay} drifted transactions (drift={args.drift}) to {predict_url} in batches of {args.batch} ...")
    answers: list[dict[str, Any]] = []
    clock = time.perf_counter()
    with requests.Session() as http:
        for start in range(0, replay, args.batch):
            response = http.post(predict_url, json={"instances": instances[start : min(start + args.batch, replay)]}, timeout=30)
            if response.status_code != 200:
                return fail(f"the model server answered HTTP {response.status_code}: {response.text[:200]}")
            answers.extend(response.json()["predictions"])
    print(f"  {replay} rows scored in {time.perf_counter() - clock:.1f}s over HTTP")

    from components.core import paths

    root = paths.request_log_root(settings.state_dir)
    logged = 0
    deadline = time.monotonic() + 10  # the server's log sink flushes every few seconds
    while time.monotonic() < deadline:
        logged = len(read_window(root, service, started, datetime.now(UTC) + timedelta(seconds=1)))
        if logged >= replay:
            break
        time.sleep(1)
    if logged:
        print(f"  the model server logged {logged} rows under {root}/{service}")
    else:
        print(f"  the model server wrote no request logs: the replay client logs the {replay} answers itself (same format)")
        writer = RequestLogWriter(root, service)
        probs = [a["probability"] for a in answers]
        writer.log(
            instances[:replay],
            probs,
            [a["label"] for a in answers],
            version,
            "drift-demo",
            entities=traffic["transaction_id"].iloc[:replay].tolist(),
        )
        writer.flush()
    labels = Path(settings.state_dir) / "monitoring" / service / "labels" / "drift-demo.csv"
    labels.parent.mkdir(parents=True, exist_ok=True)
    known = traffic.iloc[:replay]
    known.assign(entity=known["transaction_id"], label=known["is_fraud"], ts=datetime.now(UTC).isoformat())[
        ["entity", "label", "ts"]
    ].to_csv(labels, index=False)

    try:
        training = training_arguments(
            {"dataset_spec": "transactions", "source_uri": str(data_path), "epochs": args.epochs}, args.retrain_arg
        )
    except ValueError as err:
        return fail(str(err))
    arguments = {
        "model_name": args.model,
        "window_hours": args.window_hours,
        "cooldown_hours": args.cooldown_hours,
        "labels_uri": str(labels),
        "training_arguments": json.dumps(training),
    }
    print("running the monitoring pipeline (kfp.local); each step's whole output goes to its log file", flush=True)
    try:
        with progress_to(sys.stdout):
            run = run_monitoring_local(arguments)
    except PipelineFailed as err:
        return fail(str(err))
    print(monitor_summary(run))
    print(f"{'Gauges (textfile):':<20} {Path(settings.state_dir) / 'monitoring' / 'metrics' / f'mlwf_drift_{service}.prom'}")
    champion = tracking.alias_version(tracking.configure(settings), args.model, "champion")
    print(f"{'Champion now:':<20} v{champion.version if champion else '?'} (was v{version})")
    return 0


def cmd_rollout_demo(args: argparse.Namespace) -> int:
    """Canary a broken copy of the serving champion, with demo traffic replayed, and show the rollback."""
    import pandas as pd
    import requests

    from components.core import bundle as bundle_lib
    from components.core.paths import service_name
    from components.core.settings import get_settings
    from components.deployment.local import deploy_local
    from components.deployment.rollout import DeployError
    from pipelines.demo_bundles import make_broken_bundle

    settings = get_settings()
    home = Path(settings.state_dir) / "serving" / service_name(args.model)
    record_path = home / "server.json"
    stable = json.loads(record_path.read_text()) if record_path.exists() else None
    if stable is None or not _ready(stable["url"], service_name(args.model)):  # a record whose server is gone: not running
        return fail(f"no {args.model} model server is running locally: run `make demo` first")
    data = Path(args.data) if args.data else demo_data_path()
    if not data.exists():
        return fail(f"no traffic to replay: {data} does not exist (run `make demo` first, or pass --data)")
    champion = bundle_lib.load(stable["model_dir"])
    frame = pd.read_csv(data)
    for name in champion.numeric:  # the demo data has bad rows on purpose: replay the latest rows that parse
        frame[name] = pd.to_numeric(frame[name], errors="coerce")
    frame = frame.dropna(subset=champion.feature_names).tail(2000)  # the latest rows: the test period
    columns = bundle_lib.columns_from_frame(frame, champion.feature_names)
    traffic = [{k: v[i] for k, v in columns.items()} for i in range(len(frame))]
    broken = make_broken_bundle(stable["model_dir"], str(home / f"broken-{args.broken}"), args.broken)
    what = {
        "errors": "a bundle whose signature renames a feature (real requests get 400)",
        "slow": "a bundle whose program does ~5 GFLOP per request (right answers, too late)",
    }[args.broken]
    print(f"champion v{stable['version']} serves at {stable['url']}; canary: {what}")
    try:
        deployed = deploy_local(broken, args.model, f"broken-{args.broken}", traffic[:3], settings, replay=traffic)
    except DeployError as err:
        report = getattr(err, "report", None)
        if report is not None:
            print(report.summary())
        print(f"\n{err}")
        answer = requests.post(stable["predict_url"], json={"instances": traffic[:1]}, timeout=10)
        print(f"\nthe champion v{stable['version']} still answers at {stable['predict_url']}: HTTP {answer.status_code}")
        return 0 if answer.status_code == 200 else 1
    print(deployed.rollout)
    return fail(f"the broken canary was promoted (v{deployed.version} now serves): the analysis let it through")
