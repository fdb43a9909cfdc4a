"""Per-feature attributions of a bundle's score: interventional Shapley values against a background sample.

One model-agnostic method for every model family: the bundle is one program (raw numeric values + category codes
in, probability out), so the attributions only ever call that program. For a row x and the bundle's background
sample Z (rows recorded at training time, components.core.bundle.BACKGROUND), feature j's attribution estimates
its Shapley value for the game v(S) = mean over z in Z of f(x_S, z_not S): "how much does knowing x_j move the
score away from a typical training row".

Estimator (permutation sampling, Strumbelj & Kononenko 2014, with antithetic permutations): each background row
z is paired with a random feature order and with that order reversed. Walking an order from z to x, switching
one feature at a time from z's value to x's, gives every feature one marginal contribution; a feature's
attribution is the mean of its contributions over all 2 * passes * |Z| walks. Each walk's contributions add up
to f(x) - f(z), and every background row starts the same number of walks, so a row's attributions add up to
f(x) - mean f(Z) (the base value) exactly, up to float64 rounding: additivity holds by construction, not on
average. A feature the program ignores contributes exactly 0 in every walk; for a linear score every walk gives
w_j (x_j - z_j), so the estimate is the exact Shapley value. Reversed orders (antithetic) cancel most of the
order noise for features that interact. The orders come from a fixed seed: the same row gets the same answer.

Why not shap (measured on this machine, a 20-feature MLP, one core, 100 background rows, shap 0.51.0):
shap.explainers.Permutation with an Independent masker is exactly additive too, but one row took 23 ms median
(50 ms worst of 10) at its default max_evals=500, over the 20 ms p99 goal before any server work, and still
10 ms median at max_evals=123, which is only 3 feature orders (each averaged over the whole background). This
estimator spends fewer program rows (shap's 500 evaluations x 100 background rows = 50,000; here 200 orders x
(F - 1) = 3,800 for 20 features) over far more orders, in one vectorised call per request,
f(background) computed once per bundle, no per-call masking in Python (benchmarks/bench_explain.py has the
figures, same program and background, one thread: this estimator p50 2.4 ms / p99 8.2 ms per row, shap's
Permutation at its defaults p99 80 ms); and shap would pull numba + llvmlite into the serving image for one
function. Cost grows with the program's: a 200-tree LightGBM program takes ~55 ms a row over the whole background
(3,800 program rows at ~14 us), so the server walks a budgeted part of it (bundle_explainer).

Everything here is pure: numpy in, numpy out; torch only inside `program_predict`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from components.core.bundle import Bundle

# (numeric float32 [m, n_numeric or 1], codes int64 [m, n_categorical or 1]) -> probabilities [m]
PredictFn = Callable[[np.ndarray, np.ndarray], np.ndarray]

# sum(attributions) = score - base_value to this absolute error (float64 rounding of a telescoping sum of float32
# program outputs; the estimator itself is exact). Stated in the README and checked by the tests.
ADDITIVITY_TOLERANCE = 1e-6
DEFAULT_PASSES = 1  # walks = 2 * passes * background rows (200 for the recorded 100 rows)
SEED = 20
MAX_PROGRAM_ROWS = 16_384  # composite rows per program call: bounds memory for wide models and tree programs
EXPLAIN_BUDGET_S = 0.010  # the model server's program time per explained row (the goal: p99 <= 20 ms a row)
MIN_BACKGROUND_ROWS = 10  # a slow program still walks from this many background rows (20 walks per feature)
GLOBAL_MAX_ROWS = 500  # rows global_importance explains at most (evenly spaced): ~8 s for 20 features, 2 cores


class ExplainError(ValueError):
    """The rows or the background do not fit the model (a one-line reason)."""


@dataclass(frozen=True)
class Explanation:
    features: list[str]  # attribution columns: the bundle's numeric features, then its categorical ones
    attributions: np.ndarray  # float64 [n, len(features)]
    scores: np.ndarray  # float64 [n]: f(row), as the same program computed it
    base_value: float  # mean f(background): what the attributions of every row are measured from
    background_rows: int = 0  # background rows walked from (all recorded ones, or a server's budgeted part)
    walks: int = 0  # feature orders per row (2 per background row)

    def additivity_error(self) -> float:
        """max |sum(attributions) - (score - base_value)| over rows: within ADDITIVITY_TOLERANCE by construction."""
        if len(self.scores) == 0:
            return 0.0
        return float(np.max(np.abs(self.attributions.sum(axis=1) - (self.scores - self.base_value))))


def _orders(n_features: int, n_background: int, passes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Each walk's rank of every feature [walks, F] and its background row [walks]: forward orders, then reversed."""
    rng = np.random.default_rng(seed)
    forward = np.argsort(np.argsort(rng.random((passes * n_background, n_features)), axis=1), axis=1)
    ranks = np.concatenate([forward, n_features - 1 - forward])
    background_rows = np.tile(np.arange(n_background), 2 * passes)
    return ranks, background_rows


