"""Progressive canary rollout: traffic steps, an analysis after each, then promotion or rollback.

Backend-agnostic: components/deployment/local.py (two model servers on 127.0.0.1) and components/deployment/kserve.py
(an InferenceService's canaryTrafficPercent or spec.canary[]) implement `Backend`; this module decides.

The canary goes through the traffic steps (default 10 -> 25 -> 50 -> 100 percent). After each step both sides
are observed for a window and the canary is compared with stable:
  success_rate    the canary's share of successful answers may be at most `max_success_drop` below stable's
  p99_latency     canary p99 <= stable p99 * max_p99_ratio + p99_slack_ms (the slack keeps sub-millisecond
                  noise from failing a healthy canary)
  prediction_psi  PSI between the two sides' predicted probabilities <= max_psi, on bins cut at stable's
                  quantiles (fraud scores crowd near 0: equal-width bins would put nearly everything in one)
A side with fewer than `min_requests` requests makes the checks inconclusive, and inconclusive counts as a
failed analysis: a canary that cannot be shown healthy is not promoted. A failed analysis repeats its step;
`max_failed_analyses` of them roll back and raise DeployError naming every failed check. At 100 percent stable
takes no traffic, so the canary is compared with stable's observations summed over the earlier steps.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from components.core.stats import prediction_psi


class DeployError(RuntimeError):
    """The new model could not be served; the message says why."""


log = logging.getLogger(__name__)

PASS, FAIL, INCONCLUSIVE = "pass", "fail", "inconclusive"


@dataclass(frozen=True)
class RolloutPolicy:
    steps: tuple[int, ...] = (10, 25, 50, 100)
    max_failed_analyses: int = 2  # this many failed analyses (in total, not in a row) roll back
    step_seconds: float = 3.0  # how long each step is observed
    min_requests: int = 50  # per side and analysis; fewer is inconclusive
    max_success_drop: float = 0.01
    max_p99_ratio: float = 1.5
    p99_slack_ms: float = 25.0
    max_psi: float = 0.25  # the usual "significant shift" convention
    # The PSI offline evaluation predicts between the two versions' scores on the same rows (a model retrained
    # on drifted data is meant to score differently): only a shift beyond it by more than max_psi fails.
    expected_psi: float = 0.0

    def __post_init__(self) -> None:
        steps = list(self.steps)
        if not steps or steps != sorted(set(steps)) or steps[0] < 1 or steps[-1] != 100:
            raise ValueError(f"canary steps must rise strictly from at least 1 to 100, got {self.steps}")
        if self.max_failed_analyses < 1:
            raise ValueError(f"the failure limit must be at least 1, got {self.max_failed_analyses}")
        if self.step_seconds < 0 or self.min_requests < 1:
            raise ValueError(f"need step_seconds >= 0 and min_requests >= 1, got {self.step_seconds}, {self.min_requests}")
        if (
            not 0 <= self.max_success_drop < 1
            or self.max_p99_ratio < 1
            or self.p99_slack_ms < 0
            or self.max_psi <= 0
            or not self.expected_psi >= 0
        ):
            raise ValueError(f"invalid analysis thresholds: {self}")

    def remaining(self, current_percent: int | None) -> tuple[int, ...]:
        """The steps still to run when the canary already has `current_percent` (a resumed rollout re-checks it)."""
        if not current_percent:
            return self.steps
        return tuple(s for s in self.steps if s >= current_percent)


def policy_from_settings(settings: Any, expected_psi: float = 0.0) -> RolloutPolicy:
    return RolloutPolicy(
        expected_psi=expected_psi,
        steps=tuple(settings.canary_steps),
        max_failed_analyses=settings.canary_max_failed_analyses,
        step_seconds=settings.canary_step_seconds,
        min_requests=settings.canary_min_requests,
        max_success_drop=settings.canary_max_success_drop,
        max_p99_ratio=settings.canary_max_p99_ratio,
        p99_slack_ms=settings.canary_p99_slack_ms,
        max_psi=settings.canary_max_psi,
    )


# ---------------------------------------------------------------- observations and the analysis (pure)


@dataclass
class Observation:
    """What one side did during one window."""

    requests: int
    errors: int  # answered with anything but success, timed out, or refused the connection
    p99_ms: float | None  # None when nothing was measured
    predictions: np.ndarray = field(default_factory=lambda: np.empty(0))  # predicted probabilities
    source: str = ""  # where the numbers come from, for the report

    @property
    def success_rate(self) -> float | None:
        return None if self.requests == 0 else (self.requests - self.errors) / self.requests

    def plus(self, other: Observation) -> Observation:
        """Two windows as one; p99 is the later window's (quantiles do not add)."""
        return Observation(
            self.requests + other.requests,
            self.errors + other.errors,
            other.p99_ms if other.p99_ms is not None else self.p99_ms,
            np.concatenate([self.predictions, other.predictions]),
            other.source or self.source,
        )


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # pass | fail | inconclusive
    value: float | None
    limit: float | None
    detail: str


