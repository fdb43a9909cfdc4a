"""Attributions (components/core/explain.py): exact additivity, the exact answer for a linear score, zero for a
feature the model ignores, agreement with brute-force Shapley values on an interacting model, and the background
sample a trained bundle records (sealed, read lazily, absent from older bundles)."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

from components.core import bundle as bundle_lib
from components.core.explain import ADDITIVITY_TOLERANCE, Explainer, ExplainError, bundle_explainer, global_importance
from components.training.train import TrainParams, build_bundle, train_model
from tests.factories import synthetic

NUMERIC, CATEGORICAL = ["x1", "x2"], ["colour"]


def _background(rng: np.random.Generator, n: int, n_numeric: int, n_categories: int) -> tuple[np.ndarray, np.ndarray]:
    return rng.normal(size=(n, n_numeric)).astype(np.float32), rng.integers(0, n_categories, size=(n, 1))


def test_linear_score_gets_its_exact_shapley_values_and_an_ignored_feature_gets_zero():
    rng = np.random.default_rng(0)
    weights = np.array([1.5, -2.0, 0.0, 0.7])  # x3 (weight 0) does not matter
    table = np.array([0.0, 0.4, -0.3, 1.1])  # the category code's effect

    def linear(numeric: np.ndarray, codes: np.ndarray) -> np.ndarray:
        return numeric.astype(np.float64) @ weights + table[codes[:, 0]]

    background = _background(rng, 60, 4, 4)
    explainer = Explainer(linear, background, ["x0", "x1", "x2", "x3"], ["c"])
    rows = _background(rng, 5, 4, 4)
    got = explainer.explain(*rows)
    want_numeric = (rows[0].astype(np.float64) - background[0].astype(np.float64).mean(axis=0)) * weights
    want_code = table[rows[1][:, 0]] - table[background[1][:, 0]].mean()
    np.testing.assert_allclose(got.attributions[:, :4], want_numeric, atol=1e-9)
    np.testing.assert_allclose(got.attributions[:, 4], want_code, atol=1e-9)
    assert np.all(got.attributions[:, 2] == 0.0)
    assert got.additivity_error() <= ADDITIVITY_TOLERANCE


def _interacting(numeric: np.ndarray, codes: np.ndarray) -> np.ndarray:
    x = numeric.astype(np.float64)
    logit = 1.2 * x[:, 0] * x[:, 1] - 0.8 * np.maximum(x[:, 2], 0) + 0.5 * (codes[:, 0] == 2)
    return 1 / (1 + np.exp(-logit))  # x3 is ignored


def _exact_shapley(f, x_num: np.ndarray, x_cod: np.ndarray, bg_num: np.ndarray, bg_cod: np.ndarray) -> np.ndarray:
    """Interventional Shapley values by enumerating every coalition (F = 5 here: 32 coalitions)."""
    n_num = x_num.shape[0]
    n = n_num + x_cod.shape[0]

    def value(coalition: tuple[int, ...]) -> float:
        num, cod = bg_num.copy(), bg_cod.copy()
        for j in coalition:
            if j < n_num:
                num[:, j] = x_num[j]
            else:
                cod[:, j - n_num] = x_cod[j - n_num]
        return float(f(num, cod).mean())

    phi = np.zeros(n)
    for j in range(n):
        others = [k for k in range(n) if k != j]
        for size in range(n):
            weight = math.factorial(size) * math.factorial(n - size - 1) / math.factorial(n)
            for coalition in itertools.combinations(others, size):
                phi[j] += weight * (value((*coalition, j)) - value(coalition))
    return phi


def test_interacting_model_is_additive_and_close_to_brute_force_shapley():
    rng = np.random.default_rng(1)
    background = _background(rng, 50, 4, 3)
    rows = _background(rng, 4, 4, 3)
    explainer = Explainer(_interacting, background, ["a", "b", "c", "d"], ["k"], passes=8)
    got = explainer.explain(*rows)
    assert got.additivity_error() <= ADDITIVITY_TOLERANCE
    assert abs(got.base_value - _interacting(*background).mean()) <= 1e-12
    np.testing.assert_allclose(got.scores, _interacting(*rows), atol=1e-12)
    for i in range(len(rows[0])):
        exact = _exact_shapley(_interacting, rows[0][i], rows[1][i], *background)
        np.testing.assert_allclose(got.attributions[i], exact, atol=0.02)  # sampling error: 800 walks
        assert got.attributions[i, 3] == 0.0  # the ignored feature, in every walk
    again = Explainer(_interacting, background, ["a", "b", "c", "d"], ["k"], passes=8).explain(*rows)
    assert np.array_equal(again.attributions, got.attributions)  # seeded: the same row, the same answer


def test_single_feature_and_bad_shapes():
    rng = np.random.default_rng(2)
    only = Explainer(lambda n, c: n[:, 0].astype(np.float64) * 2, (rng.normal(size=(10, 1)), np.zeros((10, 1), np.int64)), ["x"], [])
    got = only.explain(np.array([[3.0]]), np.zeros((1, 1), np.int64))
    assert got.additivity_error() <= ADDITIVITY_TOLERANCE and got.features == ["x"]
    with pytest.raises(ExplainError, match="do not fit"):
        only.explain(np.zeros((1, 2)), np.zeros((1, 1), np.int64))
    with pytest.raises(ExplainError, match="must have rows"):
        Explainer(lambda n, c: n[:, 0], (np.zeros((0, 1)), np.zeros((0, 1), np.int64)), ["x"], [])


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    df = synthetic()
    program, vocab, result = train_model(df, NUMERIC, CATEGORICAL, TrainParams(epochs=6, batch_size=64, seed=1))
    root = tmp_path_factory.mktemp("explain") / "b"
    build_bundle(root, program, vocab, result, df, NUMERIC, CATEGORICAL, {"dataset": "synthetic"}, "# card\n")
    return root


def test_trained_bundle_records_a_sealed_background_and_explains_its_program(bundle_dir):
    manifest = json.loads((bundle_dir / bundle_lib.MANIFEST).read_text())["sha256"]
    assert bundle_lib.BACKGROUND in manifest
    bundle = bundle_lib.load(bundle_dir)
    background = bundle.background
    assert background is not None and set(background) == set(NUMERIC + CATEGORICAL) and len(background["x1"]) == 100
    assert any(v is None for v in background["x2"]) or all(isinstance(v, float) for v in background["x2"])
    rows = synthetic(20, seed=9)
    explainer = bundle_explainer(bundle)
    numeric, codes = bundle.encode(bundle_lib.columns_from_frame(rows, NUMERIC + CATEGORICAL))
    got = explainer.explain(numeric.numpy(), codes.numpy())
    assert got.additivity_error() <= ADDITIVITY_TOLERANCE
    np.testing.assert_allclose(got.scores, bundle.predict_proba(bundle_lib.columns_from_frame(rows, NUMERIC + CATEGORICAL)), atol=1e-6)
    np.testing.assert_allclose(got.base_value, bundle.predict_proba(background).mean(), atol=1e-6)

    importance = global_importance(bundle, synthetic(300, seed=4), max_rows=100)
    assert list(importance)[0] == "x1"  # the label depends on x1 most (tests/factories.py), on x2 not at all
    assert importance["x2"] < importance["x1"] / 3 and all(v >= 0 for v in importance.values())


def test_a_bundle_without_background_loads_serves_and_says_how_to_get_one(bundle_dir, tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    for name in bundle_lib.REQUIRED_FILES:
        (old / name).write_bytes((bundle_dir / name).read_bytes())
    bundle_lib.write_manifest(old)
    bundle = bundle_lib.load(old)
    assert bundle.background is None
    with pytest.raises(bundle_lib.NoBackground, match="Retrain"):
        bundle_explainer(bundle)
    (old / bundle_lib.BACKGROUND).write_text("{}")  # present but never sealed: not read
    assert bundle_lib.load(old).background is None


def test_a_tampered_background_is_refused(bundle_dir, tmp_path):
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in (*bundle_lib.BUNDLE_FILES, bundle_lib.MANIFEST):
        (copy / name).write_bytes((bundle_dir / name).read_bytes())
    document = json.loads((copy / bundle_lib.BACKGROUND).read_text())
    document["columns"]["x1"][0] = 1e6
    (copy / bundle_lib.BACKGROUND).write_text(json.dumps(document))
    with pytest.raises(bundle_lib.BundleError, match="background.json does not match"):
        bundle_lib.load(copy)


def test_tree_program_is_explained_additively():
    from components.training import tree_programs, trees

    rng = np.random.default_rng(3)

    def data(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        numeric = rng.normal(size=(n, 3)).astype(np.float32)
        numeric[rng.random(numeric.shape) < 0.1] = np.nan
        codes = rng.integers(0, 5, size=(n, 1))
        logit = 1.5 * np.nan_to_num(numeric[:, 0]) + (codes[:, 0] == 2)
        return numeric, codes, (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int64)

    result = trees.train_lightgbm(*data(1500), *data(500), num_threads=1, num_boost_round=40, early_stopping_rounds=40)
    program = tree_programs.to_program(result.booster, 3, 1)
    from components.core.explain import program_predict

    background, rows = data(40), data(6)
    got = Explainer(program_predict(program), background[:2], ["a", "b", "c"], ["k"]).explain(*rows[:2])
    assert got.additivity_error() <= ADDITIVITY_TOLERANCE
    assert np.abs(got.attributions[:, 0]).mean() > np.abs(got.attributions[:, 1]).mean()  # the feature that matters


def test_a_slow_program_walks_an_evenly_spaced_part_of_the_background_within_the_server_budget():
    """The server's budget: a program too slow to walk every background row within it walks fewer (never fewer than
    MIN_BACKGROUND_ROWS), says so, and its attributions still add up to the score minus that part's mean."""
    from components.core import explain

    assert explain.background_rows_for(1e-6, 20, 100) == 100  # a fast network: the whole background
    assert explain.background_rows_for(30e-6, 20, 100) == 10 == explain.MIN_BACKGROUND_ROWS  # a 200-tree program
    assert explain.background_rows_for(5e-6, 8, 100) == 100 and explain.background_rows_for(40e-6, 8, 100) == 17

    rng = np.random.default_rng(0)
    bg = (rng.normal(size=(100, 3)).astype(np.float32), rng.integers(0, 4, size=(100, 1)))

    def predict(numeric: np.ndarray, codes: np.ndarray) -> np.ndarray:
        return 1 / (1 + np.exp(-(numeric[:, 0] * numeric[:, 1] + 0.5 * codes[:, 0])))

    part = Explainer(predict, bg, ["a", "b", "c"], ["k"], background_rows=10)
    assert part.background_rows == 10 and part.walks == 20
    rows = (rng.normal(size=(5, 3)).astype(np.float32), rng.integers(0, 4, size=(5, 1)))
    out = part.explain(*rows)
    assert out.background_rows == 10 and out.walks == 20 and out.additivity_error() <= ADDITIVITY_TOLERANCE
    keep = np.unique(np.linspace(0, 99, 10).round().astype(int))
    assert math.isclose(out.base_value, float(predict(bg[0][keep], bg[1][keep]).mean()), rel_tol=1e-9)
    assert explain.program_seconds_per_row(predict, *bg) > 0
