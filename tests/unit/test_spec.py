import pytest

from components.core.spec import SpecError, load_spec, parse_spec

BASE = {
    "name": "churn",
    "label": {"column": "Churn", "positive": "Yes"},
    "features": {"numeric": ["tenure"], "categorical": ["plan"]},
}


def test_bundled_spec_loads(transactions_spec):
    assert transactions_spec.entity == "transaction_id"
    assert transactions_spec.timestamp == "event_time"
    assert "amount" in transactions_spec.feature_names
    assert transactions_spec.positive == "1"


def test_minimal_spec_generates_entity_and_keeps_text_label():
    spec = parse_spec(BASE)
    assert spec.entity is None and spec.entity_column == "row_id"
    assert spec.positive == "Yes" and spec.negative is None
    assert spec.source_columns == ["Churn", "tenure", "plan"]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"colour": "blue"}, "unknown key"),
        ({"label": {"column": "Churn"}}, "positive"),
        ({"features": {"numeric": ["a", "a"]}}, "more than once"),
        ({"features": {"numeric": ["label"]}}, "reserved"),
        ({"features": {"numeric": ["Churn"]}}, "also listed as a feature"),
        ({"features": {}}, "at least one"),
        ({"features": {"numeric": {"x": {"min": 5, "max": 1}}}}, "greater than max"),
        ({"name": "bad name"}, "letters, digits"),
    ],
)
def test_malformed_specs_name_the_problem(change, message):
    with pytest.raises(SpecError, match=message):
        parse_spec({**BASE, **change})


def test_missing_spec_file_is_a_clear_error(tmp_path):
    with pytest.raises(SpecError, match="not found"):
        load_spec(str(tmp_path / "nope.yaml"))
    with pytest.raises(SpecError, match="no bundled dataset spec"):
        load_spec("does_not_exist")


def test_an_unknown_bundled_spec_lists_the_bundled_ones_and_suggests_the_close_one():
    from components.core.spec import bundled_specs

    assert bundled_specs() == ["transactions"]  # the gate policy beside it is not a spec
    with pytest.raises(
        SpecError,
        match=r"no bundled dataset spec named 'transaction' \(did you mean 'transactions'\?\); "
        r"the bundled ones are transactions",
    ):
        load_spec("transaction")
    with pytest.raises(SpecError, match="the bundled ones are transactions") as caught:
        load_spec("churn")
    assert "did you mean" not in str(caught.value)
    with pytest.raises(SpecError, match="no bundled dataset spec named 'transactions.policy'"):
        load_spec("transactions.policy")  # a bundled file, but a policy: never loaded as a spec


@pytest.mark.parametrize(
    "change, message",
    [
        ({"featuers": {"numeric": ["x"]}}, r"unknown key\(s\) \['featuers'\] \(did you mean 'features'\?\)"),
        ({"label": {"column": "Churn", "positive": "Yes", "negativ": "No"}}, r"did you mean 'negative'\?"),
        ({"features": {"numeric": {"tenure": {"maximum": 5}}}}, r"did you mean 'max'\?"),
    ],
)
def test_a_misspelt_key_gets_did_you_mean(change, message):
    with pytest.raises(SpecError, match=message):
        parse_spec({**BASE, **change})


def test_did_you_mean_for_columns():
    from components.core.spec import did_you_mean

    assert did_you_mean(["amout"], ["amount", "channel"]) == " (did you mean 'amount'?)"
    assert did_you_mean(["Amount"], ["amount"]) == " (did you mean 'amount'?)"
    assert did_you_mean(["amout", "chanel"], ["amount", "channel"]) == " (did you mean 'amount' for 'amout', 'channel' for 'chanel'?)"
    assert did_you_mean(["zzz"], ["amount", "channel"]) == ""
