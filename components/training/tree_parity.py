"""Parity of a tree program with booster.predict, on ordinary rows AND on edge rows built from the model's own
thresholds (values at and one float32 step either side of each split, NaN, +-0, tiny values, unseen codes): ordinary
rows pass even when the conversion gets missing values or threshold rounding wrong (shared/FACTS.md).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from components.training.trees import KZERO, PARITY_TOLERANCE, Forest, ParityError, lightgbm_matrix, parse_dump, round_down_f32

# ----------------------------------------------------------------------------------------------- parity


def _float32_neighbours(values: np.ndarray) -> np.ndarray:
    v = np.asarray(values, dtype=np.float32)
    with np.errstate(over="ignore"):
        return np.concatenate([v, np.nextafter(v, np.float32(np.inf)), np.nextafter(v, np.float32(-np.inf))])


def _distinct_f32(values: Sequence[float] | np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        v = np.asarray(values, dtype=np.float64).astype(np.float32)
    return v[np.sort(np.unique(v.view(np.uint32), return_index=True)[1])]  # by bits: keeps -0.0 and +0.0 apart


SPECIAL_NUMERICS = np.array(
    [np.nan, 0.0, -0.0, KZERO, -KZERO, 1e-36, -1e-36, 1e-38, -1e-38, 1e-45, -1e-45, 1e-30, -1e-30, np.inf, -np.inf],
    dtype=np.float32,
)
NEAR_ZERO = _float32_neighbours(np.array([KZERO, -KZERO, 0.0, -0.0], dtype=np.float32))
MAX_EDGE_ROWS = 200_000


def _path_base_rows(forest: Forest, base_numeric: np.ndarray, base_codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For every internal node, a row that reaches it: a base row (cycled) with each feature split on above the
    node moved, where needed, into the interval / category set the path demands. An edge value placed on the
    node's own feature then tests THAT node (a row elsewhere in the tree never sees its threshold)."""
    n_base = base_numeric.shape[0]
    thresholds = round_down_f32(forest.num_threshold)
    rows_n = np.empty((forest.n_internal, base_numeric.shape[1]), dtype=np.float32)
    rows_c = np.empty((forest.n_internal, base_codes.shape[1]), dtype=np.int64)
    for tree in range(forest.n_trees):
        root = int(forest.roots[tree])
        if root >= forest.n_internal:
            continue
        stack: list[tuple[int, dict[int, tuple[float, float]], dict[int, tuple[frozenset | None, frozenset]]]] = [(root, {}, {})]
        while stack:
            node, bounds, sets = stack.pop()
            row_n, row_c = base_numeric[node % n_base].copy(), base_codes[node % n_base].copy()
            for f, (lo, hi) in bounds.items():
                v = row_n[f]
                if not (np.isfinite(v) and lo < v <= hi) and lo < hi:
                    with np.errstate(over="ignore"):
                        row_n[f] = hi if np.isfinite(hi) else np.nextafter(np.float32(lo), np.float32(np.inf))
            for g, (allowed, forbidden) in sets.items():
                c = int(row_c[g])
                if c < 0 or c in forbidden or (allowed is not None and c not in allowed):
                    if allowed is not None:
                        choice = sorted(allowed - forbidden)
                        row_c[g] = choice[0] if choice else c
                    else:
                        row_c[g] = next(k for k in range(len(forbidden) + 1) if k not in forbidden)
            rows_n[node], rows_c[node] = row_n, row_c
            for child, goes_left in ((int(forest.left[node]), True), (int(forest.right[node]), False)):
                if child >= forest.n_internal:
                    continue
                if node < forest.n_num_nodes:
                    f, t = int(forest.num_feature[node]), float(thresholds[node])
                    lo, hi = bounds.get(f, (-np.inf, np.inf))
                    new_bounds = {**bounds, f: (lo, min(hi, t)) if goes_left else (max(lo, t), hi)}
                    stack.append((child, new_bounds, sets))
                else:
                    j = node - forest.n_num_nodes
                    g, members = int(forest.cat_feature[j]), frozenset(forest.cat_sets[j])
                    allowed, forbidden = sets.get(g, (None, frozenset()))
                    if goes_left:
                        allowed = members if allowed is None else allowed & members
                    else:
                        forbidden = forbidden | members
                    stack.append((child, bounds, {**sets, g: (allowed, forbidden)}))
    return rows_n, rows_c


