"""Scoring validated columns with the bundle's program, fast enough for single-row online requests.

The bundle's torch.export program runs op by op in Python (pytree flattening, input guards, ~20 aten calls):
about 180 us for one row on these CPUs. Traced once with TorchScript at load time, the same graph runs in
C++ in about 30 us (frozen: weights folded in as constants). The traced program is only used after it has reproduced the exported program's output
on batches of several sizes (with missing values and unseen categories); otherwise the exported program
serves, and the log says why. The encoding matches `components.core.bundle.Bundle.encode` (unseen or missing
category -> code 0, missing number -> NaN, which the program imputes).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from components.core.bundle import Bundle

log = logging.getLogger(__name__)

# Rows checked when accepting the traced program; sizes that differ from the trace's example on purpose.
_CHECK_SIZES = (1, 3, 257)


class Scorer:
    """Columns -> probabilities for one bundle. `prepare()` does the heavy work; `score()` is thread-safe."""

    def __init__(self, bundle: Bundle, trace: bool = True) -> None:
        self.bundle = bundle
        self.numeric = bundle.numeric
        self.categorical = bundle.categorical
        vocab = {f["name"]: f["vocabulary"] for f in bundle.signature["features"] if f["type"] == "categorical"}
        self._codes = {c: {v: i + 1 for i, v in enumerate(vocab[c])} for c in self.categorical}
        self._trace = trace
        self.program: Any = bundle.program
        self.mode = "exported"

    def prepare(self) -> None:
        """Trace the program and keep the trace only if it agrees with the exported program."""
        if not self._trace:
            return
        import torch

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # TracerWarning about the export's shape guards, checked below
                with torch.no_grad():
                    example = self._random_inputs(8, seed=0)
                    # Freezing folds the weights into the graph as constants: a few more microseconds off.
                    traced = torch.jit.freeze(torch.jit.trace(self.bundle.program, example, check_trace=False).eval())
            for size in _CHECK_SIZES:
                numeric, codes = self._random_inputs(size, seed=size)
                with torch.inference_mode():
                    want = self.bundle.program(numeric, codes).numpy()
                    got = traced(numeric, codes).numpy()
                if want.shape != got.shape or not np.allclose(want, got, rtol=1e-5, atol=1e-6, equal_nan=True):
                    raise ValueError(f"traced output differs from the exported program's at batch size {size}")
        except Exception as err:  # any tracing problem leaves the exported program serving, which is correct
            log.warning("serving the exported program without tracing: %s", err)
            return
        self.program = traced
        self.mode = "traced"

    def _random_inputs(self, n: int, seed: int) -> tuple[Any, Any]:
        import torch

        rng = np.random.default_rng(seed)
        numeric = rng.lognormal(2.0, 1.5, size=(n, max(len(self.numeric), 1))).astype(np.float32)
        numeric[rng.random(numeric.shape) < 0.1] = np.nan  # missing values take the imputation branch
        width = max(len(self.categorical), 1)
        sizes = [len(self._codes[c]) + 1 for c in self.categorical] or [1]
        codes = np.stack([rng.integers(0, sizes[j % len(sizes)], size=n) for j in range(width)], axis=1).astype(np.int64)
        return torch.from_numpy(numeric), torch.from_numpy(codes)

    def encode(self, columns: Mapping[str, Any], n: int) -> tuple[Any, Any]:
        import torch

        if self.numeric:
            numeric = np.empty((n, len(self.numeric)), dtype=np.float32)
            for j, name in enumerate(self.numeric):
                numeric[:, j] = columns[name]
        else:
            numeric = np.zeros((n, 1), dtype=np.float32)
        if self.categorical:
            codes = np.empty((n, len(self.categorical)), dtype=np.int64)
            for j, name in enumerate(self.categorical):
                lookup = self._codes[name].get
                codes[:, j] = [lookup(v, 0) for v in columns[name]] if n > 1 else lookup(columns[name][0], 0)
        else:
            codes = np.zeros((n, 1), dtype=np.int64)
        return torch.from_numpy(numeric), torch.from_numpy(codes)

    def score(self, columns: Mapping[str, Any], n: int) -> np.ndarray:
        import torch

        numeric, codes = self.encode(columns, n)
        with torch.inference_mode():
            return self.program(numeric, codes).numpy().astype(np.float64)
