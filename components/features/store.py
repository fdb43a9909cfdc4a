"""Features: the Feast feature repo for a dataset, the offline store, materialization and training sets.

The repo's objects are declared from the dataset spec (so bring-your-own data needs no Python), and
applied by the pipeline, never by hand. Training sets come only from point-in-time joins at each
label's event time, so no feature value from after the label can leak in; serving reads the same
FeatureService from the online store, so training and serving see the same features.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from components.core import storage
from components.core.settings import Settings
from components.core.spec import EVENT_TIMESTAMP, LABEL, DatasetSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FeatureRepo:
    """The Feast objects of one dataset."""

    entity: Any
    source: Any
    view: Any

    def service(self, name: str) -> Any:
        from feast import FeatureService

        # What a model version reads: training and serving resolve features through this one object.
        return FeatureService(name=name, features=[self.view], tags={"dataset": self.view.name})


def offline_path(spec: DatasetSpec, settings: Settings) -> str:
    """The offline store of a dataset: Parquet partitioned by event date, `date=YYYY-MM-DD/data.parquet`."""
    return storage.join(settings.feast_offline_root, spec.name)


def _partition(spec: DatasetSpec, settings: Settings, day: str) -> str:
    return storage.join(offline_path(spec, settings), f"date={day}", "data.parquet")


def declare(spec: DatasetSpec, settings: Settings) -> FeatureRepo:
    from feast import Entity, FeatureView, Field, FileSource, ValueType
    from feast.types import Float64, String

    # The thing a label is about; its key joins labels to features.
    entity = Entity(name=spec.entity_column, join_keys=[spec.entity_column], value_type=ValueType.STRING)
    # Validated rows only: the offline store is written by the features step from validate's output.
    source = FileSource(
        name=f"{spec.name}_source",
        path=offline_path(spec, settings),
        timestamp_field=EVENT_TIMESTAMP,
        s3_endpoint_override=_s3_endpoint(),
    )
    # Every feature of the spec, typed; the TTL bounds how stale a value may be at label time.
    view = FeatureView(
        name=spec.name,
        entities=[entity],
        ttl=timedelta(days=spec.ttl_days),
        schema=[Field(name=f.name, dtype=Float64) for f in spec.numeric] + [Field(name=c.name, dtype=String) for c in spec.categorical],
        source=source,
        online=True,
    )
    return FeatureRepo(entity=entity, source=source, view=view)


def _s3_endpoint() -> str | None:
    import os

    return os.environ.get("AWS_ENDPOINT_URL") or None


def repo_config(spec: DatasetSpec, settings: Settings) -> Any:
    from feast.infra.offline_stores.dask import DaskOfflineStoreConfig
    from feast.infra.online_stores.redis import RedisOnlineStoreConfig
    from feast.infra.online_stores.sqlite import SqliteOnlineStoreConfig
    from feast.repo_config import RegistryConfig, RepoConfig

    if settings.feast_registry.startswith(("postgresql", "mysql", "sqlite:")):
        from feast.infra.registry.sql import SqlRegistryConfig

        registry: Any = SqlRegistryConfig(registry_type="sql", path=settings.feast_registry, cache_ttl_seconds=0)
    else:
        _ensure_parent(settings.feast_registry)
        registry = RegistryConfig(registry_type="file", path=settings.feast_registry, cache_ttl_seconds=0)
    if settings.feast_online.startswith("redis://"):
        online: Any = RedisOnlineStoreConfig(connection_string=settings.feast_online.removeprefix("redis://"))
    else:
        _ensure_parent(settings.feast_online)
        online = SqliteOnlineStoreConfig(path=settings.feast_online)
    return RepoConfig(
        project=spec.name,
        provider="local",
        registry=registry,
        online_store=online,
        offline_store=DaskOfflineStoreConfig(type="file"),
        entity_key_serialization_version=3,
    )


def _ensure_parent(path: str) -> None:
    if not storage.is_s3(path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)


def open_store(spec: DatasetSpec, settings: Settings) -> Any:
    from feast import FeatureStore

    return FeatureStore(config=repo_config(spec, settings))


def service_name(store: Any, spec: DatasetSpec) -> str:
    """The FeatureService for the current feature set: reuse one with the same features, else the next version."""
    wanted = sorted(spec.feature_names)
    existing = [s for s in store.list_feature_services() if s.name.startswith(f"{spec.name}_v")]
    for svc in existing:
        names = sorted(f.name for proj in svc.feature_view_projections for f in proj.features)
        if names == wanted:
            return str(svc.name)
    versions = [int(s.name.rsplit("_v", 1)[1]) for s in existing if s.name.rsplit("_v", 1)[1].isdigit()]
    return f"{spec.name}_v{max(versions, default=0) + 1}"


@dataclass(frozen=True)
class FeatureOutcome:
    service: str
    train: pd.DataFrame
    test: pd.DataFrame
    materialized_rows: int


def write_offline(valid: pd.DataFrame, spec: DatasetSpec, settings: Settings) -> list[str]:
    """Merge validated rows into the date partitions they belong to; returns the partitions written.

    A partition is rewritten whole (temporary name, then rename) as the union of what it held and the new
    rows, deduplicated on (entity, event time) with the newest write winning: a rerun on the same data
    rewrites identical files, and new data only touches its own dates.
    """
    cols = [spec.entity_column, EVENT_TIMESTAMP, *spec.feature_names]
    keys = [spec.entity_column, EVENT_TIMESTAMP]
    written = []
    frame = valid[cols]
    days = frame[EVENT_TIMESTAMP].dt.strftime("%Y-%m-%d")
    for day, rows in frame.groupby(days, sort=True):
        path = _partition(spec, settings, str(day))
        if storage.exists(path):
            rows = pd.concat([pd.read_parquet(io.BytesIO(storage.read_bytes(path))), rows], ignore_index=True)
        rows = rows.drop_duplicates(keys, keep="last").sort_values(keys, kind="stable")
        buf = io.BytesIO()
        rows.to_parquet(buf, index=False)
        storage.write_bytes(path, buf.getvalue())
        written.append(path)
    return written


def _partition_days(spec: DatasetSpec, settings: Settings, start: datetime, end: datetime) -> list[str]:
    first, last = start.date().isoformat(), end.date().isoformat()
    root = offline_path(spec, settings)
    if storage.is_s3(root):
        days, day = [], start.date()
        while day <= end.date():
            if storage.exists(_partition(spec, settings, day.isoformat())):
                days.append(day.isoformat())
            day += timedelta(days=1)
        return days
    found = sorted(p.name.removeprefix("date=") for p in Path(root).glob("date=*") if (p / "data.parquet").exists())
    return [d for d in found if first <= d <= last]


def read_offline(spec: DatasetSpec, settings: Settings, start: datetime, end: datetime) -> pd.DataFrame:
    """The offline rows whose event date falls in [start, end] (whole partitions; callers filter by time)."""
    parts = []
    for day in _partition_days(spec, settings, start, end):
        parts.append(pd.read_parquet(io.BytesIO(storage.read_bytes(_partition(spec, settings, day)))))
    if not parts:
        return pd.DataFrame(columns=[spec.entity_column, EVENT_TIMESTAMP, *spec.feature_names])
    return pd.concat(parts, ignore_index=True)


def time_split(df: pd.DataFrame, test_fraction: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The latest `test_fraction` of rows by event time is held out: evaluation looks at the future."""
    ordered = df.sort_values([EVENT_TIMESTAMP], kind="stable").reset_index(drop=True)
    cut = int(round(len(ordered) * (1 - test_fraction)))
    if cut <= 0 or cut >= len(ordered):
        raise ValueError(f"cannot split {len(ordered)} rows into train and test at fraction {test_fraction}")
    return ordered.iloc[:cut].reset_index(drop=True), ordered.iloc[cut:].reset_index(drop=True)


