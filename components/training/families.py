"""The model families a training run can try besides the network, each sealed in the same bundle contract.

Every family trains on the same time-ordered split as the network (components/training/train.py:split_validation:
fit rows, the validation period for early stopping, its latest part for calibration), is turned into one torch
program (raw numeric values + category codes in, probability out, imputation inside), and is calibrated and given its
decision threshold by the same `calibrate_into`. The server, evaluation, canary and monitor never learn which family
they hold: the family is recorded in the bundle's lineage only.

- lightgbm: gradient-boosted trees (components/training/trees.py), rewritten as a tensor program and checked against
  LightGBM's own predictions on the validation rows AND on edge rows built from its thresholds before it is sealed;
- logistic: a logistic regression on the network's preprocessing (model.LogisticProgram), the cheap model that wins
  when the others are not clearly better.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import pandas as pd

from components.core.spec import EVENT_TIMESTAMP
from components.training.train import (
    TrainParams,
    TrainResult,
    calibrate_into,
    split_validation,
    tensors,
    threshold_objective,
    vocabularies,
)

log = logging.getLogger(__name__)


class CandidateRefused(RuntimeError):
    """A family could not produce a sealed program (training failed, or the program does not match the library)."""


def _roc_auc(y: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else float("nan")


def _split(
    train: pd.DataFrame, categorical: list[str], params: TrainParams
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict[str, list[str]]]:
    ordered = train.sort_values(EVENT_TIMESTAMP, kind="stable").reset_index(drop=True)
    fit_df, val_df, calib_df = split_validation(ordered, params)
    return fit_df, val_df, calib_df, vocabularies(fit_df, categorical, params.max_vocabulary)


def train_lightgbm_family(
    train: pd.DataFrame, numeric: list[str], categorical: list[str], params: TrainParams, num_threads: int
) -> tuple[Any, dict[str, list[str]], TrainResult, dict[str, Any]]:
    """LightGBM on the bundle's inputs -> (calibrated tree program, vocabularies, result, parity report)."""
    from components.training.tree_parity import parity_check
    from components.training.tree_programs import to_program
    from components.training.trees import ParityError, lightgbm_matrix, train_lightgbm

    objective = threshold_objective(params.threshold_objective)
    fit_df, val_df, calib_df, vocab = _split(train, categorical, params)
    xn, xc, y = (t.numpy() for t in tensors(fit_df, numeric, categorical, vocab, "cpu"))
    vn, vc, vy = (t.numpy() for t in tensors(val_df, numeric, categorical, vocab, "cpu"))
    started = time.perf_counter()
    trained = train_lightgbm(xn, xc, y, vn, vc, vy, num_threads=num_threads, seed=params.seed)
    seconds = time.perf_counter() - started
    program = to_program(trained.booster, xn.shape[1], xc.shape[1])
    largest_code = max([len(v) for v in vocab.values()] or [0])
    try:
        parity = parity_check(trained.booster, program, vn, vc, max_code=largest_code)
    except ParityError as err:
        raise CandidateRefused(f"lightgbm: the tree program does not match LightGBM: {err}") from None
    val_p = np.asarray(trained.booster.predict(lightgbm_matrix(vn, vc)), dtype=np.float64)
    result = TrainResult(
        history=[{"epoch": i + 1, "val_logloss": v} for i, v in enumerate(trained.history.get("binary_logloss", []))],
        best_epoch=int(trained.best_iteration),
        validation_auc=_roc_auc(vy, val_p),
        samples_per_second=len(fit_df) * max(len(trained.history.get("binary_logloss", [])), 1) / max(seconds, 1e-9),
    )
    program = calibrate_into(program, calib_df, numeric, categorical, vocab, objective, result)
    extra = {
        "trees": int(trained.best_iteration),
        "parity_max_abs_diff": parity["max_abs_diff"],
        "parity_edge_rows": parity["edge_rows"],
        "parity_rows": parity["rows"],
        "program": type(program.program).__name__ if hasattr(program, "program") else type(program).__name__,
    }
    log.info(
        "lightgbm: %d trees in %.1fs, validation ROC-AUC %.4f, program matches LightGBM to %.2g on %d rows + %d edge rows",
        trained.best_iteration,
        seconds,
        result.validation_auc,
        parity["max_abs_diff"],
        parity["rows"],
        parity["edge_rows"],
    )
    return program, vocab, result, extra


