"""LightGBM as a torch program: latency per call at batch 1 and 1,000 rows (300 trees, 31 leaves; quick: 60 trees).

Project: components/training/trees.py (+ tree_programs.py, tree_parity.py), the exported program the bundle would hold (torch.export, saved and loaded
back), strategy chosen by to_program("auto"); the GEMM-only and traversal-only programs are timed too (notes).
Anchor, in the same run on the same rows: the booster's own `predict` (LightGBM's C++ predictor), which a bundle
cannot hold. Threads: cpu_budget() for both. The model has NaNs and categorical splits.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from benchmarks.harness import Figure, p50_p99, timings_ms

NAME = "trees"


def _data(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    numeric = rng.normal(size=(rows, 8)).astype(np.float32)
    numeric[rng.random(numeric.shape) < 0.1] = np.nan
    codes = rng.integers(0, 31, size=(rows, 3))
    logit = (
        1.2 * np.nan_to_num(numeric[:, 0])
        - np.nan_to_num(numeric[:, 1]) ** 2
        + 1.5 * np.isin(codes[:, 0], [2, 5, 7, 11, 13])
        + (codes[:, 1] % 3 == 0)
        + 0.3 * np.isnan(numeric[:, 2])
    )
    labels = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    return numeric, codes, labels


def run(quick: bool) -> list[Figure]:
    import torch

    from components.core import threads
    from components.training import tree_parity, tree_programs, trees

    n_threads = threads.apply_torch_threads()
    rounds = 60 if quick else 300
    train = _data(5_000 if quick else 20_000, 0)
    valid = _data(2_000, 1)
    result = trees.train_lightgbm(
        *train,
        *valid,
        num_threads=n_threads,
        num_boost_round=rounds,
        early_stopping_rounds=rounds,
        params={"learning_rate": 0.01},  # slow learning: every round improves, the model keeps all its trees
    )
    booster = result.booster
    programs = {s: tree_programs.to_program(booster, 8, 3, s) for s in ("auto", "gemm", "traverse")}
    parity = tree_parity.parity_check(booster, programs["auto"], valid[0][:500], valid[1][:500])

    batch = torch.export.Dim("batch", min=1, max=1_000_000)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.pt2"
        example = (torch.from_numpy(valid[0][:8]), torch.from_numpy(valid[1][:8]))
        exported = torch.export.export(programs["auto"], example, dynamic_shapes={"numeric": {0: batch}, "codes": {0: batch}})
        torch.export.save(exported, str(path))
        served = torch.export.load(str(path)).module()

    figures = []
    for rows in (1, 1000):
        numeric, codes = torch.from_numpy(valid[0][:rows]), torch.from_numpy(valid[1][:rows])
        matrix = trees.lightgbm_matrix(valid[0][:rows], valid[1][:rows])
        repeats = (100 if quick else 300) if rows == 1 else (5 if quick else 30)
        with torch.no_grad():
            p50, p99 = p50_p99(timings_ms(lambda _, n=numeric, c=codes: served(n, c), repeats, warmup=1))
            notes = []
            for name in ("gemm", "traverse"):
                s50, s99 = p50_p99(timings_ms(lambda _, m=programs[name], n=numeric, c=codes: m(n, c), repeats, warmup=1))
                notes.append(f"{name} (eager) p50 {s50:.3g} ms p99 {s99:.3g} ms")
        n50, n99 = p50_p99(timings_ms(lambda _, x=matrix: booster.predict(x, num_threads=n_threads), repeats, warmup=1))
        goal_ms = 1.0 if rows == 1 else 3.0 * n50
        figures.append(
            Figure(
                benchmark=NAME,
                figure=f"tree program p50 latency, batch {rows} (ms)",
                project=p50,
                anchor=n50,
                anchor_name="LightGBM booster.predict",
                higher_is_better=False,
                goal="<= 1 ms" if rows == 1 else "<= 3x native predict",
                met=p50 <= goal_ms and parity["max_abs_diff"] <= trees.PARITY_TOLERANCE,
                notes=(
                    f"{booster.num_trees()} trees, {n_threads} threads, strategy {programs['auto'].strategy}; "
                    f"exported p99 {p99:.3g} ms, native p99 {n99:.3g} ms; "
                    + "; ".join(notes)
                    + f"; parity max |diff| {parity['max_abs_diff']:.2g} over {parity['edge_rows']} edge rows"
                ),
            )
        )
    return figures
