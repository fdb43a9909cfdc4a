"""Traffic replay for the local canary: rows from the test period, one per request, split between two servers.

`replay_split` sends `percent` of the requests to the canary and the rest to the stable server and records what
the client saw on each side (requests, errors, latencies, probabilities); `scrape_requests` reads a server's own
count of answered and failed requests from its /metrics. LocalCanary (components/deployment/local.py) combines them
into the rollout's observations.
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import requests


def scrape_requests(base_url: str, model: str) -> tuple[float, float] | None:
    """(answered, failed) from the server's mlwf_inference_requests_total for `model`; None when it has no such counter."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        response = requests.get(f"{base_url}/metrics", timeout=5)
    except requests.RequestException:
        return None
    if response.status_code != 200:
        return None
    total = failed = 0.0
    seen = False
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == "mlwf_inference_requests_total" and sample.labels.get("model") == model:
                seen = True
                total += sample.value
                if sample.labels.get("status_class") != "2xx":
                    failed += sample.value
    return (total, failed) if seen else None


@dataclass
class _Side:
    requests: int = 0
    errors: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    probabilities: list[float] = field(default_factory=list)

    @property
    def p99_ms(self) -> float | None:
        import numpy as np

        return float(np.percentile(self.latencies_ms, 99)) if self.latencies_ms else None

    @property
    def predictions(self) -> Any:
        import numpy as np

        return np.asarray(self.probabilities, dtype=np.float64)


def to_canary(index: int, percent: int) -> bool:
    """Request `index` goes to the canary: exactly `percent` of every 100 consecutive requests, evenly spread."""
    return (index + 1) * percent // 100 > index * percent // 100


def replay_split(
    stable_url: str,
    canary_url: str,
    rows: list[dict[str, Any]],
    percent: int,
    seconds: float,
    min_requests: int,
    offset: int = 0,
    timeout: float = 5.0,
    workers: int = 4,
) -> dict[str, _Side]:
    """Replay `rows` one per request, `percent` of them to the canary, for `seconds` and until each side that gets
    traffic has `min_requests`; never longer than seconds + max(10, 3 * seconds)."""
    sides = {"stable": _Side(), "canary": _Side()}
    counter = itertools.count(offset)
    lock = threading.Lock()
    started = time.monotonic()
    hard_stop = started + seconds + max(10.0, 3 * seconds)
    needs = [side for side, share in (("stable", 100 - percent), ("canary", percent)) if share > 0]

    def done() -> bool:
        now = time.monotonic()
        if now >= hard_stop:
            return True
        return now - started >= seconds and all(sides[s].requests >= min_requests for s in needs)

    def work() -> None:
        session = requests.Session()
        while True:
            with lock:
                if done():
                    return
                index = next(counter)
            role = "canary" if to_canary(index, percent) else "stable"
            body = {"instances": [rows[index % len(rows)]]}
            t0 = time.perf_counter()
            probability = None
            try:
                response = session.post(canary_url if role == "canary" else stable_url, json=body, timeout=timeout)
                ok = response.status_code == 200
                if ok:
                    probability = float(response.json()["predictions"][0]["probability"])
            except (requests.RequestException, ValueError, KeyError, IndexError, TypeError):
                ok = False
            elapsed_ms = (time.perf_counter() - t0) * 1000
            with lock:
                side = sides[role]
                side.requests += 1
                side.latencies_ms.append(elapsed_ms)
                if ok and probability is not None:
                    side.probabilities.append(probability)
                else:
                    side.errors += 1

    threads = [threading.Thread(target=work, daemon=True) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sides
