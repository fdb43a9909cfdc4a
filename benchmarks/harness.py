"""What every benchmark returns and how the results are written.

A benchmark module in this folder defines `run(quick: bool) -> list[Figure]`. Each Figure holds this
project's number beside its anchor measured in the same run on the same data, so the ratio means
something on a shared, noisy machine. Timings are medians of repeats. Tests never assert on time;
`make bench` reports.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class Figure:
    benchmark: str
    figure: str  # what is measured, with its unit, e.g. "validation throughput (rows/s)"
    project: float
    anchor: float | None  # the same work done the ordinary way, in the same run
    anchor_name: str
    higher_is_better: bool
    goal: str  # the target in words, e.g. ">= 1M rows/s and >= 1x anchor"
    met: bool | None = None
    notes: str = ""

    @property
    def ratio(self) -> float | None:
        if self.anchor in (None, 0) or self.project == 0:
            return None
        return self.project / self.anchor if self.higher_is_better else self.anchor / self.project

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ratio"] = self.ratio
        return out


def median_seconds(fn: Callable[[], Any], repeats: int = 3, warmup: int = 1) -> float:
    """Median wall time of `fn` over `repeats` runs after `warmup` unmeasured runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def timings_ms(fn: Callable[[int], Any], repeats: int, warmup: int = 5) -> list[float]:
    """Wall time (ms) of each of `repeats` calls fn(0), fn(1), ... after `warmup` unmeasured calls."""
    for i in range(warmup):
        fn(i)
    times = []
    for i in range(repeats):
        started = time.perf_counter()
        fn(i)
        times.append((time.perf_counter() - started) * 1000.0)
    return times


def p50_p99(times: list[float]) -> tuple[float, float]:
    """The median and the 99th percentile (nearest rank) of `times`."""
    ordered = sorted(times)
    return ordered[len(ordered) // 2], ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]
