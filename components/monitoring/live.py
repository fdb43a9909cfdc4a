"""Live performance: served predictions joined to their delayed labels, then ROC-AUC, Brier and calibration.

Labels arrive late (a chargeback weeks after the payment): a file of entity, label, ts. The latest label per
entity wins; a prediction without a label is left out. The calibration error and the reliability table come
from core/stats, the same bins and number the evaluation gate uses.
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd

from components.core import storage
from components.core.stats import calibration_bins, expected_calibration_error
from components.monitoring.records import MonitorError


def read_labels(uri: str) -> pd.DataFrame:
    """Delayed labels: entity, label (0/1), ts (when the label became known). CSV, Parquet or JSONL."""
    try:
        data = storage.read_bytes(uri)
    except (FileNotFoundError, OSError) as err:
        raise MonitorError(f"labels file not readable: {uri}: {err}") from err
    if uri.endswith(".parquet"):
        frame = pd.read_parquet(io.BytesIO(data))
    elif uri.endswith((".jsonl", ".json")):
        frame = pd.read_json(io.BytesIO(data), lines=True)
    else:
        frame = pd.read_csv(io.BytesIO(data), dtype={"entity": str})
    missing = {"entity", "label"} - set(frame.columns)
    if missing:
        raise MonitorError(f"labels file {uri} lacks column(s) {sorted(missing)}; expected entity, label, ts")
    labels = pd.to_numeric(frame["label"], errors="coerce")
    if labels.isna().any() or not labels.isin([0, 1]).all():
        raise MonitorError(f"labels file {uri}: label must be 0 or 1 on every row")
    out = pd.DataFrame({"entity": frame["entity"].astype(str), "label": labels.astype(int)})
    out["ts"] = pd.to_datetime(frame["ts"], utc=True) if "ts" in frame.columns else pd.NaT
    return out


def join_labels(logs: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """Logged predictions that have a label: the latest label per entity wins (labels get corrected)."""
    if logs.empty or "entity" not in logs.columns:
        return pd.DataFrame(columns=["ts", "probability", "label_true"])
    served = logs[logs["entity"].notna()][["ts", "entity", "probability"]].copy()
    served["entity"] = served["entity"].astype(str)
    latest = labels.sort_values("ts", kind="stable").drop_duplicates("entity", keep="last")
    joined = served.merge(latest[["entity", "label"]].rename(columns={"label": "label_true"}), on="entity", how="inner")
    return joined.sort_values("ts", kind="stable").reset_index(drop=True)


def live_performance(joined: pd.DataFrame, buckets: int = 8) -> tuple[pd.DataFrame, pd.DataFrame]:
    """ROC-AUC, Brier and calibration error per time bucket, and one reliability table for the window."""
    from sklearn.metrics import roc_auc_score

    y = joined["label_true"].to_numpy(dtype=int)
    p = joined["probability"].to_numpy(dtype=np.float64)
    codes = pd.cut(joined["ts"].astype("int64"), bins=max(1, min(buckets, len(joined))), labels=False) if len(joined) else []
    rows = []
    for b in sorted(set(codes)):
        mask = np.asarray(codes) == b
        yb, pb = y[mask], p[mask]
        auc = float(roc_auc_score(yb, pb)) if len(set(yb.tolist())) == 2 else float("nan")
        rows.append(
            {
                "from": joined["ts"][mask].min(),
                "to": joined["ts"][mask].max(),
                "rows": int(mask.sum()),
                "positives": int(yb.sum()),
                "roc_auc": auc,
                "brier": float(np.mean((pb - yb) ** 2)),
                "ece": expected_calibration_error(yb, pb),
            }
        )
    perf = pd.DataFrame(rows)
    calib = pd.DataFrame(calibration_bins(y, p))  # the bins the ECE is computed on, so the plot shows that number
    return perf, calib
