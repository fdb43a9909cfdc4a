"""The KServe runtime for model bundles: a kserve.Model that loads, verifies and serves one bundle.

`__init__` does no I/O; `load()` fetches (local path or s3://), verifies every digest, prepares the scorer and
the explainer (the bundle's background sample, if it has one), warms it up, and only then sets `ready`. `infer()` is the one scoring path: the lean REST front
(serving/front.py) and KServe's own stack (gRPC, via `predict()`) both end there, so entity lookups,
metrics and request logging are the same whichever protocol a request used.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import tempfile
import time
import uuid
from dataclasses import dataclass
from typing import Any

import kserve
import numpy as np
import orjson
from kserve.errors import InferenceError, InvalidInput, ModelNotReady
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

from components.core import bundle as bundle_lib
from components.core import explain as explain_lib
from components.core import storage
from components.core.privacy import PrivacyRule, hash_values, rule_for
from components.features.online import FeatureStoreUnavailable, OnlineFeatures, UnknownEntity
from serving import binary
from serving.explain import ExplainUnavailable, check_rows
from serving.observability import RequestMetrics, metrics
from serving.request_sink import RequestLogSink
from serving.requests import Batch, RequestError, Schema, columns_from_v2_inputs, fill_lookups, parse_v1
from serving.requests import UnknownEntity as UnknownEntityRequest
from serving.scoring import Scorer
from serving.v2 import v2_input_types, v2_output_types

log = logging.getLogger(__name__)

# Batches the scorer handles within this time are scored on the event loop (a thread hop costs more and
# competes for the GIL); larger ones go to the executor so health checks and small requests are not held up.
# The row count is measured at load: a small MLP scores 1,000 rows in ~0.4 ms, a 300-tree program in ~60 ms.
INLINE_SCORING_S = 0.0005
INLINE_ROWS = 256  # the size warm-up times, and the least that is always scored inline


@dataclass(frozen=True)
class ServingOptions:
    """How the server behaves beyond KServe's flags (see serving/cli.py for the command line)."""

    request_log_root: str | None = None  # None: no request logging
    request_log_sample_rate: float = 1.0
    request_log_flush_s: float = 2.0
    entity_lookup: str = "lazy"  # lazy | eager | off
    trace: bool = True
    version: str | None = None  # overrides the version read from the bundle's lineage


@dataclass(frozen=True)
class Scored:
    probabilities: np.ndarray
    labels: np.ndarray
    request_id: str


