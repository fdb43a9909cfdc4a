"""Model families and the candidates layout: what the train step writes and the evaluate step chooses from.

A training run trains one model per family the gate policy lists. With one family the train step's `model` artifact
is that family's bundle; with several it holds one bundle directory per family and `candidates.json`, the record
of each candidate: family, registered version, MLflow run, or the reason it was refused. Every bundle has the same
contract (components/core/bundle.py), so nothing downstream of the choice knows the family.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from components.core import storage

FAMILIES = ("network", "lightgbm", "logistic")  # the PyTorch network, LightGBM trees, a logistic regression
CANDIDATES_FILE = "candidates.json"


@dataclass(frozen=True)
class Candidate:
    family: str
    version: str | None  # the registered version; None when refused
    path: str  # its bundle directory
    run_id: str | None = None
    refused: str = ""  # why it could not compete (failed to train, or its program did not match the library)


def check_families(families: list[str] | tuple[str, ...], where: str = "candidates") -> tuple[str, ...]:
    """The families to try, in order, without repeats; a one-line ValueError names an unknown one."""
    out: list[str] = []
    for family in families:
        name = str(family).strip().lower()
        if name not in FAMILIES:
            raise ValueError(f"{where}: unknown model family {family!r}; choose from {', '.join(FAMILIES)}")
        if name not in out:
            out.append(name)
    if not out:
        raise ValueError(f"{where}: no model family to train; choose from {', '.join(FAMILIES)}")
    return tuple(out)


def read_candidates(model_dir: str, version: str | None = None) -> list[Candidate]:
    """The candidates in a train step's `model` artifact; a plain bundle directory is one candidate (`version`)."""
    index = storage.join(model_dir, CANDIDATES_FILE)
    if not storage.exists(index):
        from components.core.bundle import SIGNATURE

        signature = json.loads(storage.read_bytes(storage.join(model_dir, SIGNATURE)))
        family = str((signature.get("lineage") or {}).get("family", "network"))
        return [Candidate(family, version, model_dir)]
    entries = json.loads(storage.read_bytes(index))
    return [
        Candidate(
            str(e["family"]),
            None if not e.get("version") else str(e["version"]),
            storage.join(model_dir, str(e["family"])),
            e.get("run_id"),
            str(e.get("refused", "")),
        )
        for e in entries
    ]