def edge_rows(
    forest: Forest,
    base_numeric: np.ndarray,
    base_codes: np.ndarray,
    max_code: int | None = None,
    max_rows: int = MAX_EDGE_ROWS,
) -> tuple[np.ndarray, np.ndarray]:
    """Rows where a wrong conversion routes differently from LightGBM.

    Per split, on a row that reaches it: the threshold rounded down to float32 and as the nearest float32, one
    float32 step either side, NaN (default_left / NaN-as-zero), and where the split is Zero-typed or its threshold
    sits at zero, +-0, +-kZeroThreshold and their neighbours; for a categorical split, members and non-members of
    its set, 0 (unseen), codes past the vocabulary and a negative code. Per feature, on cycled base rows: every
    special value (NaN, +-0, +-1e-35, tiny, subnormal, infinite) and every code up to past the vocabulary.
    Splits are sampled evenly if the rows would exceed max_rows.
    """
    base_numeric = np.asarray(base_numeric, dtype=np.float32)
    base_codes = np.asarray(base_codes, dtype=np.int64)
    n_base = base_numeric.shape[0]
    if n_base == 0:
        raise ValueError("edge rows need at least one base row")
    nums: list[np.ndarray] = []
    cats: list[np.ndarray] = []

    def emit(row_n: np.ndarray, row_c: np.ndarray, column: int, values: np.ndarray, categorical: bool) -> None:
        block_n = np.repeat(row_n[None, :], len(values), axis=0)
        block_c = np.repeat(row_c[None, :], len(values), axis=0)
        if categorical:
            block_c[:, column] = values
        else:
            block_n[:, column] = values
        nums.append(block_n)
        cats.append(block_c)

    top = np.zeros(max(forest.n_categorical, 1), dtype=np.int64)
    for column in range(forest.n_categorical):
        seen = [c for s, f in zip(forest.cat_sets, forest.cat_feature) if f == column for c in s]
        top[column] = max([*seen, int(base_codes[:, column].max()) if base_codes.size else 0, max_code or 0])

    # Per feature, on cycled base rows.
    for column in range(forest.n_numeric):
        values = np.concatenate([SPECIAL_NUMERICS, NEAR_ZERO])
        for i, v in enumerate(_distinct_f32(values)):
            emit(base_numeric[i % n_base], base_codes[i % n_base], column, np.array([v], np.float32), False)
    for column in range(forest.n_categorical):
        t = int(top[column])
        codes = sorted(set(range(t + 3)) | {t + 33, 2**20, 2**31 - 1, -1, -(2**31)})
        for i, c in enumerate(codes):
            emit(base_numeric[i % n_base], base_codes[i % n_base], column, np.array([c], np.int64), True)

    # Per split, on a row that reaches it.
    if forest.n_internal:
        rows_n, rows_c = _path_base_rows(forest, base_numeric, base_codes)
        per_split = 8
        nodes = np.arange(forest.n_internal)
        budget = max(1, (max_rows - sum(len(b) for b in nums)) // per_split)
        if len(nodes) > budget:
            nodes = nodes[np.linspace(0, len(nodes) - 1, budget).astype(np.int64)]
        thresholds = round_down_f32(forest.num_threshold)
        for node in nodes:
            if node < forest.n_num_nodes:
                cut, raw = thresholds[node], forest.num_threshold[node]
                with np.errstate(over="ignore"):
                    nearest = np.float32(raw)
                split_values: list[Any] = [*_float32_neighbours(np.array([cut])), nearest, np.nan]
                if forest.miss_zero[node] or abs(float(cut)) <= 1e-30:
                    split_values.extend(NEAR_ZERO)
                if np.isinf(cut):
                    split_values.extend([np.inf, -np.inf, np.finfo(np.float32).max])
                emit(rows_n[node], rows_c[node], int(forest.num_feature[node]), _distinct_f32(split_values), False)
            else:
                j = node - forest.n_num_nodes
                g, members = int(forest.cat_feature[j]), forest.cat_sets[j]
                outside = next(k for k in range(len(members) + 1) if k not in set(members))
                split_codes = sorted({*members[:1], *members[-1:], outside, 0, int(top[g]) + 1, -1, 2**31 - 1})
                emit(rows_n[node], rows_c[node], g, np.array(split_codes, dtype=np.int64), True)
    if not nums:
        return base_numeric[:0], base_codes[:0]
    return np.concatenate(nums), np.concatenate(cats)


def parity_check(
    booster: Any,
    module: nn.Module,
    numeric: np.ndarray,
    codes: np.ndarray,
    *,
    tolerance: float = PARITY_TOLERANCE,
    max_code: int | None = None,
) -> dict[str, Any]:
    """Max |module - booster.predict| on the given rows and on edge rows from the model's own thresholds.

    Raises ParityError naming the worst row (its values and both predictions) when it exceeds `tolerance`.
    Returns {"max_abs_diff", "given_max_abs_diff", "edge_max_abs_diff", "rows", "edge_rows"}.
    """
    numeric = np.asarray(numeric, dtype=np.float32)
    codes = np.asarray(codes, dtype=np.int64)
    n_numeric, n_categorical = numeric.shape[1], codes.shape[1]
    forest = parse_dump(booster.dump_model(), n_numeric, n_categorical)
    edge_n, edge_c = edge_rows(forest, numeric[:64], codes[:64], max_code=max_code)
    all_n = np.concatenate([numeric, edge_n])
    all_c = np.concatenate([codes, edge_c])
    expected = np.asarray(booster.predict(lightgbm_matrix(all_n, all_c)), dtype=np.float64)
    with torch.no_grad():  # in chunks: GEMM's intermediates grow with rows x trees x leaves
        got = np.concatenate(
            [
                module(torch.from_numpy(all_n[i : i + 2048]), torch.from_numpy(all_c[i : i + 2048])).double().numpy()
                for i in range(0, len(all_n), 2048)
            ]
        )
    if got.shape != expected.shape:
        raise ParityError(f"the program returned shape {got.shape}, booster.predict {expected.shape}")
    diff = np.abs(got - expected)
    diff[np.isnan(diff)] = np.inf  # a NaN probability is the worst mismatch, not a pass
    n_given = numeric.shape[0]
    worst = int(np.argmax(diff))
    report = {
        "max_abs_diff": float(diff.max()) if diff.size else 0.0,
        "given_max_abs_diff": float(diff[:n_given].max()) if n_given else 0.0,
        "edge_max_abs_diff": float(diff[n_given:].max()) if diff.size > n_given else 0.0,
        "rows": n_given,
        "edge_rows": int(edge_n.shape[0]),
    }
    if report["max_abs_diff"] > tolerance:
        kind = "given row" if worst < n_given else "edge row"
        index = worst if worst < n_given else worst - n_given
        raise ParityError(
            f"tree program differs from booster.predict by {diff[worst]:.3g} (> {tolerance:g}) at {kind} {index}: "
            f"numeric={all_n[worst].tolist()} codes={all_c[worst].tolist()} "
            f"program={got[worst]:.9g} booster={expected[worst]:.9g}"
        )
    return report


# ----------------------------------------------------------------------------------------------- timing


def time_program(module: nn.Module, numeric: torch.Tensor, codes: torch.Tensor, repeats: int = 50) -> dict[str, float]:
    """p50/p99 milliseconds per call (after warm-up)."""
    times = []
    with torch.no_grad():
        for _ in range(3):
            module(numeric, codes)
        for _ in range(repeats):
            start = time.perf_counter()
            module(numeric, codes)
            times.append((time.perf_counter() - start) * 1000.0)
    times.sort()
    return {"p50_ms": times[len(times) // 2], "p99_ms": times[min(len(times) - 1, math.ceil(0.99 * len(times)) - 1)]}
