import numpy as np

from components.evaluate import GatePolicy, classification_metrics, decide, expected_calibration_error

GOOD = {"roc_auc": 0.9, "pr_auc": 0.5, "latency_p99_ms": 0.4}


def test_first_model_is_judged_on_absolute_thresholds_only():
    passed, reasons = decide(GOOD, GatePolicy(), champion=None)
    assert passed and reasons == []


def test_worse_model_fails_with_the_reason():
    passed, reasons = decide({**GOOD, "roc_auc": 0.6}, GatePolicy(min_roc_auc=0.75), None)
    assert not passed and reasons == ["roc_auc 0.6000 is below the minimum 0.7500"]


def test_slow_model_fails_on_latency():
    passed, reasons = decide({**GOOD, "latency_p99_ms": 12.0}, GatePolicy(max_p99_latency_ms=5), None)
    assert not passed and "latency" in reasons[0]


def test_regression_against_the_champion_fails():
    champion = {"version": "3", "roc_auc": 0.95}
    passed, reasons = decide(GOOD, GatePolicy(max_regression=0.01), champion)
    assert not passed and "regresses against champion v3" in reasons[0]
    assert decide({**GOOD, "roc_auc": 0.945}, GatePolicy(max_regression=0.01), champion)[0]


def test_nan_metric_never_passes():
    assert not decide({**GOOD, "roc_auc": float("nan")}, GatePolicy(), None)[0]


def test_metrics_on_known_values():
    y = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.4, 0.35, 0.8])
    m = classification_metrics(y, p, threshold=0.5)
    assert m["roc_auc"] == 0.75 and m["precision"] == 1.0 and m["recall"] == 0.5
    assert expected_calibration_error(np.array([1, 0]), np.array([1.0, 0.0])) == 0.0
