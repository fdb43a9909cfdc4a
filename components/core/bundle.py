"""The model bundle: the contract between training, evaluation, serving and monitoring.

A directory with
  model.pt2               the scoring program (torch.export): raw numeric values + category codes -> probability
  signature.json          features (names, types, order, vocabularies), output, decision threshold, lineage
  reference_profile.json  training-time bins and frequencies per feature and of the predictions (for drift)
  model_card.md           what the model is for, its data, metrics and limits
  background.json         optional: ~100 training rows (feature columns only) that explanations are measured
                          against (components/core/explain.py); bundles written before it was added lack it
  manifest.json           sha256 of every file above

Loading needs only this module, numpy and torch: no training code, and nothing is unpickled beyond
torch's weights-only unpickler, forced for the whole load (torch.export archives hold a serialized graph
and raw tensors; torch would otherwise fall back to full pickle for entries the archive marks so). Every digest is checked first;
a tampered or incomplete bundle is refused with the name of the file that does not match.
"""

from __future__ import annotations

import json
import os
import pickle
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from components.core.storage import sha256_file

PROGRAM = "model.pt2"
SIGNATURE = "signature.json"
PROFILE = "reference_profile.json"
CARD = "model_card.md"
BACKGROUND = "background.json"
MANIFEST = "manifest.json"
REQUIRED_FILES = (PROGRAM, SIGNATURE, PROFILE, CARD)
# Every file a bundle may hold. Optional ones are sealed when present (a digest in the manifest, checked on load
# like the others) and may be absent: older bundles have no background sample and still load and serve.
OPTIONAL_FILES = (BACKGROUND,)
BUNDLE_FILES = REQUIRED_FILES + OPTIONAL_FILES
BACKGROUND_FORMAT = "mlwf-background/1"


class BundleError(ValueError):
    """The bundle is incomplete, tampered with, or does not fit the request."""


class NoBackground(BundleError):
    """The bundle was written before training recorded a background sample: it cannot be explained."""

    def __init__(self, directory: str | Path) -> None:
        super().__init__(
            f"this model's bundle ({Path(directory).name}) has no background sample ({BACKGROUND}), which explanations are "
            "measured against: it was trained before the train step recorded one. Retrain the model (a training "
            "pipeline run, e.g. `mlwf run`) to get a bundle that can be explained"
        )


def write_manifest(directory: str | Path) -> dict[str, str]:
    root = Path(directory)
    digests = {name: sha256_file(root / name) for name in BUNDLE_FILES if (root / name).exists()}
    missing = [n for n in REQUIRED_FILES if n not in digests]
    if missing:
        raise BundleError(f"cannot seal bundle {root}: missing {missing}")
    (root / MANIFEST).write_text(json.dumps({"sha256": digests}, indent=2, sort_keys=True))
    return digests


def bundle_digest(directory: str | Path) -> str:
    """One sha256 for the whole bundle: the digest of its manifest."""
    return sha256_file(Path(directory) / MANIFEST)


def verify(directory: str | Path) -> dict[str, str]:
    root = Path(directory)
    manifest_path = root / MANIFEST
    if not manifest_path.exists():
        raise BundleError(f"not a model bundle (no {MANIFEST}): {root}")
    try:
        digests = json.loads(manifest_path.read_text())["sha256"]
    except (ValueError, KeyError) as err:
        raise BundleError(f"unreadable {MANIFEST} in {root}: {err}") from err
    for name in BUNDLE_FILES:
        if name not in digests:
            if name in OPTIONAL_FILES:
                continue  # absent from an older bundle; a file the manifest does not list is never read
            raise BundleError(f"bundle manifest does not list {name}: {root}")
        path = root / name
        if not path.exists():
            raise BundleError(f"bundle file missing: {name} in {root}")
        if sha256_file(path) != digests[name]:
            raise BundleError(f"bundle file {name} does not match its sha256 in {MANIFEST}: refusing to load {root}")
    return dict(digests)


