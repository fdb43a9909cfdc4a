"""Personal data in the spec (privacy.pii, sensitive) and the one redaction rule (components/core/privacy.py)."""

import hashlib
import hmac

import pandas as pd
import pytest
import yaml

from components.core import privacy
from components.core.spec import SpecError, load_spec, parse_spec

KEY = "k" * 32
BASE = """
name: t
label: {column: y, positive: 1}
entity: customer_email
features:
  numeric: [amount]
  categorical: [country]
"""


def spec(extra: str):
    return parse_spec(yaml.safe_load(BASE + extra))


def test_sensitive_and_pii_parse():
    s = spec("sensitive: [country, age_band]\nprivacy: {pii: [customer_email, customer_name]}\n")
    assert s.sensitive == ("country", "age_band") and s.audit_only == ["age_band"]
    assert s.hashed_entity and s.pii == ("customer_email", "customer_name")
    assert s.required_columns[-2:] == ["age_band", "customer_name"]  # the data must have them too


@pytest.mark.parametrize(
    "extra, message",
    [
        ("privacy: {pii: [amount]}\n", "is a feature; personal data is not a model input"),
        ("privacy: {pii: [y]}\n", "is the label column"),
        ("privacy: {pii: [event_timestamp]}\n", "pipeline makes itself"),
        ("privacy: {pii: [a, a]}\n", "listed more than once"),
        ("privacy: {pii_columns: [a]}\n", "unknown key"),
        ("sensitive: [customer_email]\n", "is the entity key"),
        ("sensitive: [name]\nprivacy: {pii: [name]}\n", "also personal"),
        ("sensitive: country\nprivacy: [x]\n", "privacy: expected a mapping"),
        ('sensitive: ["bad name"]\n', "not a valid column name"),
    ],
)
def test_bad_governance_is_a_one_line_error(extra, message):
    with pytest.raises(SpecError, match=message) as err:
        spec(extra)
    assert "\n" not in str(err.value)


def test_personal_entity_without_a_key_stops_at_spec_load(tmp_path, monkeypatch):
    path = tmp_path / "t.yaml"
    path.write_text(BASE + "privacy: {pii: [customer_email]}\n")
    monkeypatch.delenv("MLWF_PII_HASH_KEY", raising=False)
    with pytest.raises(SpecError, match="MLWF_PII_HASH_KEY"):
        load_spec(str(path))
    monkeypatch.setenv("MLWF_PII_HASH_KEY", "short")
    with pytest.raises(ValueError, match="at least 16 characters"):
        load_spec(str(path))
    monkeypatch.setenv("MLWF_PII_HASH_KEY", KEY)
    assert load_spec(str(path)).hashed_entity


def test_settings_never_show_the_key(monkeypatch):
    from components.core.settings import get_settings

    monkeypatch.setenv("MLWF_PII_HASH_KEY", KEY)
    settings = get_settings()
    assert settings.pii_hash_key == KEY and KEY not in repr(settings)
    rule = privacy.rule_for(spec("privacy: {pii: [customer_email]}\n"), settings.pii_hash_key)
    assert KEY not in repr(rule)


def test_redaction_drops_and_hashes_with_hmac_sha256():
    s = spec("privacy: {pii: [customer_email, customer_name]}\n")
    rule = privacy.rule_for(s, KEY)
    frame = pd.DataFrame({"customer_email": ["a@x.org", None, "a@x.org"], "customer_name": ["Ann", "Bo", "Ann"], "amount": [1, 2, 3]})
    out = privacy.redact_frame(rule, frame)
    expected = hmac.new(KEY.encode(), b"a@x.org", hashlib.sha256).hexdigest()
    assert list(out.columns) == ["customer_email", "amount"]
    assert out["customer_email"].tolist() == [expected, None, expected]  # still a join key; missing stays missing
    assert "customer_email" in frame.columns and frame["customer_email"][0] == "a@x.org"  # the input is not changed
    row = privacy.redact_row(rule, {"customer_email": "a@x.org", "customer_name": "Ann", "amount": 1})
    assert row == {"customer_email": expected, "amount": 1}
    assert privacy.key_id(KEY.encode()) != privacy.key_id(b"another key of enough length")
    with pytest.raises(privacy.PrivacyError, match="no hash key"):
        privacy.rule_for(s, None)


def test_the_bundled_spec_audits_country():
    s = load_spec("transactions")
    assert s.sensitive == ("country",) and s.audit_only == [] and s.pii == ()


def test_delayed_labels_of_a_personal_entity_join_on_its_keyed_hash(tmp_path, monkeypatch):
    """The request logs hold the keyed hash of a personal entity key; the monitor hashes the labels' clear keys the
    same way before the join (and leaves a non-personal key alone)."""
    from components.core.settings import get_settings
    from components.monitoring.live import join_labels
    from components.monitoring.monitor import labels_for_join
    from components.monitoring.records import Champion

    monkeypatch.setenv("MLWF_PII_HASH_KEY", KEY)
    path = tmp_path / "personal.yaml"
    path.write_text(BASE + "privacy: {pii: [customer_email]}\n")
    labels = pd.DataFrame({"entity": ["a@x.org", "b@x.org"], "label": [1, 0], "ts": pd.to_datetime(["2026-01-01"] * 2, utc=True)})
    champion = Champion(version="1", profile={}, signature={"lineage": {"dataset": str(path)}})
    hashed = labels_for_join(labels, champion, get_settings())
    digest = hmac.new(KEY.encode(), b"a@x.org", hashlib.sha256).hexdigest()
    assert hashed["entity"].tolist()[0] == digest and "a@x.org" not in hashed["entity"].tolist()
    logs = pd.DataFrame({"ts": pd.to_datetime(["2026-01-02"], utc=True), "entity": [digest], "probability": [0.9]})
    assert join_labels(logs, hashed)["label_true"].tolist() == [1]
    plain = tmp_path / "plain.yaml"
    plain.write_text(BASE)
    same = labels_for_join(labels, Champion(version="1", profile={}, signature={"lineage": {"dataset": str(plain)}}), get_settings())
    assert same["entity"].tolist() == ["a@x.org", "b@x.org"]
