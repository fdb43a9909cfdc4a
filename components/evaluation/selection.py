"""Choose one model among the candidates of a training run: accuracy first, then latency and size, never noise.

Every candidate is evaluated on the same test period by the same policy (components/evaluation/evaluate.py): the
hard checks (minimums, ECE and Brier, per-row p99, slice gaps, the baseline and the champion) decide who may
compete. Among those, the best on the primary metric (ROC-AUC) is the reference; a cheaper candidate (lower p99
latency, then a smaller program) wins instead when the reference's lead over it is within noise: the 95% paired
bootstrap CI of the difference on the same test rows includes 0. A model review can defend that choice: nothing
cheaper was measurably worse, nothing more expensive was measurably better. A refused or failing candidate is never
chosen, whatever its score.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from components.core.candidates import Candidate
from components.evaluation.evaluate import Evaluation, paired_bootstrap_ci

PRIMARY = "roc_auc"
LATENCY_STEP = 1.25  # p99s within one step of each other tie (Contender.cost)


@dataclass
class Contender:
    candidate: Candidate
    evaluation: Evaluation | None  # None when refused before evaluation
    scores: np.ndarray | None  # its probabilities on the test rows (paired comparisons)
    size_bytes: int = 0  # the program's file size: the tie-breaker after latency
    refused: str = ""

    @property
    def family(self) -> str:
        return self.candidate.family

    @property
    def eligible(self) -> bool:
        return self.evaluation is not None and self.evaluation.passed and not self.refused

    def metric(self, name: str = PRIMARY) -> float:
        return float(self.evaluation.metrics.get(name, float("nan"))) if self.evaluation else float("nan")

    def cost(self) -> tuple[float, int]:
        """(p99 in 25% steps, program bytes): per-row p99s within ~25% of each other are a tie on a shared machine
        (each candidate is timed on its own, and a neighbour moves sub-millisecond timings by that much), and
        then the smaller program is the cheaper one."""
        p99 = self.metric("latency_p99_ms")
        step = round(math.log(max(p99, 1e-3)) / math.log(LATENCY_STEP)) if math.isfinite(p99) else math.inf
        return (step, self.size_bytes)


@dataclass
class Selection:
    winner: Contender | None
    reference: Contender | None  # the best eligible candidate on the primary metric
    why: str
    rows: list[dict[str, Any]] = field(default_factory=list)  # one per candidate, for the report and gate.json


def program_size(bundle_dir: str) -> int:
    from components.core.bundle import PROGRAM

    path = os.path.join(bundle_dir, PROGRAM)
    return os.path.getsize(path) if os.path.exists(path) else 0


def choose(contenders: list[Contender], y: np.ndarray, resamples: int = 200) -> Selection:
    """The winner by the rule in the module docstring, with every candidate's row and the reason in words."""
    eligible = [c for c in contenders if c.eligible]
    cis: dict[str, tuple[float, float]] = {}
    winner = reference = None
    if not eligible:
        why = "no candidate passed every check, so none is deployed"
    else:
        reference = max(eligible, key=lambda c: (c.metric(), -c.cost()[0], -c.cost()[1]))
        assert reference.scores is not None
        for c in eligible:
            if c is not reference and c.scores is not None:
                cis[c.family] = paired_bootstrap_ci(y, reference.scores, c.scores, PRIMARY, resamples=resamples)
        for c in sorted(eligible, key=lambda c: c.cost()):
            if c is reference:
                winner = c
                cheaper = [d for d in eligible if d is not c and d.cost() < c.cost()]
                if len(eligible) == 1:
                    tail = ", the only candidate that passed"
                elif cheaper:
                    tail = " and every cheaper candidate is measurably worse"
                else:
                    tail = " and is the cheapest that passed"
                why = f"{c.family} has the highest ROC-AUC ({c.metric():.4f}){tail}"
                break
            lo, hi = cis.get(c.family, (float("nan"), float("nan")))
            if lo <= 0.0 <= hi:
                winner = c
                lead = reference.metric() - c.metric()
                why = (
                    f"{c.family} is cheaper (p99 {c.metric('latency_p99_ms'):.3f} ms, {c.size_bytes:,} bytes) than "
                    f"{reference.family} (p99 {reference.metric('latency_p99_ms'):.3f} ms, {reference.size_bytes:,} bytes), "
                    f"and {reference.family}'s ROC-AUC lead of {lead:+.4f} is within noise (95% CI [{lo:+.4f}, {hi:+.4f}])"
                )
                break
    rows = []
    for c in contenders:
        ev = c.evaluation
        lo, hi = cis.get(c.family, (float("nan"), float("nan")))
        if c is winner:
            status = "chosen"
        elif c.refused:
            status = "refused: " + c.refused
        elif ev is None or not ev.passed:
            status = "failed: " + "; ".join(ev.reasons if ev else ["not evaluated"])
        else:
            best = reference.family if reference else "?"
            if c is reference and winner is not None:
                status = f"passed, not chosen: {winner.family} is cheaper and not measurably worse"
            elif lo > 0:
                status = f"passed, not chosen: {best} is measurably better (95% CI of its ROC-AUC lead [{lo:+.4f}, {hi:+.4f}])"
            else:
                chosen = winner.family if winner else "?"
                status = (
                    f"passed, not chosen: within noise of {best} (95% CI of its lead [{lo:+.4f}, {hi:+.4f}]) but not cheaper than {chosen}"
                )
        rows.append(
            {
                "family": c.family,
                "version": c.candidate.version,
                "status": status,
                "chosen": c is winner,
                "passed": bool(ev and ev.passed and not c.refused),
                "size_bytes": c.size_bytes,
                "ci_vs_best": [lo, hi],
                **(
                    {k: ev.metrics.get(k) for k in ("roc_auc", "pr_auc", "brier", "ece", "f1", "latency_p50_ms", "latency_p99_ms")}
                    if ev
                    else {}
                ),
            }
        )
    return Selection(winner, reference, why, rows)