@dataclass
class Bundle:
    directory: Path
    signature: dict[str, Any]
    profile: dict[str, Any]
    program: Any  # the loaded torch.export module

    @property
    def numeric(self) -> list[str]:
        return [f["name"] for f in self.signature["features"] if f["type"] == "numeric"]

    @property
    def categorical(self) -> list[str]:
        return [f["name"] for f in self.signature["features"] if f["type"] == "categorical"]

    @property
    def feature_names(self) -> list[str]:
        return [f["name"] for f in self.signature["features"]]

    @property
    def threshold(self) -> float:
        return float(self.signature["threshold"])

    @cached_property
    def background(self) -> dict[str, list[Any]] | None:
        """The sealed background sample as {feature: values} (None = missing), or None for a bundle without one.

        Read on first use (serving loads it at start-up; evaluation only when it explains). Only a file the
        manifest lists is read, and its digest is checked again here, not only at load.
        """
        try:
            digests = json.loads((self.directory / MANIFEST).read_text())["sha256"]
        except (OSError, ValueError, KeyError) as err:
            raise BundleError(f"unreadable {MANIFEST} in {self.directory}: {err}") from err
        if BACKGROUND not in digests:
            return None
        path = self.directory / BACKGROUND
        if not path.exists() or sha256_file(path) != digests[BACKGROUND]:
            raise BundleError(f"bundle file {BACKGROUND} is missing or does not match its sha256 in {MANIFEST}: {self.directory}")
        try:
            document = json.loads(path.read_text())
            columns = document["columns"]
        except (ValueError, KeyError, TypeError) as err:
            raise BundleError(f"unreadable {BACKGROUND} in {self.directory}: {err}") from err
        if not isinstance(columns, dict) or not all(isinstance(v, list) for v in columns.values()):
            raise BundleError(f"{BACKGROUND} in {self.directory}: 'columns' must map each feature to a list of values")
        missing = [f for f in self.feature_names if f not in columns]
        lengths = {len(columns[f]) for f in self.feature_names if f in columns}
        if missing or len(lengths) != 1 or 0 in lengths:
            raise BundleError(
                f"{BACKGROUND} in {self.directory} does not fit the signature: missing {missing}, column lengths {sorted(lengths)}"
            )
        return {f: list(columns[f]) for f in self.feature_names}

    def encode(self, columns: Mapping[str, Sequence[Any]]) -> tuple[Any, Any]:
        """Raw column values -> (numeric float32 [n, F], codes int64 [n, C]); unseen categories get code 0."""
        import torch

        missing = [f for f in self.feature_names if f not in columns]
        if missing:
            raise BundleError(f"missing feature(s): {missing}")
        n = len(columns[self.feature_names[0]])
        if self.numeric:
            numeric = np.empty((n, len(self.numeric)), dtype=np.float32)
            for j, name in enumerate(self.numeric):
                col = np.asarray(columns[name], dtype=object)
                numeric[:, j] = np.asarray([np.nan if v is None else v for v in col], dtype=np.float64)
        else:
            numeric = np.zeros((n, 1), dtype=np.float32)
        vocab = {f["name"]: f["vocabulary"] for f in self.signature["features"] if f["type"] == "categorical"}
        if self.categorical:
            codes = np.zeros((n, len(self.categorical)), dtype=np.int64)
            for j, name in enumerate(self.categorical):
                lookup = {v: i + 1 for i, v in enumerate(vocab[name])}
                codes[:, j] = [lookup.get(None if v is None else str(v), 0) for v in columns[name]]
        else:
            codes = np.zeros((n, 1), dtype=np.int64)
        return torch.from_numpy(numeric), torch.from_numpy(codes)

    def predict_proba(self, columns: Mapping[str, Sequence[Any]]) -> np.ndarray:
        import torch

        numeric, codes = self.encode(columns)
        with torch.inference_mode():
            return self.program(numeric, codes).numpy().astype(np.float64)


@contextmanager
def _weights_only_unpickling() -> Iterator[None]:
    """Force torch's restricted (weights-only) unpickler while a program loads.

    torch.export.load reads tensors the archive marks as pickled, and sample inputs the restricted unpickler
    refuses, with full pickle (weights_only=False): a model.pt2 crafted that way runs code on load, and its sha256
    proves nothing against whoever can also rewrite the manifest. TORCH_FORCE_WEIGHTS_ONLY_LOAD overrides those
    calls; it is set only for the load (bundles are loaded once, at start-up, not alongside other torch.load calls).
    """
    saved = {key: os.environ.pop(key, None) for key in ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")}
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def load(directory: str | Path) -> Bundle:
    """Verify every digest, then load the program; raises BundleError naming what is wrong."""
    import torch

    root = Path(directory)
    verify(root)
    signature = json.loads((root / SIGNATURE).read_text())
    profile = json.loads((root / PROFILE).read_text())
    with _weights_only_unpickling():
        try:
            program = torch.export.load(str(root / PROGRAM)).module()
        except pickle.UnpicklingError as err:
            lines = str(err).splitlines()
            reason = next((line.strip() for line in lines if "Unsupported" in line), lines[0] if lines else "").split(". ")[0]
            raise BundleError(
                f"{PROGRAM} in {root} holds objects the safe loader refuses (only tensors and plain containers are allowed): {reason}"
            ) from err
    return Bundle(directory=root, signature=signature, profile=profile, program=program)


def columns_from_frame(frame: Any, names: Sequence[str]) -> dict[str, list[Any]]:
    """DataFrame -> {column: values} with NaN/None as None, the shape predict_proba takes."""
    out: dict[str, list[Any]] = {}
    for name in names:
        series = frame[name]
        out[name] = [None if v is None or (isinstance(v, float) and np.isnan(v)) else v for v in series.tolist()]
    return out


def background_document(frame: Any, names: Sequence[str], rows: int, seed: int) -> dict[str, Any]:
    """A deterministic sample of `rows` rows of `frame` (feature columns only) as the background.json document."""
    if len(frame) == 0:
        raise BundleError("cannot record a background sample from an empty training frame")
    sample = frame.sample(n=min(rows, len(frame)), random_state=seed).sort_index()
    return {"format": BACKGROUND_FORMAT, "rows": len(sample), "seed": seed, "columns": columns_from_frame(sample, names)}


def per_row_latency_ms(bundle: Bundle, columns: Mapping[str, Sequence[Any]], rows: int = 200) -> dict[str, float]:
    """Latency of scoring one row at a time on this CPU: what a single online request costs the model."""
    n = min(rows, len(next(iter(columns.values()))))
    if n == 0:
        raise BundleError("no rows to time")
    singles = [{k: [v[i]] for k, v in columns.items()} for i in range(n)]
    for row in singles[:10]:  # warm-up
        bundle.predict_proba(row)
    times = []
    for row in singles:
        start = time.perf_counter()
        bundle.predict_proba(row)
        times.append((time.perf_counter() - start) * 1000)
    arr = np.asarray(times)
    return {"p50_ms": float(np.percentile(arr, 50)), "p99_ms": float(np.percentile(arr, 99))}


def served_version(signature: dict[str, Any], bundle_digest: str) -> str:
    """The `version` label a model server puts on its series and request logs for this bundle.

    The one rule: the model server, the canary analysis and the monitor all call this.
    """
    lineage = signature.get("lineage", {})
    version = lineage.get("model_version") or str(lineage.get("inputs_fingerprint", ""))[:12]
    return str(version or bundle_digest[:12])
