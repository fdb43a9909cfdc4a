"""Per-row scoring latency that a busy neighbour cannot flip: the gate's latency verdict.

Method (README, "The gate"). A model's own cost per row is what the gate judges; everything else running on the
machine can only ADD time to a timing (preemption, a spinning OpenMP worker waiting for a descheduled one), never
remove it. So:
- torch's intra-op pool is sized to this process's CPU budget first (components/core/threads.py: the cgroup quota
  and affinity, the thread count the model server uses too), not to the node's core count: with one core busy,
  more threads than free cores made torch 85x slower (shared/FACTS.md, "CPU threads");
- every row is scored `repetitions` times, in interleaved passes over the rows (a burst of load hits one pass,
  not every timing of a row), and a row's latency is the BEST (minimum) of its timings;
- p50/p99 are taken over those per-row minima.
The minimum over passes estimates the uncontended cost of a row; the p99 over rows still shows rows that are
really slower (wide categories, a deeper tree path), since every timing of such a row is slow. Measured on a
shared 2-core machine (other jobs running) with a 20-128-64-1 MLP, three runs each: a single pass p99 0.48-20.4 ms,
and 10.3-22.5 ms with a process spinning one core; best of 5, 0.043-0.055 ms quiet and 0.050-0.051 ms with the
spinning neighbour (tests/unit/test_latency.py runs the verdict both ways).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

REPETITIONS = 5


def per_row_latency_ms(
    model: Any, columns: Mapping[str, Sequence[Any]], rows: int = 200, repetitions: int = REPETITIONS, threads: int | None = None
) -> dict[str, float]:
    """p50/p99 ms of scoring one row at a time (`model.predict_proba(columns)`), each row's best of `repetitions`.

    `threads`: torch's intra-op threads while timing (default: the CPU budget, as the server runs); restored after.
    """
    import torch

    from components.core.threads import cpu_budget

    n = min(rows, len(next(iter(columns.values()))))
    if n == 0:
        raise ValueError("no rows to time")
    if repetitions < 1:
        raise ValueError(f"repetitions must be at least 1, got {repetitions}")
    singles = [{k: [v[i]] for k, v in columns.items()} for i in range(n)]
    saved = torch.get_num_threads()
    used = max(1, int(threads if threads is not None else cpu_budget()))
    torch.set_num_threads(used)
    try:
        for row in singles[:10]:  # warm-up
            model.predict_proba(row)
        best = np.full(n, np.inf)
        for _ in range(repetitions):
            for i, row in enumerate(singles):
                start = time.perf_counter()
                model.predict_proba(row)
                best[i] = min(best[i], (time.perf_counter() - start) * 1000.0)
    finally:
        torch.set_num_threads(saved)
    return {
        "p50_ms": float(np.percentile(best, 50)),
        "p99_ms": float(np.percentile(best, 99)),
        "repetitions": float(repetitions),
        "threads": float(used),
    }
