"""A seeded generator of realistic card transactions for fraud scoring: the demo's data.

Fraud depends on the features (large amounts, night hours, online channel, risky merchant categories,
far from home, bursts of activity, new cards), so there is a signal to learn. Switches inject bad records
(for the quarantine) and drift (for the monitor). Rows are generated in fixed-size chunks, each seeded
from (seed, chunk index), so 10M rows need no more memory than one chunk and a row's values do not
depend on how many rows were asked for.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

CATEGORIES = ("grocery", "restaurant", "fuel", "travel", "online_retail", "electronics", "jewelry", "gaming")
CATEGORY_P = np.array([0.26, 0.2, 0.14, 0.08, 0.16, 0.07, 0.03, 0.06])
RISKY = np.array([c in ("electronics", "jewelry", "gaming") for c in CATEGORIES])
CHANNELS = ("pos", "online", "atm")
CHANNEL_P = np.array([0.62, 0.3, 0.08])
COUNTRIES = ("US", "GB", "DE", "FR", "BR", "IN", "NG", "CN")
COUNTRY_P = np.array([0.55, 0.1, 0.09, 0.08, 0.06, 0.05, 0.04, 0.03])
START = pd.Timestamp("2026-01-01T00:00:00Z")
CHUNK = 1_000_000


@dataclass(frozen=True)
class GenConfig:
    rows: int = 20_000
    seed: int = 7
    days: int = 90
    bad_fraction: float = 0.0  # share of rows corrupted in one of several ways
    drift: float = 0.0  # 0 = none, 1 = strong shift in amounts, channel and category mix


def _chunk(cfg: GenConfig, index: int, size: int) -> pd.DataFrame:
    rng = np.random.default_rng([cfg.seed, index])
    n_cards = max(50, cfg.rows // 25)
    card = rng.integers(0, n_cards, size)
    seconds = np.sort(rng.uniform(0, cfg.days * 86400, size))
    ts = START + pd.to_timedelta(seconds, unit="s")
    hour = ts.hour.to_numpy()
    cat_p = CATEGORY_P.copy()
    chan_p = CHANNEL_P.copy()
    if cfg.drift:
        cat_p = cat_p * np.where(RISKY | (np.array(CATEGORIES) == "online_retail"), 1 + 2 * cfg.drift, 1)
        chan_p = chan_p * np.array([1, 1 + 2 * cfg.drift, 1])
    category = rng.choice(len(CATEGORIES), size, p=cat_p / cat_p.sum())
    channel = rng.choice(len(CHANNELS), size, p=chan_p / chan_p.sum())
    country = rng.choice(len(COUNTRIES), size, p=COUNTRY_P)
    amount = np.round(rng.lognormal(3.6 + 0.5 * cfg.drift + 0.6 * RISKY[category], 1.0, size), 2)
    card_age = rng.gamma(2.0, 400.0, size).round()
    distance = np.round(rng.exponential(12 + 20 * cfg.drift, size) + 60 * (country != 0) * rng.random(size), 1)
    burst = rng.poisson(1.0 + 0.8 * (card % 17 == 0), size)
    night = (hour < 6).astype(float)
    logit = (
        -4.9
        + 0.85 * np.log(amount / 40.0)
        + 1.1 * night
        + 0.9 * (channel == 1)
        + 1.0 * RISKY[category]
        + 0.012 * distance
        + 0.35 * burst
        - 0.0009 * card_age
    )
    fraud = (rng.random(size) < 1 / (1 + np.exp(-logit))).astype(int)
    offset = index * CHUNK
    return pd.DataFrame(
        {
            "transaction_id": [f"tx{offset + i:010d}" for i in range(size)],
            "card_id": [f"card{c:07d}" for c in card],
            "event_time": ts.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "amount": amount,
            "hour_of_day": hour,
            "card_age_days": card_age,
            "distance_km": distance,
            "txn_count_24h": burst,
            "merchant_category": np.asarray(CATEGORIES)[category],
            "channel": np.asarray(CHANNELS)[channel],
            "country": np.asarray(COUNTRIES)[country],
            "is_fraud": fraud,
        }
    )


def _corrupt(df: pd.DataFrame, fraction: float, rng: np.random.Generator) -> pd.DataFrame:
    """Damage a share of rows, each in one way the validation suite must catch."""
    n_bad = int(round(len(df) * fraction))
    if n_bad == 0:
        return df
    df = df.astype({"amount": object, "hour_of_day": object, "is_fraud": object, "event_time": object})
    rows = rng.choice(len(df), n_bad, replace=False)
    kinds = np.arange(n_bad) % 7
    for row, kind in zip(rows, kinds):
        if kind == 0:
            df.at[row, "amount"] = "not-a-number"
        elif kind == 1:
            df.at[row, "amount"] = -abs(float(df.at[row, "amount"]))
        elif kind == 2:
            df.at[row, "merchant_category"] = "unknown_category"
        elif kind == 3:
            df.at[row, "channel"] = None
        elif kind == 4:
            df.at[row, "event_time"] = "2099-01-01T00:00:00Z"
        elif kind == 5:
            other = (row + 1) % len(df)  # a true duplicate key: same id and same event time
            df.at[row, "transaction_id"] = df.at[other, "transaction_id"]
            df.at[row, "event_time"] = df.at[other, "event_time"]
        else:
            df.at[row, "hour_of_day"] = 31
    return df


def generate(cfg: GenConfig) -> pd.DataFrame:
    if cfg.rows <= 0:
        raise ValueError("rows must be positive")
    parts = [_chunk(cfg, i, min(CHUNK, cfg.rows - i * CHUNK)) for i in range((cfg.rows + CHUNK - 1) // CHUNK)]
    df = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
    if cfg.bad_fraction:
        df = _corrupt(df, cfg.bad_fraction, np.random.default_rng([cfg.seed, 10_000]))
    return df


def write(cfg: GenConfig, path: str) -> str:
    """Generate and write CSV or Parquet (by extension), atomically."""
    df = generate(cfg)
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp")
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.suffix == ".parquet":
        df.astype({c: str for c in df.columns if df[c].dtype == object}).to_parquet(tmp, index=False)
    else:
        df.to_csv(tmp, index=False)
    tmp.replace(target)
    return str(target)
