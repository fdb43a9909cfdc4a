"""LightGBM -> torch program: parity with booster.predict on ordinary and edge rows, export round trip, and proof
that the edge rows catch the conversion traps that ordinary rows miss."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from components.training import tree_parity, tree_programs, trees

N_NUMERIC, N_CATEGORICAL, N_CODES = 5, 2, 20


def make_data(n: int, seed: int, zeros: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Numerics with NaNs (column 4 has none, so its splits get missing_type None), codes 0..N_CODES where the label
    depends on set membership (so many-vs-many categorical splits are the best splits)."""
    rng = np.random.default_rng(seed)
    numeric = rng.normal(size=(n, N_NUMERIC)).astype(np.float32)
    numeric[:, :4][rng.random((n, 4)) < 0.15] = np.nan
    if zeros:
        numeric[:, 1][rng.random(n) < 0.3] = 0.0
    codes = rng.integers(0, N_CODES + 1, size=(n, N_CATEGORICAL))
    logit = (
        1.5 * np.nan_to_num(numeric[:, 0])
        - np.nan_to_num(numeric[:, 1]) ** 2
        + 0.8 * np.isnan(numeric[:, 2])
        + 2.0 * np.isin(codes[:, 0], [2, 5, 7, 11, 13, 17])
        - 1.0 * np.isin(codes[:, 1], [1, 3, 4, 19])
        + 0.7 * numeric[:, 4]
        + (1.5 * (numeric[:, 1] == 0) if zeros else 0.0)
    )
    labels = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int64)
    return numeric, codes, labels


def train(seed: int = 0, zeros: bool = False, rounds: int = 40, **params):
    numeric, codes, labels = make_data(3000, seed, zeros)
    vn, vc, vl = make_data(1000, seed + 100, zeros)
    result = trees.train_lightgbm(
        numeric,
        codes,
        labels,
        vn,
        vc,
        vl,
        num_threads=1,
        seed=seed,
        num_boost_round=rounds,
        early_stopping_rounds=rounds,
        params={"num_leaves": 15, "learning_rate": 0.1, "min_data_per_group": 20, "cat_smooth": 1.0, **params},
    )
    return result, vn, vc


@pytest.fixture(scope="module")
def model():
    result, vn, vc = train()
    return result.booster, vn, vc


def test_model_has_every_split_kind_the_converter_handles(model):
    booster, _, _ = model
    forest = trees.parse_dump(booster.dump_model(), N_NUMERIC, N_CATEGORICAL)
    assert len(forest.cat_sets) > 0 and any(len(s) > 1 for s in forest.cat_sets), "no many-vs-many categorical split"
    assert forest.miss_nan.any() and (~forest.miss_nan & ~forest.miss_zero).any(), "need NaN and None missing types"
    assert (forest.miss_nan & forest.num_default_left).any() and (forest.miss_nan & ~forest.num_default_left).any()
    assert forest.max_depth >= 3


@pytest.mark.parametrize("strategy", ["gemm", "traverse", "dispatch"])
def test_parity_on_given_and_edge_rows(model, strategy):
    booster, vn, vc = model
    program = tree_programs.to_program(booster, N_NUMERIC, N_CATEGORICAL, strategy, cutoff=8)
    report = tree_parity.parity_check(booster, program, vn, vc)
    assert report["rows"] == len(vn) and report["edge_rows"] > 500
    assert report["max_abs_diff"] <= 1e-6, report


def test_traversal_past_its_batch_bound_goes_in_parts_with_the_same_answers(model, monkeypatch):
    """int32 positions are sized for MAX_BATCH rows a call; an eager call over it is cut, not overflowed."""
    booster, vn, vc = model
    program = tree_programs.to_program(booster, N_NUMERIC, N_CATEGORICAL, "traverse")
    numeric, codes = torch.from_numpy(vn[:50]), torch.from_numpy(vc[:50])
    with torch.no_grad():
        whole = program(numeric, codes)
        monkeypatch.setattr(tree_programs, "MAX_BATCH", 7)
        assert torch.equal(program(numeric, codes), whole)