class BundleModel(kserve.Model):
    def __init__(self, name: str, model_dir: str, options: ServingOptions | None = None) -> None:
        super().__init__(name)
        self.model_dir = model_dir
        self.options = options or ServingOptions()
        self.bundle: bundle_lib.Bundle | None = None
        self.scorer: Scorer | None = None
        self.explainer: explain_lib.Explainer | None = None
        self._no_explainer = "the model is not loaded"
        self.schema = Schema((), ())
        self.online: OnlineFeatures | None = None
        self.sink: RequestLogSink | None = None
        self.privacy: PrivacyRule | None = None
        self.stats: RequestMetrics | None = None
        self._version = ""
        self._threshold = 0.5
        self.inline_rows = INLINE_ROWS
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        # Request ids: unique per process prefix + counter (uuid4 per request costs a syscall).
        self._id_prefix = uuid.uuid4().hex[:12]
        self._ids = itertools.count(1)

    # ------------------------------------------------------------ loading

    def load(self) -> bool:
        local = self.model_dir
        if storage.is_s3(local):
            self._tmp = tempfile.TemporaryDirectory(prefix="bundle-")
            storage.download_dir(local, self._tmp.name)
            local = self._tmp.name
        bundle = bundle_lib.load(local)  # verifies every digest first
        self.bundle = bundle
        self._version = self.options.version or bundle_lib.served_version(bundle.signature, bundle_lib.bundle_digest(bundle.directory))
        self._threshold = bundle.threshold
        self.scorer = Scorer(bundle, trace=self.options.trace)
        self.scorer.prepare()
        self._setup_explainer(bundle, self.scorer)
        self._setup_online(bundle)
        self.schema = Schema(tuple(bundle.numeric), tuple(bundle.categorical), self.online.entity if self.online is not None else None)
        self.stats = RequestMetrics(self.name, self._version)
        self._warm_up()
        self.privacy = self._privacy_rule(bundle)
        if self.options.request_log_root:
            self.sink = RequestLogSink(
                self.options.request_log_root,
                self.name,
                bundle.feature_names,
                bundle.numeric,
                self.options.request_log_sample_rate,
                self.options.request_log_flush_s,
                privacy=self.privacy,
            )
            self.sink.start()
        self.ready = True
        log.info(
            "model ready",
            extra={
                "model": self.name,
                "version": self._version,
                "scoring": self.scorer.mode,
                "inline_rows": self.inline_rows,
                "entity_key": self.schema.entity,
                "request_log": self.options.request_log_root,
            },
        )
        return self.ready

    def _setup_explainer(self, bundle: bundle_lib.Bundle, scorer: Scorer) -> None:
        """Explanations with the scorer's program (so they explain the score :predict returns); a bundle without
        a usable background sample still serves predictions, and :explain answers 501 with the reason."""
        try:
            self.explainer = explain_lib.bundle_explainer(
                bundle, explain_lib.program_predict(scorer.program), budget_s=explain_lib.EXPLAIN_BUDGET_S
            )
        except (bundle_lib.BundleError, explain_lib.ExplainError) as err:  # NoBackground is a BundleError
            self._no_explainer = str(err) if isinstance(err, bundle_lib.NoBackground) else f"this model cannot be explained: {err}"
            log.warning("explanations unavailable: %s", self._no_explainer)

    def _privacy_rule(self, bundle: bundle_lib.Bundle) -> PrivacyRule | None:
        """The dataset spec's personal-data rule (components/core/privacy.py): a personal entity key is logged and
        looked up only as its keyed hash. A spec that cannot be read leaves none (the request log holds the bundle's
        features, which may never be personal); a personal key without MLWF_PII_HASH_KEY stops the server."""
        dataset = bundle.signature.get("lineage", {}).get("dataset")
        if not dataset:
            return None
        from components.core.settings import get_settings
        from components.core.spec import load_spec

        try:
            spec = load_spec(str(dataset))
        except Exception as err:
            log.warning("personal-data rule unavailable: cannot read dataset spec %r: %s", dataset, err)
            return None
        return rule_for(spec, get_settings().pii_hash_key)

    def _setup_online(self, bundle: bundle_lib.Bundle) -> None:
        lineage = bundle.signature.get("lineage", {})
        if self.options.entity_lookup == "off" or not lineage.get("feature_service") or not lineage.get("dataset"):
            return
        online = OnlineFeatures(str(lineage["dataset"]), str(lineage["feature_service"]), bundle.feature_names)
        try:
            online.entity_column()
        except Exception as err:  # the dataset spec is not available here: serve feature values only
            log.warning("entity-key requests disabled: cannot read dataset spec %r: %s", lineage["dataset"], err)
            return
        if self.options.entity_lookup == "eager":
            online.open()
        self.online = online

    def _warm_up(self) -> None:
        """Run the scorer at a few sizes (first calls are slow), then time it to set `inline_rows`.

        Scoring time is a fixed cost plus a cost per row: both come from the best of 5 timings at two sizes
        (other load only adds time), and `inline_rows` is the batch the scorer handles in INLINE_SCORING_S.
        """
        scorer = self.scorer
        assert scorer is not None
        small, large = INLINE_ROWS, 4 * INLINE_ROWS

        def columns(rows: int) -> dict[str, Any]:
            return {k: np.zeros(rows) for k in self.schema.numeric} | {c: [None] * rows for c in self.schema.categorical}

        for rows in (1, 2, small + 1, small, large):
            scorer.score(columns(rows), rows)

        def best(rows: int) -> float:
            batch = columns(rows)
            timings = []
            for _ in range(5):
                started = time.perf_counter()
                scorer.score(batch, rows)
                timings.append(time.perf_counter() - started)
            return min(timings)

        t_small, t_large = best(small), best(large)
        per_row = max((t_large - t_small) / (large - small), t_large / large / 4, 1e-9)
        fixed = max(t_large - per_row * large, 0.0)
        self.inline_rows = max(INLINE_ROWS, min(int((INLINE_SCORING_S - fixed) / per_row), 4096))

    def stop(self) -> None:
        if self.sink is not None:
            self.sink.close()
        super().stop()

    @property
    def version(self) -> str:
        return self._version

    @property
    def threshold(self) -> float:
        return self._threshold

    def new_request_id(self) -> str:
        return f"{self._id_prefix}-{next(self._ids)}"

    def get_input_types(self) -> list[dict[str, Any]]:
        return v2_input_types(self.schema.numeric, self.schema.categorical)

    def get_output_types(self) -> list[dict[str, Any]]:
        return v2_output_types()

    def metadata(self) -> dict[str, Any]:
        """V2 model metadata from the bundle's signature (plus how to send an entity key instead)."""
        assert self.bundle is not None
        lineage = self.bundle.signature.get("lineage", {})
        parameters = {"threshold": self.bundle.threshold, "format": self.bundle.signature.get("format", "")}
        if self.schema.entity:
            parameters |= {"entity_key": self.schema.entity, "feature_service": lineage.get("feature_service")}
        return {
            "name": self.name,
            "versions": [self._version],
            "platform": "mlwf-bundle (torch.export)",
            "inputs": self.get_input_types(),
            "outputs": self.get_output_types(),
            "parameters": parameters,
        }

    # ------------------------------------------------------------ scoring

    async def infer(self, batch: Batch, request_id: str | None) -> Scored:
        """Look up entity features if asked, score, and queue the request-log record."""
        scorer = self.scorer
        if scorer is None or not self.ready:
            raise ModelNotReady(self.name)
        loop = asyncio.get_running_loop()
        if batch.lookup_rows:
            await self._lookup(batch)
        if batch.rows <= self.inline_rows:
            probs = scorer.score(batch.columns, batch.rows)
        else:
            probs = await loop.run_in_executor(None, scorer.score, batch.columns, batch.rows)
        labels = (probs >= self._threshold).astype(np.int64)
        rid = request_id or batch.request_id or f"{self._id_prefix}-{next(self._ids)}"
        if self.sink is not None:
            self.sink.submit(batch, probs, labels, self._version, rid)
        return Scored(probs, labels, rid)

    async def _lookup(self, batch: Batch) -> None:
        """The features of the rows that sent only an entity key, from the online store (unknown key -> 404)."""
        if self.online is None:
            raise RequestError("this model server has no online store configured: send feature values")
        assert batch.entities is not None
        keys = [str(batch.entities[i]) for i in batch.lookup_rows]
        if self.privacy is not None and self.privacy.hashed and self.privacy.key is not None:
            # the store holds a personal key as its keyed hash (hashed at ingest), never in clear
            keys = [str(k) for k in hash_values(self.privacy.key, keys)]
        try:
            found = await asyncio.get_running_loop().run_in_executor(None, self.online.lookup, keys)
        except UnknownEntity as err:
            metrics().lookups.labels(self.name, "unknown").inc(len(keys))
            raise UnknownEntityRequest(str(err)) from err
        metrics().lookups.labels(self.name, "found").inc(len(keys))
        fill_lookups(batch, found, self.schema)

    def check_explainable(self) -> None:
        """501 before anything else when this bundle cannot be explained (no background sample)."""
        if self.explainer is None:
            raise ExplainUnavailable(self._no_explainer)

    async def explain_batch(self, batch: Batch) -> explain_lib.Explanation:
        """Attributions for a parsed batch (entity keys looked up as for scoring), computed off the event loop."""
        scorer, explainer = self.scorer, self.explainer
        if scorer is None or not self.ready:
            raise ModelNotReady(self.name)
        self.check_explainable()
        assert explainer is not None
        check_rows(batch.rows)
        if batch.lookup_rows:
            await self._lookup(batch)

        def attributions() -> explain_lib.Explanation:
            numeric, codes = scorer.encode(batch.columns, batch.rows)
            return explainer.explain(numeric.numpy(), codes.numpy())

        return await asyncio.get_running_loop().run_in_executor(None, attributions)

    async def predict(self, payload: Any, headers: dict[str, str] | None = None, response_headers: dict[str, str] | None = None) -> Any:
        """KServe's path (gRPC, or REST if the front is bypassed): same parsing and scoring as the front."""
        started = time.perf_counter()
        protocol = (
            "grpc" if isinstance(payload, InferRequest) and payload.from_grpc else ("v2" if isinstance(payload, InferRequest) else "v1")
        )
        request_id = (headers or {}).get("x-request-id")
        try:
            if isinstance(payload, InferRequest):
                batch = columns_from_v2_inputs([_tensor(t) for t in payload.inputs], self.schema)
                batch.request_id = payload.id or None
            else:
                batch = parse_v1(payload, self.schema)
            scored = await self.infer(batch, request_id)
        except RequestError as err:
            self._count_failure(protocol, started, err.status)
            raise InvalidInput(str(err)) from err
        except FeatureStoreUnavailable as err:
            self._count_failure(protocol, started, 503)
            raise InferenceError(str(err)) from err
        if self.stats is not None:
            self.stats.success(protocol, time.perf_counter() - started, batch.rows)
        if isinstance(payload, InferRequest):
            outputs = {
                "probability": InferOutput(name="probability", shape=[batch.rows], datatype="FP64", data=scored.probabilities.tolist()),
                "label": InferOutput(name="label", shape=[batch.rows], datatype="INT64", data=scored.labels.tolist()),
            }
            wanted = [o.name for o in payload.request_outputs or []] or list(outputs)
            unknown = sorted(set(wanted) - set(outputs))
            if unknown:
                raise InvalidInput(f"unknown output(s) {unknown}; the model returns {sorted(outputs)}")
            # Binary (raw) inputs over gRPC get binary outputs, as the protocol asks.
            return InferResponse(
                response_id=payload.id or scored.request_id,
                model_name=self.name,
                model_version=self._version or None,
                infer_outputs=[outputs[w] for w in wanted],
                use_binary_outputs=payload.use_binary_outputs,
            )
        return v1_response(scored, self._version)

    def _count_failure(self, protocol: str, started: float, code: int) -> None:
        if self.stats is not None:
            self.stats.failure(protocol, time.perf_counter() - started, code)


