"""Explanations: latency of one row's attributions, 20 features (16 numeric, 4 categorical), on one core.

Project: components/core/explain.py as the model server runs it: a bundle trained and sealed here (the network
family, its recorded 100-row background), the server's scorer (traced program), encode + 200 antithetic walks,
one thread. Goal: p99 <= 20 ms for one row. A 200-tree LightGBM program (the tree family) over the same rows
and background is timed too (its own figure: trees cost far more per program row).
Anchor, in the same run when shap is importable (it is not a dependency: pip install shap==0.51.0 to see it):
shap.explainers.Permutation with an Independent masker over the same background and program, default max_evals.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks.harness import Figure, p50_p99, timings_ms

NAME = "explain"
GOAL_MS = 20.0
N_NUMERIC, N_CATEGORICAL = 16, 4


def _frame(rows: int, seed: int) -> Any:
    import pandas as pd

    rng = np.random.default_rng(seed)
    numeric = rng.normal(size=(rows, N_NUMERIC))
    numeric[rng.random(numeric.shape) < 0.03] = np.nan
    cats = rng.integers(0, 12, size=(rows, N_CATEGORICAL))
    logit = 1.5 * np.nan_to_num(numeric[:, 0]) - np.nan_to_num(numeric[:, 1]) * np.nan_to_num(numeric[:, 2]) + (cats[:, 0] % 3 == 0) - 1.0
    label = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype("int8")
    columns = {f"n{j}": numeric[:, j] for j in range(N_NUMERIC)} | {f"c{j}": [f"v{v}" for v in cats[:, j]] for j in range(N_CATEGORICAL)}
    return pd.DataFrame({"event_timestamp": pd.date_range("2026-01-01", periods=rows, freq="min", tz="UTC"), **columns, "label": label})


def _shap_anchor(
    predict: Callable[[np.ndarray, np.ndarray], np.ndarray],
    background: tuple[np.ndarray, np.ndarray],
    rows: tuple[np.ndarray, np.ndarray],
    n: int,
) -> tuple[float | None, str]:
    try:
        import shap  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return None, "shap.explainers.Permutation (not installed, not measured)"
    width = background[0].shape[1]

    def joined(x: np.ndarray) -> np.ndarray:
        return predict(np.ascontiguousarray(x[:, :width], dtype=np.float32), np.ascontiguousarray(x[:, width:], dtype=np.int64))

    matrix = np.hstack([background[0].astype(np.float64), background[1].astype(np.float64)])
    explainer = shap.explainers.Permutation(joined, shap.maskers.Independent(matrix, max_samples=len(matrix)))
    rows_matrix = np.hstack([rows[0].astype(np.float64), rows[1].astype(np.float64)])
    times = timings_ms(lambda i: explainer(rows_matrix[i : i + 1], silent=True), n)
    return p50_p99(times)[1], f"shap {shap.__version__} Permutation, Independent masker, max_evals 500 (p99)"


def run(quick: bool) -> list[Figure]:
    import torch

    from components.core import bundle as bundle_lib
    from components.core import explain
    from components.training import tree_programs, trees
    from components.training.train import TrainParams, build_bundle, train_model
    from serving.scoring import Scorer

    torch.set_num_threads(1)
    numeric = [f"n{j}" for j in range(N_NUMERIC)]
    categorical = [f"c{j}" for j in range(N_CATEGORICAL)]
    train = _frame(3000 if quick else 6000, 0)
    test = _frame(400, 1)
    program, vocab, result = train_model(train, numeric, categorical, TrainParams(epochs=2 if quick else 6, seed=1))
    n_rows = 50 if quick else 400
    figures = []
    with tempfile.TemporaryDirectory() as tmp:
        build_bundle(tmp, program, vocab, result, train, numeric, categorical, {"dataset": "bench"}, "# bench\n")
        bundle = bundle_lib.load(tmp)
        scorer = Scorer(bundle)
        scorer.prepare()
        predict = explain.program_predict(scorer.program)
        explainer = explain.bundle_explainer(bundle, predict, budget_s=explain.EXPLAIN_BUDGET_S)  # as the server builds it
        columns = bundle_lib.columns_from_frame(test, numeric + categorical)
        singles = [{k: [v[i]] for k, v in columns.items()} for i in range(n_rows)]
        errors: list[float] = []

        def explain_one(i: int) -> None:
            num, cod = scorer.encode(singles[i], 1)
            errors.append(explainer.explain(num.numpy(), cod.numpy()).additivity_error())

        p50, p99 = p50_p99(timings_ms(explain_one, n_rows))
        enc_num, enc_cod = bundle.encode(columns)
        rows = (enc_num.numpy(), enc_cod.numpy())
        background = bundle.encode(bundle.background or {})
        anchor, anchor_name = _shap_anchor(predict, (background[0].numpy(), background[1].numpy()), rows, 20 if quick else 100)
        figures.append(
            Figure(
                benchmark=NAME,
                figure="explain one row, 20 features, network family, p99 (ms, 1 thread)",
                project=p99,
                anchor=anchor,
                anchor_name=anchor_name,
                higher_is_better=False,
                goal=f"<= {GOAL_MS:g} ms",
                met=p99 <= GOAL_MS,
                notes=(
                    f"p50 {p50:.3g} ms over {n_rows} rows; {explainer.walks} walks x 19 composite rows; scorer {scorer.mode}; "
                    f"max additivity error {max(errors):.2g} (tolerance {explain.ADDITIVITY_TOLERANCE:g})"
                ),
            )
        )

    train_num, train_cod = bundle.encode(bundle_lib.columns_from_frame(train, numeric + categorical))
    labels = train["label"].to_numpy()
    cut = int(len(labels) * 0.8)
    tree_rounds = 50 if quick else 200
    fitted = trees.train_lightgbm(
        train_num.numpy()[:cut],
        train_cod.numpy()[:cut],
        labels[:cut],
        train_num.numpy()[cut:],
        train_cod.numpy()[cut:],
        labels[cut:],
        num_threads=1,
        num_boost_round=tree_rounds,
        early_stopping_rounds=tree_rounds,
        params={"learning_rate": 0.02},
    )
    tree_program = tree_programs.to_program(fitted.booster, N_NUMERIC, N_CATEGORICAL)
    # As the server builds it (components/core/explain.py bundle_explainer with its budget): a program too slow to
    # walk the whole background within the budget walks an evenly spaced part of it.
    tree_predict = explain.program_predict(tree_program)
    bg = (background[0].numpy(), background[1].numpy())
    per_row = explain.program_seconds_per_row(tree_predict, *bg)
    used = explain.background_rows_for(per_row, len(numeric) + len(categorical), len(bg[0]))
    tree_explainer = explain.Explainer(tree_predict, bg, numeric, categorical, background_rows=used)
    tree_rows = 20 if quick else 100
    t50, t99 = p50_p99(timings_ms(lambda i: tree_explainer.explain(rows[0][i : i + 1], rows[1][i : i + 1]), tree_rows))
    figures.append(
        Figure(
            benchmark=NAME,
            figure=f"explain one row, 20 features, tree family ({fitted.booster.num_trees()} trees), p99 (ms, 1 thread)",
            project=t99,
            anchor=None,
            anchor_name="",
            higher_is_better=False,
            goal=f"<= {GOAL_MS:g} ms",
            met=t99 <= GOAL_MS,
            notes=(
                f"p50 {t50:.3g} ms over {tree_rows} rows; {tree_explainer.background_rows} of {len(bg[0])} background rows "
                f"within the server's {explain.EXPLAIN_BUDGET_S * 1000:g} ms program budget ({per_row * 1e6:.1f} us a program row); "
                f"eager tree program"
            ),
        )
    )
    return figures
