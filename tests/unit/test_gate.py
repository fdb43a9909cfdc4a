"""The gate's decision and its policy file: pure functions, no model needed (tests/unit/test_evaluate.py runs real models)."""

import numpy as np
import pytest

from components.evaluation.evaluate import GatePolicy, checks, classification_metrics, decide, expected_calibration_error
from components.evaluation.policy import (
    PolicyError,
    SlicePolicy,
    load_policy,
    parse_policy,
    policy_for_run,
    resolve_policy_ref,
    with_overrides,
)
from components.evaluation.slices import slice_gaps

GOOD = {"roc_auc": 0.9, "pr_auc": 0.5, "f1": 0.4, "ece": 0.03, "latency_p99_ms": 0.4}
STRICT = GatePolicy(min_roc_auc=0.75, min_pr_auc=0.3, min_f1=0.3, max_ece=0.05)


def test_first_model_is_judged_on_absolute_thresholds_only():
    passed, reasons = decide(GOOD, STRICT, champion=None)
    assert passed and reasons == []
    assert not [c for c in checks(GOOD, STRICT, None) if c.name.startswith("champion")]


def test_worse_model_fails_with_the_reason():
    passed, reasons = decide({**GOOD, "roc_auc": 0.6}, GatePolicy(min_roc_auc=0.75), None)
    assert not passed and reasons == ["roc_auc 0.6000 is below the minimum 0.7500"]


def test_every_failed_threshold_is_a_reason():
    bad = {**GOOD, "pr_auc": 0.1, "f1": 0.05, "ece": 0.2}
    passed, reasons = decide(bad, STRICT, None)
    assert not passed
    assert reasons == [
        "pr_auc 0.1000 is below the minimum 0.3000",
        "f1 0.0500 is below the minimum 0.3000",
        "ece 0.2000 exceeds the maximum 0.0500",
    ]


def test_slow_model_fails_on_latency():
    passed, reasons = decide({**GOOD, "latency_p99_ms": 12.0}, GatePolicy(max_p99_latency_ms=5), None)
    assert not passed and reasons == ["per-row p99 latency 12.000 ms exceeds the budget 5 ms"]


def test_regression_against_the_champion_fails():
    champion = {"version": "3", "roc_auc": 0.95}
    passed, reasons = decide(GOOD, GatePolicy(max_regression={"roc_auc": 0.01}), champion)
    assert not passed and reasons == ["roc_auc 0.9000 regresses against champion v3 (0.9500) by more than 0.01"]
    assert decide({**GOOD, "roc_auc": 0.945}, GatePolicy(max_regression={"roc_auc": 0.01}), champion)[0]


def test_regression_on_a_lower_is_better_metric():
    champion = {"version": "2", "roc_auc": 0.9, "ece": 0.01}
    policy = GatePolicy(max_regression={"roc_auc": 0.01, "ece": 0.01})
    passed, reasons = decide({**GOOD, "ece": 0.05}, policy, champion)
    assert not passed and reasons == ["ece 0.0500 regresses against champion v2 (0.0100) by more than 0.01"]
    assert decide({**GOOD, "ece": 0.015}, policy, champion)[0]


def test_an_incomparable_champion_is_not_judged():
    champion = {"version": "2", "comparable": False, "why": "champion needs features ['x9']"}
    assert decide(GOOD, GatePolicy(), champion) == (True, [])


def test_nan_metric_never_passes():
    assert not decide({**GOOD, "roc_auc": float("nan")}, GatePolicy(), None)[0]
    assert not decide({k: v for k, v in GOOD.items() if k != "f1"}, STRICT, None)[0]  # missing counts as NaN


def _slice(attribute, value, rows, positives, roc_auc, gated=True):
    return {"attribute": attribute, "value": value, "rows": rows, "positives": positives, "gated": gated, "roc_auc": roc_auc}


def test_slice_gap_is_judged_only_between_slices_large_enough():
    policy = SlicePolicy(attributes=("country",), min_rows=100, min_positives=10, max_gap={"roc_auc": 0.1})
    table = [_slice("country", "A", 500, 50, 0.90), _slice("country", "B", 400, 40, 0.70), _slice("country", "C", 20, 2, 0.20, gated=False)]
    gaps = slice_gaps(table, policy)
    assert gaps == [
        {
            "attribute": "country",
            "metric": "roc_auc",
            "limit": 0.1,
            "slices": 2,
            "best": "A",
            "best_value": 0.9,
            "worst": "B",
            "worst_value": 0.7,
            "gap": pytest.approx(0.2),
        }
    ]
    passed, reasons = decide(GOOD, GatePolicy(slices=policy), None, gaps)
    assert not passed
    assert reasons == ["roc_auc gap across country slices is 0.2000 (A 0.9000 vs B 0.7000), above the maximum 0.1000"]
    # the tiny slice alone would be a huge gap, but it is reported, not gated
    only_tiny = slice_gaps([table[0], table[2]], policy)
    assert "gap" not in only_tiny[0] and decide(GOOD, GatePolicy(slices=policy), None, only_tiny)[0]


