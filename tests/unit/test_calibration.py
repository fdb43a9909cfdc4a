"""Calibration maps as torch modules, the method rule, and the decision threshold."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from components.training import calibration as cal


def logit(p: np.ndarray) -> np.ndarray:
    return np.log(p) - np.log1p(-p)


def miscalibrated(n: int, seed: int, base_rate: float = 0.3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True probabilities, labels drawn from them, and an over-confident, shifted score of the same ranking."""
    rng = np.random.default_rng(seed)
    true_logit = rng.normal(loc=logit(np.array(base_rate)), scale=1.2, size=n)
    p_true = 1 / (1 + np.exp(-true_logit))
    labels = (rng.random(n) < p_true).astype(np.int64)
    score = 1 / (1 + np.exp(-(2.0 * true_logit + 1.0)))
    return p_true, labels, score


class TinyProgram(torch.nn.Module):
    """A stand-in probability program with the bundle's signature (numeric, codes) -> float32 [N]."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3, 1)
        self.embedding = torch.nn.Embedding(5, 1)
        torch.nn.init.constant_(self.linear.weight, 1.5)

    def forward(self, numeric: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        x = torch.nan_to_num(numeric, nan=0.0)
        return torch.sigmoid(self.linear(x).squeeze(1) + self.embedding(codes[:, 0]).squeeze(1))


def test_isotonic_reduces_ece_and_matches_sklearn():
    from sklearn.isotonic import IsotonicRegression

    # A bend no affine map of the logit undoes (scores squeezed towards 0.5 from both sides, as a saturated
    # model's can be): isotonic must win out of fold, beyond noise, to be chosen.
    def bent(p: np.ndarray) -> np.ndarray:
        return 0.5 + 0.5 * np.sign(p - 0.5) * np.abs(2 * (p - 0.5)) ** 0.2

    p_fit, y_fit, _ = miscalibrated(8000, 0)
    p_test, y_test, _ = miscalibrated(8000, 1)
    s_fit, s_test = bent(p_fit), bent(p_test)
    fit = cal.fit_calibrator(s_fit, y_fit)
    assert fit.method == "isotonic" and fit.positives >= cal.PLATT_MIN_CLASS_COUNT and "beats Platt's" in fit.reason
    with torch.no_grad():
        calibrated = fit.calibrator(torch.from_numpy(s_test.astype(np.float32))).double().numpy()
    before = cal.expected_calibration_error(y_test, s_test)
    after = cal.expected_calibration_error(y_test, calibrated)
    assert before > 0.08 and after < 0.03 and after < before / 3, (before, after)
    # The module is scikit-learn's predict (linear interpolation, clipped outside the fitted range).
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(s_fit, y_fit)
    grid = np.r_[0.0, 1e-9, np.linspace(0, 1, 2001), 1 - 1e-9, 1.0].astype(np.float32)
    with torch.no_grad():
        ours = fit.calibrator(torch.from_numpy(grid)).double().numpy()
    assert np.abs(ours - iso.predict(grid.astype(np.float64))).max() < 1e-6
    assert np.all(np.diff(ours) >= -1e-7)  # monotone


def test_platt_is_used_when_positives_are_few_and_reduces_ece():
    rng = np.random.default_rng(2)
    _, labels, score = miscalibrated(20000, 3, base_rate=0.003)
    keep = np.r_[np.nonzero(labels == 1)[0][:30], np.nonzero(labels == 0)[0][:3000]]
    rng.shuffle(keep)
    fit = cal.fit_calibrator(score[keep], labels[keep])
    assert fit.method == "platt" and fit.positives == 30 and "30 examples" in fit.reason
    # At the boundary: 49 positives -> Platt without a contest; from 50 the out-of-fold Brier decides.
    for positives, why in ((49, "49 examples of the rarer class < 50"), (50, "cross-validated Brier")):
        y = np.r_[np.ones(positives, np.int64), np.zeros(500, np.int64)]
        s = np.r_[rng.uniform(0.3, 1, positives), rng.uniform(0, 0.7, 500)]
        assert why in cal.fit_calibrator(s, y).reason


def test_an_affine_logit_distortion_is_undone_by_platt_which_keeps_every_ranking():
    """Over-confident and shifted (score = sigmoid(2 logit + 1)): Platt fixes it exactly, so isotonic, whose steps
    tie scores and cost ROC-AUC, is not chosen even with thousands of examples."""
    from sklearn.metrics import roc_auc_score

    _, y_fit, s_fit = miscalibrated(8000, 0)
    _, y_test, s_test = miscalibrated(8000, 1)
    fit = cal.fit_calibrator(s_fit, y_fit)
    assert fit.method == "platt" and "not clearly below" in fit.reason
    with torch.no_grad():
        calibrated = fit.calibrator(torch.from_numpy(s_test.astype(np.float32))).double().numpy()
    assert cal.expected_calibration_error(y_test, calibrated) < 0.03
    assert abs(roc_auc_score(y_test, calibrated) - roc_auc_score(y_test, s_test)) < 1e-4

    # Platt undoes an affine distortion of the logit: score = sigmoid(2 * logit + 1) -> a = 0.5, b = -0.5.
    _, y_fit, s_fit = miscalibrated(20000, 4)
    _, y_test, s_test = miscalibrated(20000, 5)
    platt = cal.fit_calibrator(s_fit, y_fit, method="platt").calibrator
    assert abs(float(platt.a) - 0.5) < 0.05 and abs(float(platt.b) + 0.5) < 0.1
    with torch.no_grad():
        calibrated = platt(torch.from_numpy(s_test.astype(np.float32))).double().numpy()
    assert cal.expected_calibration_error(y_test, calibrated) < cal.expected_calibration_error(y_test, s_test) / 3


def test_calibrated_program_exports_and_loads_weights_only(tmp_path, monkeypatch):
    torch.manual_seed(0)
    program = TinyProgram().eval()
    rng = np.random.default_rng(6)
    numeric = rng.normal(size=(400, 3)).astype(np.float32)
    numeric[rng.random(numeric.shape) < 0.1] = np.nan
    codes = rng.integers(0, 5, size=(400, 1))
    with torch.no_grad():
        raw = program(torch.from_numpy(numeric), torch.from_numpy(codes)).numpy()
    labels = (rng.random(400) < raw**2).astype(np.int64)  # miscalibrated on purpose
    for method in ("isotonic", "platt"):
        calibrator = cal.fit_calibrator(raw, labels, method=method).calibrator
        model = cal.Calibrated(program, calibrator).eval()
        batch = torch.export.Dim("batch", min=1, max=1_000_000)
        example = (torch.from_numpy(numeric[:8]), torch.from_numpy(codes[:8]))
        exported = torch.export.export(model, example, dynamic_shapes={"numeric": {0: batch}, "codes": {0: batch}})
        path = tmp_path / f"{method}.pt2"
        torch.export.save(exported, str(path))
        monkeypatch.setenv("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "1")
        loaded = torch.export.load(str(path)).module()
        monkeypatch.delenv("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
        with torch.no_grad():
            for rows in (slice(0, 1), slice(0, 400)):
                n, c = torch.from_numpy(numeric[rows]), torch.from_numpy(codes[rows])
                expected = calibrator(program(n, c))
                got = loaded(n, c)
                assert got.dtype == torch.float32 and torch.equal(got, expected)
                assert torch.equal(model(n, c), expected)


def brute_force(labels: np.ndarray, scores: np.ndarray, objective) -> float:
    best = None
    for t in np.r_[np.unique(scores), np.nextafter(scores.max(), np.inf)]:
        predicted = scores >= t
        tp = int((predicted & (labels == 1)).sum())
        fp = int((predicted & (labels == 0)).sum())
        fn = int((~predicted & (labels == 1)).sum())
        if objective == "f1":
            value = 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else 0.0
            best = value if best is None else max(best, value)
        else:
            value = (objective["fp"] * fp + objective["fn"] * fn) / len(labels)
            best = value if best is None else min(best, value)
    return best


@pytest.mark.parametrize("objective", ["f1", {"fp": 1.0, "fn": 5.0}, {"fp": 3.0, "fn": 1.0}, {"fp": 0.0, "fn": 1.0}])
def test_threshold_matches_brute_force(objective):
    rng = np.random.default_rng(7)
    scores = np.round(rng.random(600), 2)  # ties on purpose
    labels = (rng.random(600) < scores**1.5).astype(np.int64)
    report = cal.threshold_report(labels, scores, objective)
    key = "f1" if objective == "f1" else "expected_cost"
    assert report[key] == pytest.approx(brute_force(labels, scores, objective), abs=1e-12)
    # The returned threshold really achieves it.
    t = cal.choose_threshold(labels, scores, objective)
    assert t == report["threshold"]
    predicted = scores >= t
    tp = int((predicted & (labels == 1)).sum())
    fp = int((predicted & (labels == 0)).sum())
    fn = int((~predicted & (labels == 1)).sum())
    assert (report["tp"], report["fp"], report["fn"]) == (tp, fp, fn)
    if objective == {"fp": 0.0, "fn": 1.0}:
        assert fn == 0  # false positives are free: flag everything with a positive


def test_negative_or_malformed_costs_raise_naming_the_entry():
    y, p = np.array([0, 1, 1, 0]), np.array([0.1, 0.8, 0.6, 0.4])
    with pytest.raises(ValueError, match="'fp' = -1"):
        cal.choose_threshold(y, p, {"fp": -1, "fn": 2})
    with pytest.raises(ValueError, match="'fn'"):
        cal.choose_threshold(y, p, {"fp": 1, "fn": -0.5})
    with pytest.raises(ValueError, match="unknown entries"):
        cal.choose_threshold(y, p, {"fp": 1, "fn": 2, "fx": 1})
    with pytest.raises(ValueError, match="needs both"):
        cal.choose_threshold(y, p, {"fp": 1})
    with pytest.raises(ValueError, match="no cost"):
        cal.choose_threshold(y, p, {"fp": 0, "fn": 0})
    with pytest.raises(ValueError, match="objective"):
        cal.choose_threshold(y, p, "accuracy")


def test_fit_refuses_single_class_and_bad_input():
    with pytest.raises(ValueError, match="0 positives"):
        cal.fit_calibrator(np.array([0.1, 0.2]), np.array([0, 0]))
    with pytest.raises(ValueError, match="NaN"):
        cal.fit_calibrator(np.array([0.1, np.nan]), np.array([0, 1]))
    with pytest.raises(ValueError, match="differ in length"):
        cal.fit_calibrator(np.array([0.1, 0.2, 0.3]), np.array([0, 1]))
