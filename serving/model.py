"""The KServe runtime for model bundles: a kserve.Model that loads, verifies and serves one bundle.

`__init__` does no I/O; `load()` fetches (local path or s3://), verifies every digest, warms the program
up and only then sets `ready`. Client mistakes become InvalidInput (HTTP 400) naming the problem.
"""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from typing import Any

import kserve
from kserve.errors import InvalidInput, ModelNotReady
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

from components import bundle as bundle_lib
from components import storage
from serving.requests import RequestError, columns_from_instances, columns_from_v2, v2_input_types


class BundleModel(kserve.Model):
    def __init__(self, name: str, model_dir: str) -> None:
        super().__init__(name)
        self.model_dir = model_dir
        self.bundle: bundle_lib.Bundle | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    def load(self) -> bool:
        local = self.model_dir
        if storage.is_s3(local):
            self._tmp = tempfile.TemporaryDirectory(prefix="bundle-")
            storage.download_dir(local, self._tmp.name)
            local = self._tmp.name
        self.bundle = bundle_lib.load(local)
        self._warm_up()
        self.ready = True
        return self.ready

    def _warm_up(self) -> None:
        assert self.bundle is not None
        row: dict[str, list[Any]] = {n: [0.0] for n in self.bundle.numeric}
        row |= {c: [None] for c in self.bundle.categorical}
        for _ in range(3):
            self.bundle.predict_proba(row)

    @property
    def version(self) -> str:
        if self.bundle is None:
            return ""
        lineage = self.bundle.signature.get("lineage", {})
        return str(lineage.get("model_version") or lineage.get("inputs_fingerprint", "")[:12])

    def get_input_types(self) -> list[dict[str, Any]]:
        if self.bundle is None:
            return []
        return v2_input_types(self.bundle.numeric, self.bundle.categorical)

    def get_output_types(self) -> list[dict[str, Any]]:
        return [{"name": "probability", "datatype": "FP64", "shape": [-1]}, {"name": "label", "datatype": "INT64", "shape": [-1]}]

    async def predict(self, payload: Any, headers: dict[str, str] | None = None, response_headers: dict[str, str] | None = None) -> Any:
        if self.bundle is None or not self.ready:
            raise ModelNotReady(self.name)
        bundle = self.bundle
        try:
            if isinstance(payload, InferRequest):
                columns = columns_from_v2(payload.inputs, bundle.numeric, bundle.categorical)
            elif isinstance(payload, dict) and "instances" in payload:
                columns = columns_from_instances(payload["instances"], bundle.numeric, bundle.categorical)
            else:
                raise RequestError("expected a V1 body {\"instances\": [...]} or a V2 inference request")
        except RequestError as err:
            raise InvalidInput(str(err)) from err
        # Scoring is CPU work: keep it off the event loop so health checks stay responsive.
        probs = await asyncio.get_running_loop().run_in_executor(None, bundle.predict_proba, columns)
        labels = (probs >= bundle.threshold).astype(int)
        if isinstance(payload, InferRequest):
            return InferResponse(
                response_id=payload.id or str(uuid.uuid4()),
                model_name=self.name,
                model_version=self.version or None,
                infer_outputs=[
                    InferOutput(name="probability", shape=[len(probs)], datatype="FP64", data=probs.tolist()),
                    InferOutput(name="label", shape=[len(labels)], datatype="INT64", data=labels.tolist()),
                ],
            )
        return {"predictions": [{"probability": float(p), "label": int(lab)} for p, lab in zip(probs, labels)],
                "model_version": self.version}