def test_zero_as_missing_and_no_missing_models_match():
    for params in ({"zero_as_missing": True}, {"use_missing": False}):
        result, vn, vc = train(seed=1, zeros=True, rounds=25, **params)
        forest = trees.parse_dump(result.booster.dump_model(), N_NUMERIC, N_CATEGORICAL)
        if params.get("zero_as_missing"):
            assert forest.miss_zero.any(), "zero_as_missing should give missing_type Zero splits"
        else:
            assert not forest.miss_zero.any() and not forest.miss_nan.any()
        for strategy in ("gemm", "traverse"):
            program = tree_programs.to_program(result.booster, N_NUMERIC, N_CATEGORICAL, strategy)
            assert tree_parity.parity_check(result.booster, program, vn, vc)["max_abs_diff"] <= 1e-6


def test_export_save_load_weights_only_round_trip(model, tmp_path, monkeypatch):
    booster, vn, vc = model
    program = tree_programs.to_program(booster, N_NUMERIC, N_CATEGORICAL, "dispatch", cutoff=8)
    batch = torch.export.Dim("batch", min=1, max=1_000_000)
    example = (torch.from_numpy(vn[:8]), torch.from_numpy(vc[:8]))
    exported = torch.export.export(program, example, dynamic_shapes={"numeric": {0: batch}, "codes": {0: batch}})
    path = tmp_path / "model.pt2"
    torch.export.save(exported, str(path))
    # The bundle loads programs with torch's weights-only unpickler forced for the whole load.
    monkeypatch.setenv("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "1")
    monkeypatch.delenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", raising=False)
    loaded = torch.export.load(str(path)).module()
    forest = trees.parse_dump(booster.dump_model(), N_NUMERIC, N_CATEGORICAL)
    edge_n, edge_c = tree_parity.edge_rows(forest, vn[:16], vc[:16])
    with torch.no_grad():
        for rows_n, rows_c in ((vn[:1], vc[:1]), (vn[:5], vc[:5]), (vn, vc), (edge_n, edge_c)):
            n, c = torch.from_numpy(rows_n), torch.from_numpy(rows_c)
            expected = program(n, c)
            got = loaded(n, c)
            assert got.dtype == torch.float32 and got.shape == (len(rows_n),)
            assert torch.equal(got, expected)  # and the eager program's parity is proven above


def test_edge_rows_catch_thresholds_rounded_to_nearest(model, monkeypatch):
    booster, vn, vc = model
    monkeypatch.setattr(tree_programs, "round_down_f32", lambda v: np.asarray(v, dtype=np.float64).astype(np.float32))
    broken = tree_programs.to_program(booster, N_NUMERIC, N_CATEGORICAL, "traverse")
    # Ordinary rows do not see it ...
    with torch.no_grad():
        got = broken(torch.from_numpy(vn), torch.from_numpy(vc)).double().numpy()
    assert np.abs(got - booster.predict(trees.lightgbm_matrix(vn, vc))).max() <= 1e-6
    # ... the rows placed at the thresholds do.
    with pytest.raises(trees.ParityError, match=r"edge row \d+: numeric="):
        tree_parity.parity_check(booster, broken, vn, vc)


def test_edge_rows_catch_ignored_default_left(model):
    booster, vn, vc = model
    forest = trees.parse_dump(booster.dump_model(), N_NUMERIC, N_CATEGORICAL)
    forest.num_default_left = np.zeros_like(forest.num_default_left)  # NaN always right, as if default_left were ignored
    for broken in (tree_programs.TreeGemmProgram(forest).eval(), tree_programs.TreeTraverseProgram(forest).eval()):
        with pytest.raises(trees.ParityError, match="differs from booster.predict by"):
            tree_parity.parity_check(booster, broken, vn, vc)


def test_edge_rows_catch_missing_zero_threshold(monkeypatch):
    result, vn, vc = train(seed=1, zeros=True, rounds=25, zero_as_missing=True)
    program = tree_programs.to_program(result.booster, N_NUMERIC, N_CATEGORICAL, "gemm")
    tree_parity.parity_check(result.booster, program, vn, vc)
    monkeypatch.setattr(tree_programs, "KZERO", 0.0)  # |x| <= 1e-35 no longer read as zero
    with pytest.raises(trees.ParityError, match="edge row"):
        tree_parity.parity_check(result.booster, program, vn, vc)


def test_nan_versus_rest_split_keeps_its_infinite_threshold(monkeypatch):
    """A split that only separates NaN from every value has threshold inf in the model; dump_model writes 1e300,
    and inf <= 1e300 would send x = inf the other way. Also a model without categorical features."""

    def data(n: int, seed: int):
        rng = np.random.default_rng(seed)
        numeric = rng.normal(size=(n, 2)).astype(np.float32)
        numeric[:, 0][rng.random(n) < 0.3] = np.nan
        labels = (rng.random(n) < np.where(np.isnan(numeric[:, 0]), 0.8, 0.2)).astype(np.int64)
        return numeric, np.zeros((n, 0), dtype=np.int64), labels

    result = trees.train_lightgbm(*data(2000, 0), *data(500, 1), num_threads=1, num_boost_round=5, early_stopping_rounds=5)
    booster = result.booster
    forest = trees.parse_dump(booster.dump_model(), 2, 0)
    assert np.isinf(forest.num_threshold).any()
    vn, vc, _ = data(300, 2)
    program = tree_programs.to_program(booster, 2, 0, "traverse")
    assert tree_parity.parity_check(booster, program, vn, vc)["max_abs_diff"] <= 1e-6
    with torch.no_grad():  # the bundle passes one dummy codes column when there is no categorical feature
        n = torch.from_numpy(vn)
        assert torch.equal(program(n, torch.zeros(300, 1, dtype=torch.int64)), program(n, torch.from_numpy(vc)))
    monkeypatch.setattr(trees, "_undo_avoid_inf", lambda t: t)
    broken = tree_programs.to_program(booster, 2, 0, "gemm")
    with pytest.raises(trees.ParityError, match=r"numeric=\[inf"):
        tree_parity.parity_check(booster, broken, vn, vc)


def test_round_down_f32_is_the_largest_float32_not_above():
    values = np.array([0.1, -0.1, 1.0, 1e-40, -1e-40, 3.5e38, -3.5e38, np.inf, -np.inf, 1e300])
    out = trees.round_down_f32(values)
    assert out.dtype == np.float32
    assert np.all(out.astype(np.float64) <= values)
    with np.errstate(over="ignore"):
        up = np.nextafter(out, np.float32(np.inf))
    finite = np.isfinite(up)
    assert np.all(up[finite].astype(np.float64) > values[finite])


def test_training_is_deterministic_and_cut_at_best_iteration():
    first, _, _ = train(seed=3, rounds=15)
    second, _, _ = train(seed=3, rounds=15)
    assert first.booster.model_to_string() == second.booster.model_to_string()
    assert first.booster.num_trees() == first.best_iteration > 0
    assert first.best_score["binary_logloss"] > 0


def test_conversion_refuses_what_it_cannot_express(model):
    booster, _, _ = model
    with pytest.raises(trees.TreeConversionError, match="features"):
        trees.parse_dump(booster.dump_model(), N_NUMERIC + 1, N_CATEGORICAL)
    with pytest.raises(trees.TreeConversionError, match="numerical split on feature"):
        trees.parse_dump(booster.dump_model(), 2, N_NUMERIC + N_CATEGORICAL - 2)
    dump = booster.dump_model()
    dump["objective"] = "multiclass num_class:3"
    with pytest.raises(trees.TreeConversionError, match="binary"):
        trees.parse_dump(dump, N_NUMERIC, N_CATEGORICAL)
    with pytest.raises(ValueError, match="cutoff"):
        tree_programs.to_program(booster, N_NUMERIC, N_CATEGORICAL, "dispatch")


def test_auto_strategy_times_both_and_keeps_parity(model):
    booster, vn, vc = model
    forest = trees.parse_dump(booster.dump_model(), N_NUMERIC, N_CATEGORICAL)
    gemm, traverse = tree_programs.TreeGemmProgram(forest).eval(), tree_programs.TreeTraverseProgram(forest).eval()
    cutoff, timings = tree_programs.choose_cutoff(gemm, traverse, N_NUMERIC, N_CATEGORICAL, batches=(1, 64))
    assert set(timings) == {1, 64} and all(t["gemm"] > 0 and t["traverse"] > 0 for t in timings.values())
    assert cutoff in (0, 1, 64)
    program = tree_programs.to_program(booster, N_NUMERIC, N_CATEGORICAL, "auto")
    assert program.strategy in ("gemm", "traverse", "dispatch")
    assert tree_parity.parity_check(booster, program, vn[:200], vc[:200])["max_abs_diff"] <= 1e-6
