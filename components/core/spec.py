"""The dataset spec: what a user writes to run the pipeline on their own tabular data.

A spec names the label (and its positive class), the numeric and categorical features with optional
ranges and allowed values, and optionally an entity key and an event timestamp. It is plain YAML so
that it can be reviewed in a diff; see README.md ("Bring your own data") for a complete example.

Governance: `sensitive` names the attributes the bias audit groups by (a feature, or a column of the data
used for the audit only, never given to the model); `privacy.pii` names personal columns, which are never
features, are dropped at ingest, and, when one is the entity key, kept only as a keyed hash
(components/core/privacy.py).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from components.core import storage

# Columns the pipeline adds itself; a spec may not use these names for its own features.
GENERATED_ENTITY = "row_id"
EVENT_TIMESTAMP = "event_timestamp"
LABEL = "label"
SOURCE_LINE = "source_line"
RESERVED = {EVENT_TIMESTAMP, LABEL, SOURCE_LINE, "created"}

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class SpecError(ValueError):
    """The dataset spec is malformed or does not match the data."""


@dataclass(frozen=True)
class NumericFeature:
    name: str
    min: float | None = None
    max: float | None = None
    nullable: bool = False


@dataclass(frozen=True)
class CategoricalFeature:
    name: str
    values: tuple[str, ...] | None = None  # the allowed categories; None accepts any value
    nullable: bool = False


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    label: str
    positive: str
    negative: str | None
    numeric: tuple[NumericFeature, ...]
    categorical: tuple[CategoricalFeature, ...]
    entity: str | None = None
    timestamp: str | None = None
    description: str = ""
    max_bad_fraction: float = 0.2
    ttl_days: int = 3650
    sensitive: tuple[str, ...] = ()  # attributes the bias audit groups by (components/evaluation/fairness.py)
    pii: tuple[str, ...] = ()  # personal columns (privacy.pii): never written in clear by the pipeline
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def entity_column(self) -> str:
        """The join key downstream: the spec's entity, or the generated stable row id."""
        return self.entity or GENERATED_ENTITY

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.numeric] + [f.name for f in self.categorical]

    @property
    def source_columns(self) -> list[str]:
        """Columns the input data must have."""
        cols = [self.label, *self.feature_names]
        if self.entity:
            cols.append(self.entity)
        if self.timestamp:
            cols.append(self.timestamp)
        return cols

    @property
    def audit_only(self) -> list[str]:
        """Sensitive attributes that are not features: read for the bias audit only, never given to the model."""
        return [c for c in self.sensitive if c not in self.feature_names]

    @property
    def hashed_entity(self) -> bool:
        """The entity key is personal: it is kept only as a keyed hash (it must stay a join key)."""
        return self.entity is not None and self.entity in self.pii

    @property
    def required_columns(self) -> list[str]:
        """Columns the input data must have: the source columns, the audit-only attributes and every personal
        column (a personal column the data lacks is a mistyped mark, which would leave the real one unmarked)."""
        cols = self.source_columns
        return cols + [c for c in (*self.audit_only, *self.pii) if c not in cols]


_TOP_KEYS = {"name", "description", "label", "features", "entity", "timestamp", "validation", "feature_store", "sensitive", "privacy"}


def did_you_mean(names: list[str], choices: Any) -> str:
    """' (did you mean ...?)' for the names that are close to one of `choices` (a typo), else ''."""
    choices = [str(c) for c in choices]
    pairs = []
    for name in names:
        close = difflib.get_close_matches(str(name), choices, n=1, cutoff=0.6)
        if not close:  # a case or separator slip ("Amount", "card-age") is a typo too
            folded = {c.lower().replace("-", "_").replace(" ", "_"): c for c in choices}
            key = str(name).lower().replace("-", "_").replace(" ", "_")
            close = [folded[key]] if key in folded else []
        if close and close[0] != name:
            pairs.append((name, close[0]))
    if not pairs:
        return ""
    if len(pairs) == 1:
        return f" (did you mean {pairs[0][1]!r}?)"
    return " (did you mean " + ", ".join(f"{b!r} for {a!r}" for a, b in pairs) + "?)"


def _check_keys(where: str, given: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(given) - allowed)
    if unknown:
        raise SpecError(f"{where}: unknown key(s) {unknown}{did_you_mean(unknown, sorted(allowed))}; allowed: {sorted(allowed)}")


