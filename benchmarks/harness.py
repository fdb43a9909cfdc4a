"""What every benchmark returns and how the results are written.

A benchmark module in this folder defines `run(quick: bool) -> list[Figure]`. Each Figure holds this
project's number beside its anchor measured in the same run on the same data, so the ratio means
something on a shared, noisy machine. Timings are medians of repeats. Tests never assert on time;
`make bench` reports.
"""

from __future__ import annotations

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