def _chunked(predict: PredictFn, numeric: np.ndarray, codes: np.ndarray) -> np.ndarray:
    n = len(numeric)
    if n <= MAX_PROGRAM_ROWS:
        return np.asarray(predict(numeric, codes), dtype=np.float64).reshape(n)
    parts = [predict(numeric[i : i + MAX_PROGRAM_ROWS], codes[i : i + MAX_PROGRAM_ROWS]) for i in range(0, n, MAX_PROGRAM_ROWS)]
    return np.concatenate([np.asarray(p, dtype=np.float64).reshape(-1) for p in parts])


class Explainer:
    """Attributions for one program and one background sample; f(background) is computed once, here."""

    def __init__(
        self,
        predict: PredictFn,
        background: tuple[np.ndarray, np.ndarray],
        numeric: Sequence[str],
        categorical: Sequence[str],
        passes: int = DEFAULT_PASSES,
        seed: int = SEED,
        background_rows: int | None = None,
    ) -> None:
        bg_numeric, bg_codes = (np.asarray(a) for a in background)
        if len(bg_numeric) == 0 or len(bg_numeric) != len(bg_codes):
            raise ExplainError(
                f"the background sample must have rows, and as many numeric as code rows ({len(bg_numeric)}, {len(bg_codes)})"
            )
        if background_rows is not None and 0 < background_rows < len(bg_numeric):
            # evenly spaced over the recorded sample (deterministic): the base value is this subset's mean score
            keep = np.unique(np.linspace(0, len(bg_numeric) - 1, background_rows).round().astype(int))
            bg_numeric, bg_codes = bg_numeric[keep], bg_codes[keep]
        if passes < 1:
            raise ExplainError(f"passes must be >= 1, got {passes}")
        self.predict = predict
        self.numeric, self.categorical = list(numeric), list(categorical)
        self.features = self.numeric + self.categorical
        self._bg_numeric = np.ascontiguousarray(bg_numeric, dtype=np.float32)
        self._bg_codes = np.ascontiguousarray(bg_codes, dtype=np.int64)
        self.background_scores = _chunked(predict, self._bg_numeric, self._bg_codes)
        self.base_value = float(self.background_scores.mean())
        self._ranks, self._walk_rows = _orders(len(self.features), len(bg_numeric), passes, seed)
        f = len(self.features)
        # masks[w, k-1, j]: in walk w, after k switches (k = 1..F-1), feature j already holds the row's value
        self._masks = self._ranks[:, None, :] < np.arange(1, f)[None, :, None]

    @property
    def walks(self) -> int:
        return len(self._ranks)

    @property
    def background_rows(self) -> int:
        return len(self._bg_numeric)

    def explain(self, numeric: np.ndarray, codes: np.ndarray) -> Explanation:
        """Encoded rows (as Bundle.encode makes them) -> attributions [n, F], scores, base value."""
        numeric = np.ascontiguousarray(numeric, dtype=np.float32)
        codes = np.ascontiguousarray(codes, dtype=np.int64)
        n, f = len(numeric), len(self.features)
        if len(codes) != n or numeric.shape[1:] != self._bg_numeric.shape[1:] or codes.shape[1:] != self._bg_codes.shape[1:]:
            raise ExplainError(
                f"rows of shape {numeric.shape}/{codes.shape} do not fit the background's {self._bg_numeric.shape}/{self._bg_codes.shape}"
            )
        out = np.zeros((n, f), dtype=np.float64)
        if n == 0:
            return Explanation(self.features, out, np.zeros(0), self.base_value, self.background_rows, self.walks)
        scores = _chunked(self.predict, numeric, codes)
        walks = self.walks
        per_row = walks * (f - 1)
        rows_per_group = max(1, MAX_PROGRAM_ROWS // max(per_row, 1))
        start_values = self.background_scores[self._walk_rows]  # f(z) where each walk starts
        for lo in range(0, n, rows_per_group):
            hi = min(n, lo + rows_per_group)
            values = np.empty((hi - lo, walks, f + 1), dtype=np.float64)
            values[:, :, 0] = start_values
            values[:, :, f] = scores[lo:hi, None]
            if f > 1:
                values[:, :, 1:f] = self._composites(numeric[lo:hi], codes[lo:hi]).reshape(hi - lo, walks, f - 1)
            # feature j's contribution in a walk: the value after its switch minus the value before it
            ranks = np.broadcast_to(self._ranks, (hi - lo, walks, f))
            after = np.take_along_axis(values, ranks + 1, axis=2)
            before = np.take_along_axis(values, ranks, axis=2)
            out[lo:hi] = (after - before).mean(axis=1)
        return Explanation(self.features, out, scores, self.base_value, self.background_rows, self.walks)

    def _composites(self, numeric: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """f at every intermediate step of every walk, for each row: [rows * walks * (F-1)]."""
        n_num, n_cat = len(self.numeric), len(self.categorical)
        masks = self._masks[None]  # [1, walks, F-1, F]
        start_numeric = self._bg_numeric[self._walk_rows][None, :, None, :]
        start_codes = self._bg_codes[self._walk_rows][None, :, None, :]
        shape = (len(numeric), self.walks, masks.shape[2])
        if n_num:
            mixed_numeric = np.where(masks[..., :n_num], numeric[:, None, None, :n_num], start_numeric[..., :n_num])
        else:  # the program's placeholder column (no numeric feature): nothing to switch
            mixed_numeric = np.broadcast_to(start_numeric, (*shape, self._bg_numeric.shape[1]))
        if n_cat:
            mixed_codes = np.where(masks[..., n_num:], codes[:, None, None, :n_cat], start_codes[..., :n_cat])
        else:
            mixed_codes = np.broadcast_to(start_codes, (*shape, self._bg_codes.shape[1]))
        flat_numeric = np.ascontiguousarray(mixed_numeric, dtype=np.float32).reshape(-1, self._bg_numeric.shape[1])
        flat_codes = np.ascontiguousarray(mixed_codes, dtype=np.int64).reshape(-1, self._bg_codes.shape[1])
        return _chunked(self.predict, flat_numeric, flat_codes)


def program_predict(program: Any) -> PredictFn:
    """A bundle's torch program (exported, or the server's traced copy) as a numpy predict function."""
    import torch

    def predict(numeric: np.ndarray, codes: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return program(torch.from_numpy(numeric), torch.from_numpy(codes)).numpy().astype(np.float64)

    return predict


def program_seconds_per_row(predict: PredictFn, numeric: np.ndarray, codes: np.ndarray, rows: int = 2048) -> float:
    """The program's time per row on a batch of `rows` (the given rows cycled), best of 3: other load only adds time."""
    take = np.arange(rows) % len(numeric)
    batch_n, batch_c = np.ascontiguousarray(numeric[take], dtype=np.float32), np.ascontiguousarray(codes[take], dtype=np.int64)
    predict(batch_n[:8], batch_c[:8])  # first calls are slow
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        predict(batch_n, batch_c)
        best = min(best, time.perf_counter() - started)
    return best / rows


def background_rows_for(per_row_s: float, n_features: int, n_background: int, budget_s: float = EXPLAIN_BUDGET_S) -> int:
    """How many background rows one explained row can afford: each costs 2 walks x (F - 1) program rows
    (DEFAULT_PASSES), within `budget_s` of program time; at least MIN_BACKGROUND_ROWS, at most all of them."""
    per_background_row = 2 * DEFAULT_PASSES * max(n_features - 1, 1) * max(per_row_s, 1e-9)
    return max(min(int(budget_s / per_background_row), n_background), min(MIN_BACKGROUND_ROWS, n_background))


def bundle_explainer(
    bundle: Bundle, predict: PredictFn | None = None, passes: int = DEFAULT_PASSES, budget_s: float | None = None
) -> Explainer:
    """The explainer of a bundle over its recorded background; raises bundle.NoBackground for an older bundle.

    `budget_s` (the model server's): the program time one explained row may take. A program too slow to walk the
    whole background within it (a 200-tree program: ~14 us a row, 3,800 rows for 20 features) walks an evenly
    spaced part of it instead, never fewer than MIN_BACKGROUND_ROWS rows; attributions still add up exactly to the
    score minus that part's mean score, which the answer reports as base_value with the rows used."""
    from components.core.bundle import NoBackground

    background = bundle.background
    if background is None:
        raise NoBackground(bundle.directory)
    encoded = bundle.encode(background)
    numeric, codes = encoded[0].numpy(), encoded[1].numpy()
    predict = predict or program_predict(bundle.program)
    rows = None
    if budget_s is not None:
        per_row = program_seconds_per_row(predict, numeric, codes)
        rows = background_rows_for(per_row, len(bundle.feature_names), len(numeric), budget_s)
    return Explainer(predict, (numeric, codes), bundle.numeric, bundle.categorical, passes, background_rows=rows)


def _as_columns(rows: Any, names: Sequence[str]) -> Mapping[str, Sequence[Any]]:
    if hasattr(rows, "iloc"):  # a pandas DataFrame
        from components.core.bundle import columns_from_frame

        return columns_from_frame(rows, names)
    return rows


def global_importance(bundle: Bundle, rows: Any, max_rows: int = GLOBAL_MAX_ROWS) -> dict[str, float]:
    """Mean |attribution| per feature over `rows` (a DataFrame or {feature: values}), largest first.

    The same method the server's explanations use, so a report's global picture and a row's explanation agree.
    At most `max_rows` rows are explained (evenly spaced, deterministic): each costs 200 x (F - 1) program rows
    (measured: 1,000 rows of a 20-feature network bundle in 16 s on 2 busy cores, the model's own time dominating).
    """
    columns = _as_columns(rows, bundle.feature_names)
    missing = [f for f in bundle.feature_names if f not in columns]
    if missing:
        raise ExplainError(f"rows lack feature(s) {missing}")
    n = len(columns[bundle.feature_names[0]])
    if n == 0:
        raise ExplainError("no rows to explain")
    keep = np.unique(np.linspace(0, n - 1, min(n, max_rows)).round().astype(int)).tolist()
    picked = {f: [columns[f][i] for i in keep] for f in bundle.feature_names}
    explainer = bundle_explainer(bundle)
    numeric, codes = bundle.encode(picked)
    explanation = explainer.explain(numeric.numpy(), codes.numpy())
    means = np.abs(explanation.attributions).mean(axis=0)
    return dict(sorted(zip(explanation.features, means.tolist()), key=lambda kv: -kv[1]))
