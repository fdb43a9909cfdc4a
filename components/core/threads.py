"""How many CPUs this process may really use, and torch's thread pools sized to it.

torch (and OpenMP) start one intra-op thread per core the machine shows, not per the CPU limit of the pod: a pod
limited to 4 CPUs on a 64-core node runs 64 spinning threads, and on a shared 2-core machine a second thread
turned a 531k samples/s MLP into 7.4k samples/s when another process held a core (shared/FACTS.md, "CPU threads").
The budget is the smallest of: the cgroup v2 quota (cpu.max "quota period", rounded up), the cgroup v1 CFS quota
(cpu.cfs_quota_us / cpu.cfs_period_us) and the CPUs the scheduler lets this process run on (sched_getaffinity).
"""

from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

CGROUP_V2_CPU_MAX = "/sys/fs/cgroup/cpu.max"
# cgroup v1 mounts the cpu controller as cpu, cpu,cpuacct or cpuacct,cpu depending on the distribution.
CGROUP_V1_DIRS = ("/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpu,cpuacct", "/sys/fs/cgroup/cpuacct,cpu")

_interop_set = False


def _read(path: str | os.PathLike[str]) -> str | None:
    try:
        return Path(path).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None  # no such controller here (not a container, or the other cgroup version)


def quota_v2(cpu_max: str | os.PathLike[str] = CGROUP_V2_CPU_MAX) -> int | None:
    """CPUs allowed by a cgroup v2 cpu.max ("max 100000" = no limit, "150000 100000" = 1.5 -> 2), or None."""
    text = _read(cpu_max)
    if not text:
        return None
    parts = text.split()
    if not parts or parts[0] == "max":
        return None
    try:
        quota = int(parts[0])
        period = int(parts[1]) if len(parts) > 1 else 100_000  # the kernel's default period
    except ValueError:
        log.warning("unreadable %s: %r; ignoring it", cpu_max, text)
        return None
    if quota <= 0 or period <= 0:
        return None
    return max(1, math.ceil(quota / period))


def quota_v1(quota_file: str | os.PathLike[str] | None = None, period_file: str | os.PathLike[str] | None = None) -> int | None:
    """CPUs allowed by a cgroup v1 CFS quota (cpu.cfs_quota_us = -1 means no limit), or None."""
    if quota_file is None:
        for directory in CGROUP_V1_DIRS:
            if Path(directory, "cpu.cfs_quota_us").exists():
                quota_file = Path(directory, "cpu.cfs_quota_us")
                period_file = period_file or Path(directory, "cpu.cfs_period_us")
                break
        else:
            return None
    quota_text = _read(quota_file)
    period_text = _read(period_file) if period_file is not None else None
    if not quota_text:
        return None
    try:
        quota = int(quota_text)
        period = int(period_text) if period_text else 100_000
    except ValueError:
        log.warning("unreadable CFS quota %s=%r period=%r; ignoring it", quota_file, quota_text, period_text)
        return None
    if quota <= 0 or period <= 0:
        return None
    return max(1, math.ceil(quota / period))


def affinity_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def cpu_budget(
    cpu_max: str | os.PathLike[str] = CGROUP_V2_CPU_MAX,
    cfs_quota: str | os.PathLike[str] | None = None,
    cfs_period: str | os.PathLike[str] | None = None,
    affinity: Callable[[], int] = affinity_cpus,
) -> int:
    """The number of CPUs this process may use: min(cgroup v2 quota, cgroup v1 quota, affinity), at least 1.

    The paths and the affinity probe are parameters so tests can point them at fake cgroup files."""
    limits = [affinity()]
    for limit in (quota_v2(cpu_max), quota_v1(cfs_quota, cfs_period)):
        if limit is not None:
            limits.append(limit)
    return max(1, min(limits))


def passive_openmp() -> bool:
    """Ask OpenMP to sleep, not spin, while its threads wait; True when that is in force for this process.

    Measured on a shared 2-core machine (MLP training, batch 1,024, 2 threads, one core busy with a neighbour): the
    default (spinning) ran at 27k-128k samples/s, OMP_WAIT_POLICY=PASSIVE at 510k-590k, and no slower when quiet
    (shared/FACTS.md, "CPU threads": spinning workers wait for the descheduled one). libgomp reads the variable once,
    when torch loads it, so this must run before the first `import torch`; a value the user set is kept."""
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE"


def apply_torch_threads(n: int | None = None) -> int:
    """Size torch's pools to `n` (default: cpu_budget()); returns the intra-op thread count set.

    The inter-op pool can be sized only once per process and only before it has run work; after that torch raises,
    and the existing size is kept (it matters far less than the intra-op pool, which is always set).
    """
    passive_openmp()
    import torch

    global _interop_set
    threads = max(1, int(n if n is not None else cpu_budget()))
    torch.set_num_threads(threads)
    if not _interop_set:
        _interop_set = True
        try:
            torch.set_num_interop_threads(threads)
        except RuntimeError as err:  # already started, or set before this call
            log.info("torch inter-op threads left at %d: %s", torch.get_num_interop_threads(), err)
    return threads