def _name(where: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise SpecError(f"{where}: expected a column name, got {value!r}")
    return value


def parse_spec(data: Any) -> DatasetSpec:
    """Build a spec from parsed YAML, raising SpecError with the offending key on any mistake."""
    if not isinstance(data, dict):
        raise SpecError("dataset spec must be a mapping")
    _check_keys("spec", data, _TOP_KEYS)
    name = _name("name", data.get("name"))
    if not _NAME.match(name):
        raise SpecError(f"name: {name!r} must be letters, digits and underscores, starting with a letter")
    label = data.get("label")
    if not isinstance(label, dict):
        raise SpecError("label: expected a mapping with 'column' and 'positive'")
    _check_keys("label", label, {"column", "positive", "negative"})
    if "positive" not in label:
        raise SpecError("label.positive: the value of the positive class is required")
    features = data.get("features") or {}
    _check_keys("features", features, {"numeric", "categorical"})
    numeric = tuple(_numeric(n, o) for n, o in _feature_items("features.numeric", features.get("numeric")))
    categorical = tuple(_categorical(n, o) for n, o in _feature_items("features.categorical", features.get("categorical")))
    if not numeric and not categorical:
        raise SpecError("features: at least one numeric or categorical feature is required")
    validation = data.get("validation") or {}
    _check_keys("validation", validation, {"max_bad_fraction"})
    store = data.get("feature_store") or {}
    _check_keys("feature_store", store, {"ttl_days"})
    privacy = data.get("privacy") or {}
    if not isinstance(privacy, dict):
        raise SpecError("privacy: expected a mapping, e.g. {pii: [customer_email]}")
    _check_keys("privacy", privacy, {"pii"})
    spec = DatasetSpec(
        name=name,
        description=str(data.get("description", "")),
        label=_name("label.column", label.get("column")),
        positive=str(label["positive"]),
        negative=None if label.get("negative") is None else str(label["negative"]),
        numeric=numeric,
        categorical=categorical,
        entity=None if data.get("entity") is None else _name("entity", data["entity"]),
        timestamp=None if data.get("timestamp") is None else _name("timestamp", data["timestamp"]),
        max_bad_fraction=float(validation.get("max_bad_fraction", 0.2)),
        ttl_days=int(store.get("ttl_days", 3650)),
        sensitive=_columns("sensitive", data.get("sensitive")),
        pii=_columns("privacy.pii", privacy.get("pii")),
    )
    _check_names(spec)
    _check_governance(spec)
    return spec


def _columns(where: str, value: Any) -> tuple[str, ...]:
    """A list of column names (a single name is a list of one), each once."""
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        raise SpecError(f"{where}: expected a list of column names, got {value!r}")
    names = [_name(where, v) for v in items]
    for n in names:
        if not _NAME.match(n):
            raise SpecError(f"{where}: {n!r} is not a valid column name (letters, digits, underscores)")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise SpecError(f"{where}: listed more than once: {dupes}")
    return tuple(names)


def _check_governance(spec: DatasetSpec) -> None:
    """Sensitive and personal columns: what each may be. Whether the data has them is checked with the data."""
    for where, names in (("sensitive", spec.sensitive), ("privacy.pii", spec.pii)):
        for n in names:
            if n in RESERVED or n == GENERATED_ENTITY:
                raise SpecError(f"{where}: {n!r} is a column the pipeline makes itself, not one of the data")
            if n == spec.label:
                raise SpecError(f"{where}: {n!r} is the label column")
            if n == spec.timestamp:
                raise SpecError(f"{where}: {n!r} is the timestamp column")
    for n in spec.sensitive:
        if n == spec.entity:
            raise SpecError(f"sensitive: {n!r} is the entity key (one group per row): name a group attribute such as country")
        if n in spec.pii:
            raise SpecError(f"sensitive: {n!r} is also personal (privacy.pii), which is dropped at ingest, so it cannot be audited")
    features = spec.feature_names
    for n in spec.pii:
        if n in features:
            raise SpecError(
                f"privacy.pii: {n!r} is a feature; personal data is not a model input (the feature store, the bundle's "
                "vocabularies and the request logs would hold it): remove it from features or from privacy.pii"
            )


def check_pii_key(spec: DatasetSpec) -> None:
    """A personal entity key is stored only as HMAC-SHA256 with MLWF_PII_HASH_KEY: without the key, stop now."""
    if not spec.hashed_entity:
        return
    from components.core.settings import get_settings  # read when a spec is loaded, never at import

    if not get_settings().pii_hash_key:
        raise SpecError(
            f"privacy.pii: the entity key {spec.entity!r} is personal and no hash key is configured: set MLWF_PII_HASH_KEY "
            "(a random secret of at least 16 characters; on a cluster from a Secret) so it is kept only as a keyed hash"
        )


def _feature_items(where: str, value: Any) -> list[tuple[str, dict[str, Any]]]:
    if value is None:
        return []
    if isinstance(value, list):  # a bare list of names
        return [(_name(where, v), {}) for v in value]
    if isinstance(value, dict):
        return [(_name(where, k), v or {}) for k, v in value.items()]
    raise SpecError(f"{where}: expected a list of names or a mapping of name to options")


def _numeric(name: str, opts: dict[str, Any]) -> NumericFeature:
    _check_keys(f"features.numeric.{name}", opts, {"min", "max", "nullable"})
    lo, hi = opts.get("min"), opts.get("max")
    if lo is not None and hi is not None and float(lo) > float(hi):
        raise SpecError(f"features.numeric.{name}: min {lo} is greater than max {hi}")
    return NumericFeature(
        name,
        None if lo is None else float(lo),
        None if hi is None else float(hi),
        bool(opts.get("nullable", False)),
    )


def _categorical(name: str, opts: dict[str, Any]) -> CategoricalFeature:
    _check_keys(f"features.categorical.{name}", opts, {"values", "nullable"})
    values = opts.get("values")
    return CategoricalFeature(name, None if values is None else tuple(str(v) for v in values), bool(opts.get("nullable", False)))


def _check_names(spec: DatasetSpec) -> None:
    names = spec.feature_names
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise SpecError(f"features: listed more than once: {dupes}")
    for n in names:
        if not _NAME.match(n):
            raise SpecError(f"features: {n!r} is not a valid feature name (letters, digits, underscores)")
        if n in RESERVED:
            raise SpecError(f"features: {n!r} is reserved by the pipeline; rename the column in the spec")
    if spec.label in names:
        raise SpecError(f"label.column {spec.label!r} is also listed as a feature")
    if spec.entity and spec.entity in names:
        raise SpecError(f"entity {spec.entity!r} is also listed as a feature")


def _bundled_dir() -> Path:
    return Path(str(resources.files("components") / "datasets"))


def bundled_specs() -> list[str]:
    """The names of the dataset specs that ship with the project (their gate policies are not specs)."""
    return sorted(p.stem for p in _bundled_dir().glob("*.yaml") if not p.name.endswith(".policy.yaml"))


def bundled_spec_path(name: str) -> Path:
    path = _bundled_dir() / f"{name}.yaml"
    if name not in bundled_specs() or not path.exists():
        known = bundled_specs()
        raise SpecError(
            f"no bundled dataset spec named {name!r}{did_you_mean([name], known)}; the bundled ones are "
            f"{', '.join(known) or 'none'}; or give the path of a YAML spec (see README.md, 'Bring your own data')"
        )
    return path


def spec_uri(ref: str) -> str:
    """Where a spec reference points: a local path or s3:// URI as given, or a bundled spec's file.
    The validation suite lives beside it (components/data/suite.py `suite_path`)."""
    if not (storage.is_s3(ref) or ref.endswith((".yaml", ".yml")) or "/" in ref):
        return str(bundled_spec_path(ref))
    return ref


def load_spec(ref: str) -> DatasetSpec:
    """Load a spec from a local path, an s3:// URI, or the name of a spec bundled with the project."""
    ref = spec_uri(ref)
    if not storage.is_s3(ref) and not Path(ref).exists():
        raise SpecError(f"dataset spec not found: {ref}")
    try:
        data = yaml.safe_load(storage.read_bytes(ref))
    except yaml.YAMLError as err:
        raise SpecError(f"dataset spec {ref} is not valid YAML: {err}") from err
    spec = parse_spec(data)
    check_pii_key(spec)
    return spec
