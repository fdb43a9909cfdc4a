"""The one online feature read: a bundle's features from the Feast online store, through the FeatureService
that built its training set (the bundle's lineage names it), with the store opened once per process. The
model server answers entity-key requests with it, and the training-serving skew test reads through it.

Opening a FeatureStore (imports, registry, config) takes seconds; a lookup through an open store takes well
under a millisecond on the local SQLite store. So the store and the service object are cached, and each
lookup is one `get_online_features` call. A key the store has never seen (every feature NOT_FOUND) is an
UnknownEntity naming the key (the server answers 404).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

from components.core.spec import DatasetSpec

log = logging.getLogger(__name__)


class FeatureStoreUnavailable(RuntimeError):
    """The online store cannot be opened or read; entity-key requests get HTTP 503 with this message."""


class UnknownEntity(LookupError):
    """An entity key the online store has never seen."""


class OnlineFeatures:
    """Looks up the bundle's features by entity key. No I/O until `open()` or the first `lookup()`."""

    def __init__(self, dataset: str | DatasetSpec, service: str, features: Sequence[str]) -> None:
        self.dataset = dataset  # a spec reference (what a bundle's lineage records), or the spec itself
        self.service_name = service
        self.features = list(features)
        self.entity: str | None = None
        self._store: Any = None
        self._service: Any = None
        self._lock = threading.Lock()

    def entity_column(self) -> str:
        """The entity key's name comes from the dataset spec: cheap, no store needed."""
        if self.entity is None:
            self.entity = self._spec().entity_column
        return self.entity

    def _spec(self) -> DatasetSpec:
        from components.core.spec import load_spec

        return self.dataset if isinstance(self.dataset, DatasetSpec) else load_spec(self.dataset)

    def open(self) -> None:
        with self._lock:
            if self._store is not None:
                return
            from components.core.settings import get_settings
            from components.features.store import open_store

            try:
                spec = self._spec()
                store = open_store(spec, get_settings())
                service = store.get_feature_service(self.service_name)
            except Exception as err:
                raise FeatureStoreUnavailable(
                    f"cannot open feature service {self.service_name!r} of dataset {getattr(self.dataset, 'name', self.dataset)!r}: {err}"
                ) from err
            served = {f.name for proj in service.feature_view_projections for f in proj.features}
            absent = [f for f in self.features if f not in served]
            if absent:
                raise FeatureStoreUnavailable(f"feature service {self.service_name!r} does not serve {absent}")
            self.entity = spec.entity_column
            self._store, self._service = store, service
            log.info("online store open", extra={"feature_service": self.service_name, "dataset": spec.name})

    def lookup(self, keys: Sequence[str]) -> dict[str, list[Any]]:
        """{feature: [value per key]} in the order of `keys`; raises UnknownEntity naming unseen keys."""
        self.open()
        from feast.protos.feast.serving.ServingService_pb2 import FieldStatus

        store, service = self._store, self._service
        rows = [{self.entity: k} for k in keys]
        try:
            response = store.get_online_features(features=service, entity_rows=rows)
        except Exception as err:
            # Feast keeps its first connection for good: one opened while the store was missing or broken would
            # fail forever. Forget it, so the next request opens the store afresh and recovers once it is back.
            with self._lock:
                if self._store is store:
                    self._store = self._service = None
            raise FeatureStoreUnavailable(f"online store lookup failed: {err}") from err
        proto = response.proto
        names = list(proto.metadata.feature_names.val)
        columns = {name: proto.results[j] for j, name in enumerate(names)}
        wanted = [columns[f] for f in self.features]
        unknown = [k for i, k in enumerate(keys) if all(col.statuses[i] == FieldStatus.NOT_FOUND for col in wanted)]
        if unknown:
            shown = ", ".join(repr(k) for k in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
            raise UnknownEntity(f"unknown {self.entity} {shown}: the online store has no features for it")
        values = response.to_dict()
        return {f: values[f] for f in self.features}
