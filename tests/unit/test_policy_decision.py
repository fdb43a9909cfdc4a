"""Gate policy: calibration bounds (ECE, Brier), the baseline as a bar, the threshold's cost matrix."""

from __future__ import annotations

import json

import pytest

from components.evaluation.evaluate import checks
from components.evaluation.policy import GatePolicy, PolicyError, bundled_policy_path, load_policy, parse_policy, threshold_objective

GOOD = {"roc_auc": 0.9, "pr_auc": 0.5, "f1": 0.4, "ece": 0.03, "brier": 0.02, "latency_p99_ms": 0.4}


def test_every_bundled_policy_gates_calibration_and_the_baseline():
    policy = load_policy(str(bundled_policy_path("transactions")))
    assert policy.max_ece is not None and policy.max_ece <= 0.05 and policy.max_brier is not None
    assert {"roc_auc", "brier"} <= set(policy.baseline_tolerance)
    assert threshold_objective(policy) == "f1"


def test_brier_and_baseline_checks_fail_with_their_reason():
    policy = GatePolicy(max_brier=0.025, baseline_tolerance={"roc_auc": 0.005, "brier": 0.002})
    baseline = {"kind": "logistic_regression", "roc_auc": 0.91, "brier": 0.015}
    failed = [c.message for c in checks({**GOOD, "brier": 0.03}, policy, None, (), baseline) if not c.passed]
    assert failed == [
        "brier 0.0300 exceeds the maximum 0.0250",
        "roc_auc 0.9000 is worse against the logistic_regression baseline (0.9100) by more than 0.005",
        "brier 0.0300 is worse against the logistic_regression baseline (0.0150) by more than 0.002",
    ]
    assert all(c.passed for c in checks(GOOD, policy, None, (), {**baseline, "roc_auc": 0.904, "brier": 0.019}))


def test_cost_matrix_reaches_training_as_json():
    policy = parse_policy({"version": 1, "decision": {"costs": {"fp": 1, "fn": 20}}})
    assert json.loads(threshold_objective(policy)) == {"fp": 1.0, "fn": 20.0, "tp": 0.0, "tn": 0.0}


@pytest.mark.parametrize(
    "costs, message",
    [
        ({"fp": 1, "fn": -5}, r"decision.costs.fn: -5 is not a cost \(a finite number >= 0\)"),
        ({"fp": 1}, r"decision.costs: needs both 'fp' and 'fn' \(missing \['fn'\]\)"),
        ({"fp": 1, "fn": 2, "fnn": 3}, r"decision.costs: unknown key\(s\) \['fnn'\]"),
        ({"fp": 0, "fn": 0}, "errors cost nothing"),
    ],
)
def test_bad_cost_matrix_is_one_line_naming_the_entry(costs, message):
    with pytest.raises(PolicyError, match=message) as err:
        parse_policy({"version": 1, "decision": {"costs": costs}})
    assert "\n" not in str(err.value)


def test_a_gap_within_the_bootstrap_noise_does_not_fail_but_a_real_one_does():
    import numpy as np

    from components.evaluation.evaluate import paired_bootstrap_ci

    rng = np.random.default_rng(1)
    y = (rng.random(1500) < 0.05).astype(int)
    signal = y + rng.normal(0, 0.9, 1500)
    noisy, sharp = 1 / (1 + np.exp(-(signal + rng.normal(0, 0.05, 1500)))), 1 / (1 + np.exp(-signal))
    policy = GatePolicy(min_roc_auc=None, baseline_tolerance={"roc_auc": 0.0})
    lo, hi = paired_bootstrap_ci(y, noisy, sharp, "roc_auc")
    assert lo < 0 < hi  # 75 positives: a slightly noisier model is not distinguishable
    from sklearn.metrics import roc_auc_score

    base = {"kind": "logistic_regression", "roc_auc": roc_auc_score(y, sharp), "ci.roc_auc": (lo, hi)}
    assert all(c.passed for c in checks({**GOOD, "roc_auc": roc_auc_score(y, noisy)}, policy, None, (), base))
    worse = 1 / (1 + np.exp(-(signal + rng.normal(0, 3.0, 1500))))
    lo, hi = paired_bootstrap_ci(y, worse, sharp, "roc_auc")
    assert hi < 0
    base["ci.roc_auc"] = (lo, hi)
    failed = [c.message for c in checks({**GOOD, "roc_auc": roc_auc_score(y, worse)}, policy, None, (), base) if not c.passed]
    assert len(failed) == 1 and "95% CI of the difference" in failed[0]