def test_metrics_on_known_values():
    y = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.4, 0.35, 0.8])
    m = classification_metrics(y, p, threshold=0.5)
    assert m["roc_auc"] == 0.75 and m["precision"] == 1.0 and m["recall"] == 0.5 and m["fpr"] == 0.0
    assert expected_calibration_error(np.array([1, 0]), np.array([1.0, 0.0])) == 0.0
    # two bins: scores 0.2 with 50% positives, 0.9 with 100%: ECE = 0.5*0.3 + 0.5*0.1
    assert expected_calibration_error(np.array([0, 1, 1, 1]), np.array([0.2, 0.2, 0.9, 0.9])) == pytest.approx(0.2)


# --- the policy file ------------------------------------------------------------------------------------


def test_bundled_policy_is_the_one_beside_the_spec():
    policy = policy_for_run("", "transactions", "transactions")
    assert policy.source.endswith("transactions.policy.yaml") and policy.version >= 1
    assert policy.slices.attributes == ("country", "channel") and "roc_auc" in policy.slices.max_gap
    assert policy.max_p99_latency_ms == 5.0 and policy.min_roc_auc is not None
    assert load_policy(resolve_policy_ref("transactions", "anything")) == policy


def test_a_spec_path_finds_the_policy_beside_it(tmp_path):
    (tmp_path / "churn.yaml").write_text("name: churn\n")
    assert resolve_policy_ref("", str(tmp_path / "churn.yaml")) is None  # none yet: the defaults apply
    assert policy_for_run("", str(tmp_path / "churn.yaml"), "churn").source.startswith("defaults")
    (tmp_path / "churn.policy.yaml").write_text("version: 2\ndataset: churn\nthresholds: {min_roc_auc: 0.8}\n")
    policy = policy_for_run("", str(tmp_path / "churn.yaml"), "churn")
    assert policy.version == 2 and policy.min_roc_auc == 0.8 and policy.source == str(tmp_path / "churn.policy.yaml")
    with pytest.raises(PolicyError, match="is for dataset 'churn', not 'transactions'"):
        policy_for_run(str(tmp_path / "churn.policy.yaml"), "transactions", "transactions")


def test_overrides_replace_only_what_is_set():
    base = parse_policy(
        {"version": 1, "thresholds": {"min_roc_auc": 0.8}, "champion": {"max_regression": {"roc_auc": 0.01, "pr_auc": 0.03}}}
    )
    assert with_overrides(base) is base  # negative = not set: the file decides
    forced = with_overrides(base, min_roc_auc=1.01, max_regression=0.5)
    assert forced.min_roc_auc == 1.01 and forced.max_regression == {"roc_auc": 0.5, "pr_auc": 0.03}
    assert forced.max_p99_latency_ms == base.max_p99_latency_ms
    assert "overrides" in forced.source and forced.fingerprint() != base.fingerprint()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"thresholds": {"min_roc_auc": 0.8}}, "version: a positive integer"),
        ({"version": 1, "thresholds": {"min_auc": 0.8}}, r"thresholds: unknown key\(s\) \['min_auc'\]"),
        ({"version": 1, "thresholds": {"min_roc_auc": 1.5}}, r"thresholds.min_roc_auc: 1.5 is outside \[0.0, 1.0\]"),
        ({"version": 1, "slices": {"attributes": "country"}}, "slices.attributes: expected a list"),
        ({"version": 1, "slices": {"max_gap": {"auc": 0.1}}}, r"slices.max_gap: unknown key\(s\) \['auc'\]"),
        ({"version": 1, "baseline": {"kind": "xgboost"}}, "baseline.kind: 'xgboost' is not one of"),
        ({"version": 1, "latency": {"max_p99_ms": "fast"}}, "latency.max_p99_ms: expected a number"),
    ],
)
def test_a_malformed_policy_names_the_key(data, message):
    with pytest.raises(PolicyError, match=message):
        parse_policy(data)


def test_a_named_policy_that_does_not_exist_is_an_error(tmp_path):
    with pytest.raises(PolicyError, match="no bundled gate policy named 'nope'"):
        resolve_policy_ref("nope", "transactions")
    with pytest.raises(PolicyError, match="gate policy not found"):
        resolve_policy_ref(str(tmp_path / "missing.policy.yaml"), "transactions")
    (tmp_path / "bad.policy.yaml").write_text("version: [1\n")
    with pytest.raises(PolicyError, match="is not valid YAML"):
        load_policy(str(tmp_path / "bad.policy.yaml"))
