"""cpu_budget reads cgroup v2/v1 quotas and the affinity mask; fake cgroup files stand in for a pod's."""

from __future__ import annotations

import os

import pytest
import torch

from components.core import threads


def write(tmp_path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text + "\n")
    return str(path)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("max 100000", None),
        ("max", None),
        ("200000 100000", 2),
        ("150000 100000", 2),  # 1.5 CPUs: rounded up
        ("50000 100000", 1),
        ("400000", 4),  # period omitted: the kernel default 100000
        ("garbage here", None),
        ("", None),
    ],
)
def test_cgroup_v2_cpu_max(tmp_path, text, expected):
    assert threads.quota_v2(write(tmp_path, "cpu.max", text)) == expected


def test_cgroup_v1_cfs_quota(tmp_path):
    period = write(tmp_path, "cpu.cfs_period_us", "100000")
    assert threads.quota_v1(write(tmp_path, "q1", "-1"), period) is None  # no limit
    assert threads.quota_v1(write(tmp_path, "q2", "300000"), period) == 3
    assert threads.quota_v1(write(tmp_path, "q3", "250000"), write(tmp_path, "p3", "100000")) == 3
    assert threads.quota_v1(write(tmp_path, "q4", "50000"), write(tmp_path, "p4", "200000")) == 1
    assert threads.quota_v1(tmp_path / "missing", period) is None


def test_cpu_budget_is_the_smallest_limit(tmp_path):
    missing = str(tmp_path / "none")
    v2_two = write(tmp_path, "cpu.max", "200000 100000")
    v2_unlimited = write(tmp_path, "cpu.max.unlimited", "max 100000")
    v1_three = write(tmp_path, "cfs_quota_us", "300000")
    v1_period = write(tmp_path, "cfs_period_us", "100000")

    def eight() -> int:
        return 8

    assert threads.cpu_budget(v2_two, missing, missing, affinity=eight) == 2
    assert threads.cpu_budget(v2_unlimited, v1_three, v1_period, affinity=eight) == 3
    assert threads.cpu_budget(v2_two, v1_three, v1_period, affinity=eight) == 2
    assert threads.cpu_budget(missing, missing, missing, affinity=eight) == 8  # no cgroup files: the affinity mask
    assert threads.cpu_budget(v2_two, v1_three, v1_period, affinity=lambda: 1) == 1  # pinned to one CPU
    assert threads.cpu_budget(missing, missing, missing, affinity=lambda: 0) == 1  # never below one


def test_cpu_budget_on_this_machine_is_within_the_affinity_mask():
    budget = threads.cpu_budget()
    assert 1 <= budget <= len(os.sched_getaffinity(0))


@pytest.fixture
def restore_torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_apply_torch_threads(monkeypatch, restore_torch_threads):
    assert threads.apply_torch_threads(1) == 1
    assert torch.get_num_threads() == 1
    monkeypatch.setattr(threads, "cpu_budget", lambda: 2)
    assert threads.apply_torch_threads() == 2
    assert torch.get_num_threads() == 2
    # The inter-op pool is sized at most once per process; a second call does not raise.
    assert threads.apply_torch_threads(1) == 1


def test_openmp_waits_passively_unless_the_user_chose(tmp_path):
    """Set before torch loads libgomp (a fresh process, as every step is): spinning waiters collapse with a busy
    neighbour (components/core/threads.py:passive_openmp); a value the user exported is kept."""
    import os
    import subprocess
    import sys

    code = (
        "import os, sys\n"
        "from components.core.threads import apply_torch_threads\n"
        "apply_torch_threads(1)\n"
        "print(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    root = str(__import__("pathlib").Path(__file__).resolve().parents[2])
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["PASSIVE", "True"], out.stderr[-2000:]
    out = subprocess.run(
        [sys.executable, "-c", code], env={**env, "OMP_WAIT_POLICY": "ACTIVE"}, cwd=root, capture_output=True, text=True, timeout=120
    )
    assert out.stdout.split() == ["ACTIVE", "True"], out.stderr[-2000:]
