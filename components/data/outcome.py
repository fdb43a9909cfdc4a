"""What a validation run produces (`ValidationOutcome`) and the error that stops one (`ValidationFailed`).

Kept apart from validate.py so the report (report.py) reads the outcome without importing the step's logic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd


class ValidationFailed(RuntimeError):
    """Too many rows failed validation, rows were lost, or GX and the row masks disagree."""


@dataclass
class ValidationOutcome:
    valid_table: Any  # pyarrow.Table: the typed valid rows, written as is (no round trip through Python objects)
    quarantined: pd.DataFrame  # the raw rows that failed, with failed_expectations, source (file), run_id
    failures: dict[str, int]  # expectation id -> failing rows (agreed by GX and the row masks)
    suite: list[dict[str, Any]]
    examples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    verdicts: dict[str, bool] = field(default_factory=dict)  # GX's success per expectation
    suite_version: str = ""
    per_file: list[dict[str, Any]] = field(default_factory=list)
    _valid: pd.DataFrame | None = None

    @property
    def valid(self) -> pd.DataFrame:
        """The valid rows as pandas (strings as Python objects, as the next steps read them back)."""
        if self._valid is None:
            self._valid = self.valid_table.to_pandas()
        return self._valid

    @property
    def rows(self) -> int:
        return int(self.valid_table.num_rows) + len(self.quarantined)

    @property
    def bad_fraction(self) -> float:
        return len(self.quarantined) / self.rows if self.rows else 0.0
