"""The canary analysis on a cluster: PromQL over the model server's metrics, per served version.

The runtime (serving/observability.py) exports, per model and version,
  mlwf_inference_requests_total{model, version, protocol, status_class}   every answer, 2xx or not
  mlwf_inference_latency_seconds_bucket{model, version, protocol, le}     request-to-response time
and the PodMonitor (manifests/base/monitoring.yaml) adds `namespace` and `pod`. Canary and stable are told
apart by `version`, the label the runtime derives from each bundle (`served_version`): it names what a revision
serves in both KServe modes, whose pod names differ (Knative revisions vs Standard-mode Deployments).
Prometheus holds no distribution of predictions, so those come from the request logs, by the same version.

The queries (W is the step's window, e.g. 300s):
  requests   sum(increase(mlwf_inference_requests_total{namespace="NS",model="M",version="V"}[W]))
  successes  sum(increase(mlwf_inference_requests_total{namespace="NS",model="M",version="V",status_class="2xx"}[W]))
  p99        histogram_quantile(0.99, sum by (le) (increase(mlwf_inference_latency_seconds_bucket{namespace="NS",model="M",version="V"}[W])))
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from components.deployment.rollout import DeployError, Observation

REQUEST_TIMEOUT = (5, 30)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def selector(**labels: str) -> str:
    return "{" + ",".join(f'{k}="{_label(v)}"' for k, v in labels.items()) + "}"


def queries(namespace: str, model: str, version: str, window_s: float) -> dict[str, str]:
    window = f"{max(int(round(window_s)), 1)}s"
    base = {"namespace": namespace, "model": model, "version": version}
    return {
        "requests": f"sum(increase(mlwf_inference_requests_total{selector(**base)}[{window}]))",
        "successes": f"sum(increase(mlwf_inference_requests_total{selector(**base, status_class='2xx')}[{window}]))",
        "p99": f"histogram_quantile(0.99, sum by (le) (increase(mlwf_inference_latency_seconds_bucket{selector(**base)}[{window}])))",
    }


@dataclass(frozen=True)
class Prometheus:
    url: str

    def query(self, promql: str, at: float) -> float | None:
        """One instant query; None when the result is empty or NaN (no traffic: nothing to divide)."""
        import requests

        try:
            response = requests.get(
                f"{self.url.rstrip('/')}/api/v1/query", params={"query": promql, "time": f"{at:.3f}"}, timeout=REQUEST_TIMEOUT
            )
        except requests.RequestException as err:
            raise DeployError(f"Prometheus at {self.url} unreachable for {promql!r}: {err}") from err
        try:
            body = response.json()
        except ValueError:
            body = {}
        if response.status_code != 200 or body.get("status") != "success":
            raise DeployError(
                f"Prometheus refused {promql!r}: HTTP {response.status_code} "
                f"{body.get('errorType', '')} {body.get('error', response.text[:200])}".strip()
            )
        data = body["data"]
        if data.get("resultType") != "vector":
            raise DeployError(f"Prometheus answered {promql!r} with a {data.get('resultType')}, expected a vector")
        if not data["result"]:
            return None
        if len(data["result"]) > 1:
            raise DeployError(f"Prometheus answered {promql!r} with {len(data['result'])} series, expected one")
        value = float(data["result"][0]["value"][1])
        return None if math.isnan(value) else value


@dataclass
class ClusterAnalyzer:
    """Observes one side by version: counts and p99 from Prometheus, predictions from the request logs."""

    prometheus: Prometheus
    namespace: str
    model: str  # the service name: the runtime's `model` label and request-log directory
    log_root: str
    clock: Callable[[], float] = time.time

    def observe(self, version: str, window_s: float) -> Observation:
        from components.core import request_log

        end = self.clock()
        q = queries(self.namespace, self.model, version, window_s)
        total = self.prometheus.query(q["requests"], end) or 0.0
        ok = self.prometheus.query(q["successes"], end) or 0.0
        p99 = self.prometheus.query(q["p99"], end)
        # increase() extrapolates to the window's edges, so counts come back fractional.
        requests = int(round(total))
        errors = min(requests, max(int(round(total - ok)), 0))
        logs = request_log.read_window(
            self.log_root, self.model, datetime.fromtimestamp(end - window_s, UTC), datetime.fromtimestamp(end, UTC)
        )
        mine = logs[logs["version"].astype(str) == version] if len(logs) else logs
        predictions = mine["probability"].to_numpy(dtype=np.float64) if len(mine) else np.empty(0)
        return Observation(
            requests,
            errors,
            None if p99 is None else p99 * 1000.0,
            predictions,
            source=f"prometheus {self.prometheus.url} + request logs {self.log_root}",
        )
