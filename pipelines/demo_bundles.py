"""Bundles for the demos: a deliberately broken canary that `mlwf rollout-demo` shows being rolled back.

Here, not in components/deployment/: the slow one is exported with components.training's export_program, and a
stage (deployment) imports only core and itself.
"""

from __future__ import annotations

import json
from pathlib import Path

from components.core import bundle as bundle_lib


def make_broken_bundle(source_dir: str, target_dir: str, kind: str) -> str:
    """A real, sealed bundle made from `source_dir` that a rollout must reject; returns its directory.

    "errors": the signature renames the first feature (a contract change the traffic does not follow), so real
    requests get 400 from the server's request validation. "slow": the program does ~5 GFLOP of matrix work per
    call before scoring (a model far too big for its latency budget), so answers are right but late.
    """
    import shutil

    if kind not in ("errors", "slow"):
        raise ValueError(f"kind must be 'errors' or 'slow', got {kind!r}")
    bundle_lib.verify(source_dir)
    target = Path(target_dir)
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source_dir, target)
    signature = json.loads((target / bundle_lib.SIGNATURE).read_text())
    signature.setdefault("lineage", {})["model_version"] = f"broken-{kind}"
    if kind == "errors":
        feature = signature["features"][0]
        feature["name"] = f"{feature['name']}_renamed"
    else:
        _write_slow_program(
            target,
            len([f for f in signature["features"] if f["type"] == "numeric"]),
            len([f for f in signature["features"] if f["type"] == "categorical"]),
        )
    (target / bundle_lib.SIGNATURE).write_text(json.dumps(signature, indent=2, sort_keys=True))
    bundle_lib.write_manifest(target)
    return str(target)


def _write_slow_program(target: Path, n_numeric: int, n_categorical: int, size: int = 768, rounds: int = 6) -> None:
    import torch

    from components.training.train import export_program

    inner = torch.export.load(str(target / bundle_lib.PROGRAM)).module()

    class Slow(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = inner
            self.register_buffer("weight", torch.randn(size, size, generator=torch.Generator().manual_seed(0)) / size**0.5)

        def forward(self, numeric: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
            weight: torch.Tensor = self.weight  # type: ignore[assignment]
            # Tied to the input, or TorchScript's constant folding (serving's traced mode) would precompute it all.
            x = weight * (1.0 + 0.0 * numeric.mean())
            for _ in range(rounds):
                x = torch.tanh(x @ weight)
            # Real work whose result feeds the output (times zero), so no compiler can drop it.
            return self.inner(numeric, codes) + 0.0 * x.mean()

    export_program(Slow(), n_numeric, n_categorical, target / bundle_lib.PROGRAM)