def train_logistic_family(
    train: pd.DataFrame, numeric: list[str], categorical: list[str], params: TrainParams
) -> tuple[Any, dict[str, list[str]], TrainResult, dict[str, Any]]:
    """A logistic regression (scikit-learn's fit, C=1) -> (calibrated LogisticProgram, vocabularies, result, details)."""
    import torch
    from sklearn.linear_model import LogisticRegression

    from components.training.model import LogisticProgram, TabularNet

    objective = threshold_objective(params.threshold_objective)
    fit_df, val_df, calib_df, vocab = _split(train, categorical, params)
    xn, xc, y = tensors(fit_df, numeric, categorical, vocab, "cpu")
    started = time.perf_counter()
    if numeric:
        transformed = TabularNet.transform(xn)
        means = torch.nan_to_num(torch.nanmean(transformed, dim=0))
        stds = torch.nan_to_num(torch.tensor(np.nanstd(transformed.numpy(), axis=0)), nan=1.0)
    else:
        means = stds = torch.zeros(0)
    empty = LogisticProgram(means, stds, torch.zeros(len(means)), [torch.zeros(len(vocab[c]) + 1) for c in categorical], 0.0)

    def design(n: torch.Tensor, c: torch.Tensor) -> np.ndarray:
        parts = [empty.standardize(n).numpy().astype(np.float64)] if numeric else []
        for j, name in enumerate(categorical):
            onehot = np.zeros((len(c), len(vocab[name]) + 1))
            onehot[np.arange(len(c)), c[:, j].numpy()] = 1.0
            parts.append(onehot)
        return np.hstack(parts) if parts else np.zeros((len(c), 1))

    model = LogisticRegression(max_iter=2000, C=1.0)
    model.fit(design(xn, xc), y.numpy().astype(int))
    seconds = time.perf_counter() - started
    weights = model.coef_[0]
    at = len(numeric)
    tables = []
    for name in categorical:
        tables.append(torch.tensor(weights[at : at + len(vocab[name]) + 1]))
        at += len(vocab[name]) + 1
    numeric_weights = torch.tensor(weights[: len(numeric)]) if numeric else torch.zeros(0)
    program = LogisticProgram(means, stds, numeric_weights, tables, float(model.intercept_[0])).eval()
    vn, vc, vy = tensors(val_df, numeric, categorical, vocab, "cpu")
    with torch.inference_mode():
        val_p = program(vn, vc).numpy().astype(np.float64)
    # The program must be the fitted model: the same probabilities as scikit-learn's on the validation rows.
    native = model.predict_proba(design(vn, vc))[:, 1]
    worst = float(np.max(np.abs(native - val_p))) if len(val_p) else 0.0
    if not worst <= 1e-5:
        raise CandidateRefused(f"logistic: the program differs from scikit-learn's predictions by {worst:.3g} (> 1e-05)")
    result = TrainResult(
        history=[{"epoch": 1, "iterations": float(model.n_iter_[0])}],
        best_epoch=1,
        validation_auc=_roc_auc(vy.numpy(), val_p),
        samples_per_second=len(fit_df) / max(seconds, 1e-9),
    )
    program = calibrate_into(program, calib_df, numeric, categorical, vocab, objective, result)
    log.info("logistic: fitted in %.2fs, validation ROC-AUC %.4f", seconds, result.validation_auc)
    return program, vocab, result, {"iterations": int(model.n_iter_[0]), "native_max_abs_diff": worst}