def point_in_time(store: Any, service: str, labels: pd.DataFrame, entity: str) -> pd.DataFrame:
    """Feast's point-in-time join, keeping every label row.

    Feast 0.67's file (dask) offline store drops label rows whose feature values are all older than the
    TTL instead of returning nulls; a left join back onto the labels restores them, so no label is lost
    silently and expired features come back null as documented.
    """
    keys = [entity, EVENT_TIMESTAMP]
    joined = store.get_historical_features(entity_df=labels, features=store.get_feature_service(service)).to_df()
    joined = joined.drop(columns=[c for c in labels.columns if c not in keys and c in joined.columns])
    joined[EVENT_TIMESTAMP] = pd.to_datetime(joined[EVENT_TIMESTAMP], utc=True)
    labels = labels.assign(**{EVENT_TIMESTAMP: pd.to_datetime(labels[EVENT_TIMESTAMP], utc=True)})
    out = labels.merge(joined.drop_duplicates(keys), on=keys, how="left", validate="many_to_one")
    if len(out) != len(labels):
        raise RuntimeError(f"point-in-time join changed the row count: {len(labels)} labels, {len(out)} rows")
    return out


def materialize_online(store: Any, spec: DatasetSpec, settings: Settings, end: datetime) -> Any:
    """Incremental materialization up to `end`: bulk into the local SQLite store, Feast's engine into Redis."""
    from components.features.materialize import materialize_incremental, window_start

    sqlite_path = None if settings.feast_online.startswith("redis://") else settings.feast_online
    start = window_start(store.get_feature_view(spec.name), end)
    rows = read_offline(spec, settings, max(start, end - timedelta(days=spec.ttl_days)), end) if sqlite_path else None
    done = materialize_incremental(store, spec, rows, end, sqlite_path)
    log.info("materialized %s [%s, %s): %s entities via %s", spec.name, done.start, done.end, done.entities, done.engine)
    return done


def build_features(spec: DatasetSpec, valid: pd.DataFrame, settings: Settings, test_fraction: float = 0.2) -> FeatureOutcome:
    """Apply the repo, write the offline store, materialize online, and join a point-in-time training set."""
    if valid.empty:
        raise ValueError("no valid rows to build features from: every row was quarantined")
    repo = declare(spec, settings)
    write_offline(valid, spec, settings)
    store = open_store(spec, settings)
    name = service_name(store, spec)
    service = repo.service(name)
    store.apply([repo.entity, repo.view, service])
    end = valid[EVENT_TIMESTAMP].max().to_pydatetime() + timedelta(seconds=1)
    done = materialize_online(store, spec, settings, end)
    # Sensitive attributes that are not features ride along with the labels (the bias audit groups the test rows by
    # them); they are never written to the feature store nor read by any model.
    audit = [a for a in spec.audit_only if a in valid.columns]
    labels = valid[[spec.entity_column, EVENT_TIMESTAMP, LABEL, *audit]]
    joined = point_in_time(store, name, labels, spec.entity_column)
    joined = joined[[spec.entity_column, EVENT_TIMESTAMP, *spec.feature_names, LABEL, *audit]]
    joined = joined.sort_values([EVENT_TIMESTAMP, spec.entity_column], kind="stable").reset_index(drop=True)
    train, test = time_split(joined, test_fraction)
    log.info("feature service %s: %d training rows, %d test rows", name, len(train), len(test))
    return FeatureOutcome(service=name, train=train, test=test, materialized_rows=done.entities)