@dataclass
class Analysis:
    percent: int
    checks: list[Check]
    stable: Observation
    canary: Observation

    @property
    def passed(self) -> bool:
        return all(c.status == PASS for c in self.checks)

    def failures(self) -> list[str]:
        return [f"[{self.percent}%] {c.name} {c.status}: {c.detail}" for c in self.checks if c.status != PASS]


def analyze(percent: int, stable: Observation, canary: Observation, policy: RolloutPolicy) -> Analysis:
    thin = [
        f"{side} had {obs.requests} request(s) (< {policy.min_requests})"
        for side, obs in (("stable", stable), ("canary", canary))
        if obs.requests < policy.min_requests
    ]
    checks: list[Check] = []
    if thin:
        detail = "not enough traffic to decide: " + "; ".join(thin)
        checks = [Check(n, INCONCLUSIVE, None, None, detail) for n in ("success_rate", "p99_latency", "prediction_psi")]
        return Analysis(percent, checks, stable, canary)

    s_rate, c_rate = stable.success_rate or 0.0, canary.success_rate or 0.0
    floor = s_rate - policy.max_success_drop
    checks.append(
        Check(
            "success_rate",
            PASS if c_rate >= floor else FAIL,
            c_rate,
            floor,
            f"canary {c_rate:.3f} ({canary.errors}/{canary.requests} failed) vs stable {s_rate:.3f}, minimum {floor:.3f}",
        )
    )

    if stable.p99_ms is None or canary.p99_ms is None:
        checks.append(
            Check("p99_latency", INCONCLUSIVE, canary.p99_ms, None, f"no latency measured (stable {stable.p99_ms}, canary {canary.p99_ms})")
        )
    else:
        limit = stable.p99_ms * policy.max_p99_ratio + policy.p99_slack_ms
        checks.append(
            Check(
                "p99_latency",
                PASS if canary.p99_ms <= limit else FAIL,
                canary.p99_ms,
                limit,
                f"canary {canary.p99_ms:.1f} ms vs stable {stable.p99_ms:.1f} ms, limit {limit:.1f} ms",
            )
        )

    thin_predictions = min(len(stable.predictions), len(canary.predictions)) < policy.min_requests
    if thin_predictions:
        checks.append(
            Check(
                "prediction_psi",
                INCONCLUSIVE,
                None,
                policy.max_psi,
                f"too few predictions to compare (stable {len(stable.predictions)}, "
                f"canary {len(canary.predictions)}; need {policy.min_requests})",
            )
        )
    else:
        value = prediction_psi(stable.predictions, canary.predictions)
        limit = policy.max_psi + policy.expected_psi
        why = f" ({policy.max_psi:.3f} over the {policy.expected_psi:.3f} expected offline)" if policy.expected_psi else ""
        checks.append(
            Check(
                "prediction_psi",
                PASS if value <= limit else FAIL,
                value,
                limit,
                f"PSI {value:.3f} between canary and stable predictions, limit {limit:.3f}{why}",
            )
        )
    return Analysis(percent, checks, stable, canary)


# ---------------------------------------------------------------- the controller


class Backend(Protocol):
    """One canary of one model, on some serving platform."""

    def set_traffic(self, percent: int) -> None:
        """Give the canary `percent` of traffic and wait until it really serves it; DeployError if it cannot."""

    def observe(self, percent: int, seconds: float) -> tuple[Observation, Observation]:
        """Watch (or drive) traffic for `seconds`; return (stable, canary)."""

    def checkpoint(self, percent: int, failures: int) -> None:
        """Record progress so a rerun resumes here (a no-op where the platform already holds it)."""

    def promote(self) -> None:
        """The canary becomes the only version serving."""

    def rollback(self) -> None:
        """All traffic back to stable; the canary stops serving."""


