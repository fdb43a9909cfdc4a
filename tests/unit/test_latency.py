"""The gate's latency verdict does not depend on a CPU-bound neighbour (components/evaluation/latency.py)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from components.evaluation.latency import per_row_latency_ms

SPIN = "import time\nend = time.time() + {seconds}\nwhile time.time() < end:\n    pass\n"


class Mlp:
    """A model the size of the demo's network, scored one row at a time as the gate does."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(20, 128), torch.nn.ReLU(), torch.nn.Linear(128, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1)
        ).eval()

    def predict_proba(self, columns):
        x = torch.tensor(np.asarray([columns[f"f{j}"] for j in range(20)], dtype=np.float32).T)
        with torch.inference_mode():
            return torch.sigmoid(self.net(x)).squeeze(1).numpy()


@pytest.fixture()
def columns():
    rng = np.random.default_rng(0)
    return {f"f{j}": rng.normal(size=200).tolist() for j in range(20)}


def test_busy_neighbour_does_not_flip_the_verdict(columns):
    model = Mlp()
    quiet = per_row_latency_ms(model, columns)
    budget = 2.0 * quiet["p99_ms"]  # a model that passes with a 2x margin on a quiet machine
    neighbour = subprocess.Popen([sys.executable, "-c", SPIN.format(seconds=60)])
    try:
        busy = per_row_latency_ms(model, columns)
    finally:
        neighbour.kill()
        neighbour.wait(timeout=10)
    assert (quiet["p99_ms"] <= budget) == (busy["p99_ms"] <= budget), (quiet, busy, budget)
    assert busy["threads"] == quiet["threads"] >= 1


def test_thread_count_is_restored_and_bad_arguments_are_named(columns):
    before = torch.get_num_threads()
    out = per_row_latency_ms(Mlp(), columns, rows=20, repetitions=2, threads=1)
    assert out["threads"] == 1 and torch.get_num_threads() == before
    with pytest.raises(ValueError, match="no rows to time"):
        per_row_latency_ms(Mlp(), {k: [] for k in columns})
    with pytest.raises(ValueError, match="repetitions must be at least 1"):
        per_row_latency_ms(Mlp(), columns, repetitions=0)
