"""Drift statistics on constructed distributions, and the monitor's cooldown decision."""

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from components.monitoring import drift
from components.monitoring.drift import Thresholds
from components.training.train import reference_profile

TH = Thresholds()


def profile_of(train: pd.DataFrame, numeric: list[str], categorical: list[str], scores: np.ndarray) -> dict:
    """The real training-time profile (components/training/train.py), so the tests read what bundles carry."""
    return reference_profile(train, numeric, categorical, scores)


@pytest.fixture(scope="module")
def reference():
    rng = np.random.default_rng(0)
    n = 20_000
    train = pd.DataFrame(
        {
            "x": rng.normal(size=n),
            "count": rng.poisson(1.0, n).astype(float),  # discrete: decile edges collapse
            "colour": rng.choice(["red", "green", "blue"], n, p=[0.5, 0.3, 0.2]),
        }
    )
    scores = rng.beta(1, 8, n)
    return train, profile_of(train, ["x", "count"], ["colour"], scores)


def current(n: int, seed: int, shift: float = 0.0, colours=("red", "green", "blue"), p=(0.5, 0.3, 0.2)) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {"x": rng.normal(shift, 1.0, n), "count": rng.poisson(1.0, n).astype(float), "colour": rng.choice(list(colours), n, p=list(p))}
    )


def test_no_shift_at_a_million_rows_is_below_every_threshold(reference):
    _, profile = reference
    frame = current(1_000_000, seed=1)
    summary = drift.compare(frame, np.random.default_rng(2).beta(1, 8, 1_000_000), profile, TH)
    assert not summary.alert and summary.drifted == []
    for f in [*summary.features, summary.prediction]:
        assert f.level == "ok", (f.feature, f.psi, f.ks_d, f.reasons)
        assert f.psi < 0.01
        if f.ks_d is not None:
            assert f.ks_d < f.ks_critical


def test_a_tiny_shift_at_a_million_rows_is_not_flagged_but_a_real_one_is(reference):
    _, profile = reference
    # 0.05 sigma: a p-value would call this significant at 1M rows; the D floor does not.
    tiny = drift.compare(current(1_000_000, seed=3, shift=0.05), None, profile, TH)
    assert tiny.features[0].ks_d > drift.ks_critical(1_000_000, 20_000, Thresholds(ks_min_d=0.0))
    assert tiny.features[0].level == "ok" and not tiny.alert
    real = drift.compare(current(5_000, seed=4, shift=0.8), None, profile, TH)
    x = real.features[0]
    assert x.level == "alert" and x.psi > TH.psi_alert and x.ks_d > x.ks_critical
    assert real.drifted == ["x"] and real.alert


def test_edge_ks_is_a_lower_bound_of_the_full_ks_and_close_to_it(reference):
    train, profile = reference
    frame = current(50_000, seed=5, shift=0.5)
    d_edges = drift.numeric_drift("x", frame["x"].to_numpy(), profile["numeric"]["x"], len(train), TH).ks_d
    d_full = stats.ks_2samp(train["x"], frame["x"]).statistic
    assert d_edges <= d_full + 0.01  # + sampling noise of the reference deciles
    assert d_edges > 0.8 * d_full


def test_psi_matches_a_direct_computation_on_the_same_bins(reference):
    _, profile = reference
    values = current(10_000, seed=6, shift=0.3)["x"].to_numpy()
    entry = profile["numeric"]["x"]
    counts, _ = np.histogram(np.clip(values, entry["edges"][0], entry["edges"][-1]), bins=entry["edges"])
    cur = counts / counts.sum()
    ref = np.asarray(entry["frequencies"])
    expected = float(np.sum((cur - ref) * np.log(cur / ref)))
    assert drift.numeric_drift("x", values, entry, 20_000, TH).psi == pytest.approx(expected, rel=1e-12)


def test_discrete_feature_with_collapsed_edges_counts_like_the_profile(reference):
    train, profile = reference
    entry = profile["numeric"]["count"]
    assert len(entry["edges"]) < 11  # np.unique merged the tied deciles
    freq, valid, nulls = drift.binned_frequencies(train["count"].to_numpy(), entry["edges"])
    assert np.allclose(freq, entry["frequencies"]) and valid == len(train) and nulls == 0


