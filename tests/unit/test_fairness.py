"""The bias audit (components/evaluation/fairness.py): per-group rates, parity and equalized-odds differences
checked by hand, small and one-class groups reported but not gated, the gate checks and the HTML fragment."""

import json

import numpy as np
import pandas as pd
import pytest

from components.evaluation.fairness import bias_audit, bias_checks, bias_section_html


def _frames():
    # group A: 4 rows, labels 1 1 0 0, scores decide 1 0 1 0 -> selection 0.5, TPR 0.5, FPR 0.5
    # group B: 4 rows, labels 1 0 0 0, scores decide 1 1 1 0 -> selection 0.75, TPR 1.0, FPR 2/3
    # group C: 2 rows (small), labels 1 0, decide 0 0 -> selection 0, TPR 0, FPR 0
    test = pd.DataFrame(
        {
            "country": ["A"] * 4 + ["B"] * 4 + ["C"] * 2,
            "label": [1, 1, 0, 0, 1, 0, 0, 0, 1, 0],
        }
    )
    scores = np.array([0.9, 0.2, 0.7, 0.1, 0.8, 0.6, 0.55, 0.3, 0.4, 0.1])
    train = pd.DataFrame({"country": ["A", "A", "B", "B", "B", "D"], "label": [1, 0, 0, 0, 1, 1]})
    return test, scores, train


def test_rates_and_differences_match_a_hand_computation():
    test, scores, train = _frames()
    audit = bias_audit(test, scores, 0.5, ["country"], train, min_group_rows=3)
    country = audit["attributes"]["country"]
    by = {g["group"]: g for g in country["groups"]}
    assert by["A"]["rows"] == 4 and by["A"]["train_rows"] == 2
    assert by["A"]["selection_rate"] == pytest.approx(0.5)
    assert by["B"]["selection_rate"] == pytest.approx(0.75)
    assert by["B"]["tpr"] == pytest.approx(1.0) and by["B"]["fpr"] == pytest.approx(2 / 3)
    assert by["A"]["base_rate_test"] == pytest.approx(0.5) and by["B"]["base_rate_test"] == pytest.approx(0.25)
    assert by["A"]["base_rate_train"] == pytest.approx(0.5) and by["B"]["base_rate_train"] == pytest.approx(1 / 3)
    # a group seen in training only is reported with its training base rate and no test rates
    assert by["D"]["rows"] == 0 and by["D"]["base_rate_train"] == pytest.approx(1.0) and by["D"]["selection_rate"] is None
    # C (2 rows) is reported, not gated: the differences are over A and B only
    assert by["C"]["gated"] is False and country["gated_groups"] == ["A", "B"]
    assert country["demographic_parity_difference"] == pytest.approx(0.75 - 0.5)
    # max(|TPR_A - TPR_B|, |FPR_A - FPR_B|) = max(0.5, 1/6)
    assert country["equalized_odds_difference"] == pytest.approx(0.5)
    json.dumps(audit)  # JSON-ready: the evaluate step logs it as an artifact


def test_small_groups_change_nothing_and_one_class_groups_leave_equalized_odds():
    test, scores, train = _frames()
    with_small = bias_audit(test, scores, 0.5, ["country"], train, min_group_rows=3)["attributes"]["country"]
    without = bias_audit(test[test.country != "C"], scores[:8], 0.5, ["country"], train, min_group_rows=3)["attributes"]["country"]
    assert with_small["demographic_parity_difference"] == without["demographic_parity_difference"]
    # a large group with no positives has no TPR: it is left out of equalized odds (fairlearn would say TPR 0)
    test2 = pd.concat([test, pd.DataFrame({"country": ["E"] * 3, "label": [0, 0, 0]})], ignore_index=True)
    audit = bias_audit(test2, np.r_[scores, [0.9, 0.9, 0.1]], 0.5, ["country"], train, min_group_rows=3)["attributes"]["country"]
    e = {g["group"]: g for g in audit["groups"]}["E"]
    assert e["tpr"] is None and e["fpr"] == pytest.approx(2 / 3) and e["gated"]
    assert audit["equalized_odds_difference"] == pytest.approx(0.5)
    assert audit["demographic_parity_difference"] == pytest.approx(0.75 - 0.5)  # E (2/3) lies between
    assert any("E" in n for n in audit["notes"])


def test_missing_values_form_their_own_group_and_one_group_is_not_judged():
    test = pd.DataFrame({"country": ["A", None, None, "A"], "label": [1, 0, 1, 0]})
    audit = bias_audit(test, [0.9, 0.1, 0.8, 0.2], 0.5, ["country"], test, min_group_rows=3)
    country = audit["attributes"]["country"]
    assert {g["group"] for g in country["groups"]} == {"A", "(missing)"}
    assert country["demographic_parity_difference"] is None and country["equalized_odds_difference"] is None
    checks = bias_checks(audit, {"demographic_parity_difference": 0.1})
    assert checks[0][0] == "demographic_parity_difference[country]" and checks[0][1] is True and checks[0][2] is None
    assert "not judged" in checks[0][4]


def test_checks_fail_over_the_bound_and_refuse_unknown_bounds():
    test, scores, train = _frames()
    audit = bias_audit(test, scores, 0.5, ["country"], train, min_group_rows=3)
    checks = {c[0]: c for c in bias_checks(audit, {"demographic_parity_difference": 0.3, "equalized_odds_difference": 0.1})}
    assert checks["demographic_parity_difference[country]"][1] is True
    name, passed, value, limit, _ = checks["equalized_odds_difference[country]"]
    assert passed is False and value == pytest.approx(0.5) and limit == 0.1
    with pytest.raises(ValueError, match="unknown metric"):
        bias_checks(audit, {"demographic_parity": 0.1})


def test_bad_input_is_one_line_error():
    test, scores, train = _frames()
    with pytest.raises(ValueError, match="lack the sensitive attribute"):
        bias_audit(test, scores, 0.5, ["gender"], train)
    with pytest.raises(ValueError, match="10 test rows"):
        bias_audit(test, scores[:3], 0.5, ["country"], train)


def test_html_fragment_escapes_group_names_and_marks_failures():
    test, scores, train = _frames()
    test = test.assign(country=test.country.replace({"A": "<script>x</script>"}))
    audit = bias_audit(test, scores, 0.5, ["country"], train, min_group_rows=3)
    html = bias_section_html(audit, bias_checks(audit, {"equalized_odds_difference": 0.1}))
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "By country" in html and "over its bound" in html and "no (too small)" in html
    assert "no bias audit" in bias_section_html({"attributes": {}})
