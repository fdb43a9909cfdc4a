"""Personal data kept out: one rule for every writer (ingest, quarantine, reports, request logs, model cards).

The dataset spec marks personal columns (`privacy.pii`, components/core/spec.py). The rule:
- a personal column that is the entity key is replaced by HMAC-SHA256(key, value) as 64 hex characters: it
  must stay a join key (the feature store, delayed labels and request logs join on it), and a keyed hash
  joins without revealing the value; without the key (MLWF_PII_HASH_KEY, a Secret) it cannot be guessed by
  hashing candidate values, as a plain sha256 of an e-mail address could;
- every other personal column is dropped: nothing downstream needs it.
Ingest applies the rule where the data enters, so the snapshots, the valid and quarantined rows, the feature
store and the training sets hold the hash only; the other writers apply it again to whatever they are given
(idempotent for dropped columns; an already hashed entity is hashed only by the writer that receives clear
values, the model server's request log).
Pure functions only: the key is passed in (the step reads it from components/core/settings.py).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from components.core.spec import DatasetSpec


class PrivacyError(ValueError):
    """Personal data would be written in clear: a hash key is needed and none was given."""


@dataclass(frozen=True)
class PrivacyRule:
    """What to do with each personal column: `drop` them, or replace them by HMAC-SHA256 with `key` (`hashed`)."""

    drop: frozenset[str] = frozenset()
    hashed: frozenset[str] = frozenset()
    key: bytes | None = None

    @property
    def empty(self) -> bool:
        return not self.drop and not self.hashed

    def __repr__(self) -> str:  # the key is a secret: never in a log line or a traceback
        return f"PrivacyRule(drop={sorted(self.drop)}, hashed={sorted(self.hashed)}, key={'set' if self.key else 'none'})"


def rule_for(spec: DatasetSpec, key: str | bytes | None) -> PrivacyRule:
    """The spec's rule: its personal entity key hashed with `key`, every other personal column dropped."""
    hashed = {spec.entity} if spec.hashed_entity and spec.entity else set()
    raw = key.encode() if isinstance(key, str) else key
    if hashed and not raw:
        raise PrivacyError(f"the entity key {spec.entity!r} is personal (privacy.pii) and no hash key was given (MLWF_PII_HASH_KEY)")
    return PrivacyRule(drop=frozenset(spec.pii) - hashed, hashed=frozenset(hashed), key=raw or None)


def keyed_hash(key: bytes, value: Any) -> str:
    """HMAC-SHA256 of the value's text, as hex: the same value and key always give the same join key."""
    return hmac.new(key, str(value).encode("utf-8"), hashlib.sha256).hexdigest()


def hash_values(key: bytes, values: Iterable[Any]) -> list[str | None]:
    """Keyed hashes of `values`; a missing value stays missing (None/NaN is no one's key). Repeated values
    are hashed once (a batch of requests or rows often repeats its keys)."""
    seen: dict[Any, str] = {}
    out: list[str | None] = []
    for v in values:
        if v is None or (isinstance(v, float) and v != v):
            out.append(None)
            continue
        h = seen.get(v)
        if h is None:
            h = seen[v] = keyed_hash(key, v)
        out.append(h)
    return out


def key_id(key: bytes | None) -> str:
    """A short, non-secret name of a key (an HMAC of a constant): tells data hashed with one key from another."""
    return "" if not key else keyed_hash(key, "mlwf key id")[:12]


def _key(rule: PrivacyRule) -> bytes:
    if rule.key is None:
        raise PrivacyError(f"column(s) {sorted(rule.hashed)} must be hashed and the privacy rule has no key")
    return rule.key


def redact_frame(rule: PrivacyRule, frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of `frame` without the dropped columns and with the hashed ones replaced by their keyed hash."""
    if rule.empty:
        return frame
    out = frame.drop(columns=[c for c in frame.columns if c in rule.drop])
    present = [c for c in out.columns if c in rule.hashed]
    if present:
        out = out.copy()
        for c in present:
            out[c] = hash_values(_key(rule), out[c].tolist())
            out[c] = out[c].astype(object)
    return out


def redact_row(rule: PrivacyRule, row: Mapping[str, Any]) -> dict[str, Any]:
    """One record (a dict) under the rule."""
    out = {k: v for k, v in row.items() if k not in rule.drop}
    for c in rule.hashed & out.keys():
        out[c] = hash_values(_key(rule), [out[c]])[0]
    return out


def redact_rows(rule: PrivacyRule, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Records under the rule (request-log rows, report examples)."""
    return [redact_row(rule, r) for r in rows]


def drop_only(rule: PrivacyRule) -> PrivacyRule:
    """The rule for data whose hashed columns were hashed already (ingest's output): drop, never hash twice."""
    return PrivacyRule(drop=rule.drop, key=rule.key)


def describe(spec: DatasetSpec) -> list[str]:
    """What happens to each personal column, in words (the model card and reports; names only, never values)."""
    lines = []
    for c in spec.pii:
        if spec.hashed_entity and c == spec.entity:
            lines.append(f"`{c}` (entity key): kept only as HMAC-SHA256 with a secret key, so it still joins")
        else:
            lines.append(f"`{c}`: dropped at ingest, never stored")
    return lines
