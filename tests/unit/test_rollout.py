"""The progressive rollout's pure parts: the policy, the traffic split, the analysis and its PSI, and the controller
driven through a scripted backend (every call recorded), plus the version label the cluster analysis selects on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from components.core.bundle import served_version
from components.core.settings import canary_steps
from components.deployment.canary_analysis import queries
from components.deployment.replay import to_canary
from components.deployment.rollout import DeployError, Observation, RolloutPolicy, analyze, prediction_psi, run_rollout

POLICY = RolloutPolicy(steps=(10, 25, 50, 100), max_failed_analyses=2, step_seconds=0, min_requests=50)


def obs(requests: int = 200, errors: int = 0, p99: float | None = 5.0, seed: int = 0, shift: float = 0.0) -> Observation:
    rng = np.random.default_rng(seed)
    return Observation(requests, errors, p99, np.clip(rng.beta(2, 8, requests) + shift, 0, 1))


def test_steps_and_policy_are_validated():
    assert canary_steps("10, 25,50,100") == (10, 25, 50, 100)
    for bad in ("10,5,100", "10,50", "0,100", "ten", "10,10,100"):
        with pytest.raises(ValueError, match="MLWF_CANARY_STEPS"):
            canary_steps(bad)
    with pytest.raises(ValueError, match="failure limit"):
        RolloutPolicy(max_failed_analyses=0)
    assert POLICY.remaining(None) == (10, 25, 50, 100)
    assert POLICY.remaining(25) == (25, 50, 100) and POLICY.remaining(30) == (50, 100)


@pytest.mark.parametrize("percent", [1, 10, 25, 33, 50, 100])
def test_the_split_sends_exactly_the_percent_evenly(percent):
    picks = [to_canary(i, percent) for i in range(1000)]
    assert sum(picks) == 10 * percent
    assert all(sum(picks[k : k + 100]) == percent for k in range(0, 1000, 100))
    if percent <= 50:  # never two canary requests in a row below half: the share is spread, not bunched
        assert not any(a and b for a, b in zip(picks, picks[1:]))


def test_psi_is_small_for_the_same_distribution_and_large_for_a_shift():
    rng = np.random.default_rng(0)
    for n in (50, 500):
        same = [prediction_psi(rng.beta(2, 8, n), rng.beta(2, 8, n)) for _ in range(20)]
        assert np.median(same) < 0.1, (n, same)
    assert prediction_psi(rng.beta(2, 8, 500), rng.beta(8, 2, 500)) > 1.0


def test_a_healthy_canary_passes_every_check():
    analysis = analyze(10, obs(900, 1, 4.0), obs(100, 0, 5.0, seed=1), POLICY)
    assert analysis.passed and [c.name for c in analysis.checks] == ["success_rate", "p99_latency", "prediction_psi"]


def test_each_check_fails_on_its_own_problem():
    errors = analyze(10, obs(900, 0), obs(100, 30, seed=1), POLICY)
    slow = analyze(10, obs(900, 0, 4.0), obs(100, 0, 400.0, seed=1), POLICY)
    shifted = analyze(10, obs(900, 0), obs(100, 0, seed=1, shift=0.4), POLICY)
    assert [c.name for c in errors.checks if c.status == "fail"] == ["success_rate"]
    assert "canary 0.700 (30/100 failed) vs stable 1.000, minimum 0.990" in errors.failures()[0]
    assert [c.name for c in slow.checks if c.status == "fail"] == ["p99_latency"]
    assert "limit 31.0 ms" in slow.failures()[0]  # 4 ms * 1.5 + 25 ms slack
    assert [c.name for c in shifted.checks if c.status == "fail"] == ["prediction_psi"]


def test_the_shift_offline_scoring_expects_is_allowed_and_only_a_larger_one_fails():
    """A retrained model (after drift) scores differently from the champion on purpose: the canary analysis
    allows the PSI the two versions showed offline on the same rows, plus max_psi; beyond that it fails."""
    import dataclasses

    stable, canary = obs(900, 0), obs(300, 0, seed=1, shift=0.05)
    observed = prediction_psi(stable.predictions, canary.predictions)
    assert observed > POLICY.max_psi  # without the allowance this canary is rolled back
    assert [c.name for c in analyze(10, stable, canary, POLICY).checks if c.status == "fail"] == ["prediction_psi"]

    expected = dataclasses.replace(POLICY, expected_psi=(observed - 0.1))
    allowed = analyze(10, stable, canary, expected)
    assert allowed.passed
    psi = next(c for c in allowed.checks if c.name == "prediction_psi")
    assert psi.limit == pytest.approx(POLICY.max_psi + (observed - 0.1))
    assert f"over the {observed - 0.1:.3f} expected offline" in psi.detail

    broken = obs(300, 0, seed=2, shift=0.7)  # far beyond the expected shift: still caught
    assert not analyze(10, stable, broken, expected).passed
    with pytest.raises(ValueError, match="invalid analysis thresholds"):
        RolloutPolicy(expected_psi=-0.1)


def test_too_little_traffic_is_inconclusive_and_does_not_pass():
    analysis = analyze(10, obs(900), obs(12, seed=1), POLICY)
    assert not analysis.passed and {c.status for c in analysis.checks} == {"inconclusive"}
    assert "canary had 12 request(s) (< 50)" in analysis.failures()[0]


class ScriptedBackend:
    """Plays back one (stable, canary) pair per observation and records every call the controller makes."""

    def __init__(self, canaries: list[Observation], fail_traffic_at: int | None = None) -> None:
        self.canaries, self.fail_traffic_at, self.calls = list(canaries), fail_traffic_at, []

    def set_traffic(self, percent):
        self.calls.append(("traffic", percent))
        if percent == self.fail_traffic_at:
            raise DeployError("not ready after 5s")

    def observe(self, percent, seconds):
        self.calls.append(("observe", percent))
        stable = obs(0) if percent == 100 else obs(900)
        return stable, self.canaries.pop(0)

    def checkpoint(self, percent, failures):
        self.calls.append(("checkpoint", percent, failures))

    def promote(self):
        self.calls.append(("promote",))

    def rollback(self):
        self.calls.append(("rollback",))


def test_the_controller_promotes_after_every_step_passes():
    backend = ScriptedBackend([obs(100, seed=i) for i in range(4)])
    report = run_rollout(backend, POLICY, "canary v2")
    assert report.outcome == "promoted" and report.percents == [10, 25, 50, 100]
    assert [c for c in backend.calls if c[0] in ("traffic", "promote", "rollback")] == [
        ("traffic", 10),
        ("traffic", 25),
        ("traffic", 50),
        ("traffic", 100),
        ("promote",),
    ]
    # At 100% stable takes nothing: the canary is compared with stable's earlier windows together.
    assert report.analyses[-1].stable.requests == 2700 and report.analyses[-1].passed


def test_one_failed_analysis_repeats_the_step_and_the_limit_rolls_back():
    backend = ScriptedBackend([obs(100, seed=1), obs(100, 50, seed=2), obs(100, seed=3), obs(100, 0, 900.0, seed=4)])
    with pytest.raises(DeployError) as err:
        run_rollout(backend, POLICY, "canary v2")
    assert [c for c in backend.calls if c[0] != "checkpoint"] == [
        ("traffic", 10),
        ("observe", 10),
        ("traffic", 25),
        ("observe", 25),
        ("observe", 25),
        ("traffic", 50),
        ("observe", 50),
        ("rollback",),
    ]
    message = str(err.value)
    assert message.startswith("canary v2 rolled back: 2 failed analyses (limit 2): [25%] success_rate fail")
    assert "[50%] p99_latency fail" in message  # every failed check is named, from every failed analysis
    assert ("checkpoint", 50, 2) in backend.calls and err.value.report.outcome == "rolled-back"


def test_a_canary_that_never_takes_traffic_is_rolled_back():
    backend = ScriptedBackend([obs(100)], fail_traffic_at=10)
    with pytest.raises(DeployError, match="rolled back: the canary did not take 10% of traffic: not ready after 5s"):
        run_rollout(backend, POLICY, "canary v2")
    assert backend.calls == [("traffic", 10), ("rollback",)]


def test_a_resumed_rollout_starts_at_its_percent_and_keeps_its_failures():
    backend = ScriptedBackend([obs(100, 40, seed=1)])
    with pytest.raises(DeployError, match=r"rolled back: 2 failed analyses \(limit 2\): \[50%\] success_rate fail"):
        run_rollout(backend, POLICY, "canary v2", start_percent=50, failures=1)
    assert backend.calls[0] == ("traffic", 50) and backend.calls[-1] == ("rollback",)


def test_a_crash_neither_promotes_nor_rolls_back():
    class Crashing(ScriptedBackend):
        def observe(self, percent, seconds):
            raise KeyboardInterrupt

    backend = Crashing([])
    with pytest.raises(KeyboardInterrupt):
        run_rollout(backend, POLICY, "canary v2")
    assert ("rollback",) not in backend.calls and ("promote",) not in backend.calls


def test_the_model_server_labels_with_the_one_served_version_rule(tmp_path):
    """The server's `version` label comes from core.bundle.served_version, the rule the canary analysis queries by."""
    from components.core import bundle as bundle_lib

    (tmp_path / bundle_lib.MANIFEST).write_text(json.dumps({"sha256": {}}))
    digest = bundle_lib.bundle_digest(tmp_path)
    assert served_version({"lineage": {"model_version": "7"}}, digest) == "7"
    assert served_version({"lineage": {"inputs_fingerprint": "abcdef0123456789"}}, digest) == "abcdef012345"
    assert served_version({"lineage": {}}, digest) == digest[:12]
    source = (Path(__file__).resolve().parents[2] / "serving" / "model.py").read_text()
    assert "bundle_lib.served_version(" in source


def test_label_values_are_escaped_in_queries():
    q = queries("mlwf", 'odd"name', "1", 299.6)
    assert q["requests"] == 'sum(increase(mlwf_inference_requests_total{namespace="mlwf",model="odd\\"name",version="1"}[300s]))'
