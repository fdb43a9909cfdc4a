import numpy as np

from components.data.datagen import GenConfig, generate


def test_same_seed_same_rows():
    a = generate(GenConfig(rows=2000, seed=3))
    b = generate(GenConfig(rows=2000, seed=3))
    assert a.equals(b)
    assert not a.equals(generate(GenConfig(rows=2000, seed=4)))


def test_has_a_learnable_signal_and_a_realistic_fraud_rate():
    df = generate(GenConfig(rows=20_000))
    rate = df["is_fraud"].mean()
    assert 0.01 < rate < 0.1
    # large night-time online amounts are much riskier than small daytime card-present ones
    risky = df[(df.amount > 200) & (df.hour_of_day < 6) & (df.channel == "online")]
    safe = df[(df.amount < 30) & (df.hour_of_day >= 9) & (df.channel == "pos")]
    assert risky.is_fraud.mean() > 5 * safe.is_fraud.mean()


def test_bad_records_are_injected():
    clean = generate(GenConfig(rows=1400))
    bad = generate(GenConfig(rows=1400, bad_fraction=0.05))
    assert (bad["amount"].astype(str) == "not-a-number").sum() == 10
    assert bad["channel"].isna().sum() == 10
    assert clean["channel"].notna().all()


def test_drift_shifts_amounts():
    base = generate(GenConfig(rows=5000)).amount.astype(float)
    drifted = generate(GenConfig(rows=5000, drift=1.0)).amount.astype(float)
    assert np.median(drifted) > 1.3 * np.median(base)