def test_nulls_are_counted_and_a_jump_in_nulls_alerts(reference):
    _, profile = reference
    frame = current(5_000, seed=7)
    frame.loc[: len(frame) // 5, "x"] = np.nan
    x = drift.compare(frame, None, profile, TH).features[0]
    assert x.null_current == pytest.approx(0.2, abs=0.001) and x.rows == 5_000 - 1_001
    assert x.level == "alert" and any("null fraction" in r for r in x.reasons)


def test_unseen_category_is_counted_in_its_own_bucket(reference):
    _, profile = reference
    frame = current(4_000, seed=8, colours=("red", "green", "blue", "purple"), p=(0.4, 0.3, 0.2, 0.1))
    colour = drift.compare(frame, None, profile, TH).features[2]
    assert colour.bins[-1] == drift.UNSEEN
    assert colour.unseen_fraction == pytest.approx(0.1, abs=0.015)
    assert colour.current[-1] == pytest.approx(colour.unseen_fraction) and colour.reference[-1] == 0.0
    assert colour.level in ("warn", "alert") and any("never seen" in r and "purple" in r for r in colour.reasons)
    assert np.isfinite(colour.psi)


def test_empty_bins_give_a_finite_psi():
    entry = {"edges": [0.0, 1.0, 2.0, 3.0], "frequencies": [0.5, 0.5, 0.0], "null_fraction": 0.0}
    out = drift.numeric_drift("z", np.full(1_000, 2.5), entry, 1_000, TH)  # everything lands in the empty bin
    assert np.isfinite(out.psi) and out.psi > 5 and out.level == "alert"
    assert drift.psi(np.array([1.0, 0.0]), np.array([1.0, 0.0]), TH.epsilon) == 0.0


def test_constant_feature_and_empty_window_do_not_crash():
    entry = {"edges": [4.0], "frequencies": [1.0], "null_fraction": 0.0}
    assert drift.numeric_drift("c", np.full(10, 4.0), entry, 100, TH).psi == 0.0
    empty = drift.numeric_drift("c", np.array([]), {"edges": [0.0, 1.0], "frequencies": [1.0]}, 100, TH)
    assert empty.rows == 0 and empty.level == "ok"


def test_below_counts_matches_searchsorted_across_chunk_boundaries():
    rng = np.random.default_rng(9)
    x = rng.normal(size=100_003)
    x[::97] = np.nan
    edges = np.array([-1.0, -0.2, 0.0, 0.7, 1.5])
    below, nan = drift.below_counts(x, edges, chunk=4096)
    finite = x[~np.isnan(x)]
    assert nan == int(np.isnan(x).sum())
    assert below.tolist() == [int(np.searchsorted(np.sort(finite), e, side="left")) for e in edges]


def test_too_few_rows_is_no_decision(reference):
    _, profile = reference
    summary = drift.compare(current(50, seed=10, shift=3.0), None, profile, TH)
    assert summary.insufficient and not summary.alert


def test_served_rows_must_carry_the_profiled_features(reference):
    _, profile = reference
    with pytest.raises(ValueError, match=r"lack profiled feature\(s\) \['count'\]"):
        drift.compare(current(300, seed=11).drop(columns=["count"]), None, profile, TH)


def test_thresholds_are_checked():
    with pytest.raises(ValueError, match="psi_warn <= psi_alert"):
        Thresholds(psi_warn=0.3, psi_alert=0.2)


# ---------------------------------------------------------------- cooldown


def test_cooldown_blocks_a_second_trigger_until_it_has_passed(reference):
    from components.monitoring.monitor import decide

    _, profile = reference
    drifted = drift.compare(current(5_000, seed=12, shift=1.0), None, profile, TH)
    quiet = drift.compare(current(5_000, seed=13), None, profile, TH)
    now = datetime(2026, 3, 1, 12, tzinfo=UTC)
    assert decide(drifted, {"triggers": []}, now, cooldown_hours=6).action == "retrain"
    state = {"last_trigger": (now - timedelta(hours=2)).isoformat()}
    blocked = decide(drifted, state, now, cooldown_hours=6)
    assert blocked.action == "cooldown" and "cooldown ends in 4:00:00" in blocked.reason
    assert decide(drifted, state, now + timedelta(hours=4, seconds=1), cooldown_hours=6).action == "retrain"
    assert decide(quiet, {}, now, cooldown_hours=6).action == "no_drift"
    thin = drift.compare(current(10, seed=14, shift=1.0), None, profile, TH)
    assert decide(thin, {}, now, cooldown_hours=6).action == "insufficient_data"
