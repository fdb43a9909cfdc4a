"""Where things live: the state store's layout and the names derived from a model's name.

Every stage reads and writes the state store (a local directory or an s3:// prefix) through these, so the
layout is written down once.
"""

from __future__ import annotations

from typing import Any

from components.core import storage


def service_name(model_name: str) -> str:
    """A DNS-1035 name for the InferenceService and the local model server."""
    name = "".join(ch if ch.isalnum() else "-" for ch in model_name.lower()).strip("-")
    return (name if name[:1].isalpha() else f"m-{name}")[:45]


# ---------------------------------------------------------------- the state store's layout
#
#   ingest/<dataset>/manifests/<fingerprint>.json   a dataset version: its files, suite, code, first run
#   ingest/<dataset>/latest.json                    the latest dataset version
#   ingest/<dataset>/fingerprints.json, snapshots/  the files seen (sha256) and their parsed snapshots
#   ingest/first_seen/<file sha256>.json            when a file was first ingested ("the future" is after it)
#   validate/<dataset>/<fingerprint>.json           what validation found for a dataset version
#   validate/<dataset>/first_runs/<suite>/<file sha256>.json   the run that first validated a file
#   quarantine/<dataset>/<fingerprint[:16]>.parquet the quarantined rows of a dataset version
#   request_logs/<service>/...                      the model servers' request logs
#   monitoring/<service>/...                        the monitor's cooldown and reports
#   monitoring/metrics/mlwf_drift_<service>.prom    the monitor's gauges (node-exporter textfile)
#   reports/                                        HTML copies of the latest local run's reports
#   trainjobs/<name>                                staged inputs and outputs of a Kubeflow TrainJob


def ingest_dir(state_dir: str, dataset: str) -> str:
    return storage.join(state_dir, "ingest", dataset)


def manifest_path(state_dir: str, dataset: str, fingerprint: str) -> str:
    return storage.join(ingest_dir(state_dir, dataset), "manifests", f"{fingerprint}.json")


def latest_path(state_dir: str, dataset: str) -> str:
    return storage.join(ingest_dir(state_dir, dataset), "latest.json")


def first_seen_path(state_dir: str, file_sha256: str) -> str:
    return storage.join(state_dir, "ingest", "first_seen", f"{file_sha256}.json")


def validation_path(state_dir: str, dataset: str, fingerprint: str) -> str:
    return storage.join(state_dir, "validate", dataset, f"{fingerprint}.json")


def first_validation_run_path(state_dir: str, dataset: str, suite_version: str, file_sha256: str) -> str:
    return storage.join(state_dir, "validate", dataset, "first_runs", suite_version, f"{file_sha256}.json")


def scoring_first_seen_path(state_dir: str, dataset: str, input_key: str) -> str:
    """When batch scoring first saw an input (its files' digests): the clock its "in the future" check reads."""
    return storage.join(state_dir, "scoring", dataset, "first_seen", f"{input_key}.json")


def quarantine_path(state_dir: str, dataset: str, fingerprint: str) -> str:
    return storage.join(state_dir, "quarantine", dataset, f"{fingerprint[:16]}.parquet")


def log_root(settings: Any) -> str:
    return request_log_root(settings.state_dir)


def request_log_root(state_dir: str) -> str:
    return storage.join(state_dir, "request_logs")


def monitor_home(settings: Any, service: str) -> str:
    return storage.join(settings.state_dir, "monitoring", service)


def drift_gauges_path(state_dir: str, service: str) -> str:
    return storage.join(state_dir, "monitoring", "metrics", f"mlwf_drift_{service}.prom")


def reports_dir(state_dir: str) -> str:
    return storage.join(state_dir, "reports")


def trainjob_dir(state_dir: str, name: str) -> str:
    return storage.join(state_dir, "trainjobs", name)