@dataclass
class RolloutReport:
    outcome: str  # promoted | rolled-back
    percents: list[int] = field(default_factory=list)  # every traffic change, in order
    analyses: list[Analysis] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"canary {self.outcome} after steps {' -> '.join(f'{p}%' for p in self.percents) or 'none'}"]
        for a in self.analyses:
            lines.append(
                f"  {a.percent:>3}%: {'PASS' if a.passed else 'FAIL'}  "
                + "; ".join(f"{c.name}={'n/a' if c.value is None else f'{c.value:.3g}'} ({c.status})" for c in a.checks)
            )
        return "\n".join(lines)


def run_rollout(backend: Backend, policy: RolloutPolicy, what: str, start_percent: int | None = None, failures: int = 0) -> RolloutReport:
    """Drive `backend` through the steps; returns the report when promoted, raises DeployError after rolling back.

    `what` names the canary in messages ("canary v3 of ns/name"). `start_percent` and `failures` resume an
    interrupted rollout: it re-analyzes at the first step at or above `start_percent`.
    """
    report = RolloutReport(outcome="in-progress")
    failed: list[str] = []
    baseline: Observation | None = None  # stable, summed over the steps: the reference at 100 percent

    def roll_back(reason: str) -> DeployError:
        report.outcome = "rolled-back"
        log.warning("%s: rolling back: %s", what, reason)
        try:
            backend.rollback()
            error = DeployError(f"{what} rolled back: {reason}")
        except DeployError as err:
            error = DeployError(f"{what} failed ({reason}); the rollback failed too: {err}")
        error.report = report  # type: ignore[attr-defined]  # callers that show the analyses read it
        return error

    try:
        for percent in policy.remaining(start_percent):
            try:
                backend.set_traffic(percent)
            except DeployError as err:
                raise roll_back(f"the canary did not take {percent}% of traffic: {err}") from err
            report.percents.append(percent)
            backend.checkpoint(percent, failures)
            while True:
                stable, canary = backend.observe(percent, policy.step_seconds)
                if stable.requests:
                    baseline = stable if baseline is None else baseline.plus(stable)
                # This window's stable side is the reference only if it measured what the checks compare: at 100%
                # the replay sends stable nothing, yet its /metrics still count real users' requests.
                measured = stable.p99_ms is not None and len(stable.predictions) >= policy.min_requests
                reference = stable if (stable.requests >= policy.min_requests and measured) or baseline is None else baseline
                analysis = analyze(percent, reference, canary, policy)
                report.analyses.append(analysis)
                log.info("%s at %d%%: %s", what, percent, "; ".join(f"{c.name} {c.status}: {c.detail}" for c in analysis.checks))
                if analysis.passed:
                    break
                failures += 1
                failed.extend(analysis.failures())
                backend.checkpoint(percent, failures)
                if failures >= policy.max_failed_analyses:
                    raise roll_back(f"{failures} failed analyses (limit {policy.max_failed_analyses}): " + "; ".join(failed))
        backend.promote()
    except BaseException:
        if report.outcome == "in-progress":  # anything unexpected (a crash, Ctrl-C) leaves the state for a rerun
            report.outcome = "interrupted"
        raise
    report.outcome = "promoted"
    log.info("%s promoted:\n%s", what, report.summary())
    return report


def expected_prediction_shift(client: Any, model_name: str, candidate_version: str, candidate: Any, rows: Any) -> tuple[float, str | None]:
    """(PSI between the champion's and the candidate's scores on `rows`, champion version): the shift a canary
    of the candidate should show against the champion serving the same traffic. (0.0, None) without a
    comparable champion. The rollout fails only on a shift well beyond this one (RolloutPolicy.expected_psi)."""
    import pandas as pd  # noqa: F401

    from components.core import bundle as bundle_lib
    from components.core import tracking

    found = tracking.load_champion(client, model_name, candidate_version) if not rows.empty else None
    if found is None:
        return 0.0, None
    version, champion = found
    if [f for f in champion.feature_names if f not in rows.columns]:
        return 0.0, None
    theirs = champion.predict_proba(bundle_lib.columns_from_frame(rows, champion.feature_names))
    ours = candidate.predict_proba(bundle_lib.columns_from_frame(rows, candidate.feature_names))
    return float(prediction_psi(np.asarray(theirs), np.asarray(ours))), str(version.version)