def v1_response(scored: Scored, version: str) -> dict[str, Any]:
    predictions = [{"probability": p, "label": lab} for p, lab in zip(scored.probabilities.tolist(), scored.labels.tolist())]
    return {"predictions": predictions, "model_version": version}


def v1_body(scored: Scored, version: str) -> bytes:
    """`orjson.dumps(v1_response(...))` byte for byte, without a dict per row: each column serialised once."""
    probabilities = orjson.dumps(scored.probabilities, option=orjson.OPT_SERIALIZE_NUMPY)[1:-1].split(b",")
    labels = orjson.dumps(scored.labels, option=orjson.OPT_SERIALIZE_NUMPY)[1:-1].split(b",")
    rows = b",".join([b'{"probability":%b,"label":%b}' % pair for pair in zip(probabilities, labels)])
    return b'{"predictions":[' + rows + b'],"model_version":' + orjson.dumps(version) + b"}"


def _tensor(infer_input: Any) -> dict[str, Any]:
    """A KServe InferInput as the plain tensor the parser takes; raw (binary) gRPC contents are decoded with
    the same codec as binary REST, numbers staying an array."""
    data = infer_input.data
    raw = getattr(infer_input, "_raw_data", None)
    shape = list(infer_input.shape)
    if raw is not None and not data:
        data = binary.decode(infer_input.name, infer_input.datatype, shape, memoryview(raw))
    elif infer_input.datatype in binary.DTYPES and not isinstance(data, np.ndarray):
        # Typed contents (fp64_contents...) as an array too: like raw ones they have no null, so NaN is missing.
        try:
            data = np.asarray(list(data), dtype=binary.DTYPES[infer_input.datatype])
        except (TypeError, ValueError) as err:
            raise RequestError(f"input {infer_input.name!r}: contents do not fit {infer_input.datatype}: {err}") from None
    return {"name": infer_input.name, "shape": shape, "datatype": infer_input.datatype, "data": data}
