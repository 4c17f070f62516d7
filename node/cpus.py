"""How many CPUs this process may use, for ``fugato serve --workers auto``.

``os.cpu_count()`` sees the host's CPUs. A container's CPU limit is a CFS quota on its cgroup instead
(Kubernetes' ``resources.limits.cpu``), so the worker count is the affinity mask (cpusets, ``taskset``) capped by
the smallest quota found on the process's cgroup or any of its ancestors, rounded up: a 1.5-CPU limit gets 2
workers, each of which is then throttled a little rather than leaving half a CPU unused.

Both cgroup layouts are read: v2 (``cpu.max``: ``"<quota> <period>"`` or ``"max <period>"``) and v1
(``cpu.cfs_quota_us``, ``-1`` for none, and ``cpu.cfs_period_us``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path, PurePosixPath
from typing import Final

CGROUP_ROOT: Final = Path("/sys/fs/cgroup")
PROC_CGROUP: Final = Path("/proc/self/cgroup")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _own_paths(proc_cgroup: Path) -> tuple[str | None, str | None]:
    """(v2 path, v1 ``cpu`` controller path) of this process, from ``/proc/self/cgroup``."""
    v2: str | None = None
    v1: str | None = None
    for line in (_read(proc_cgroup) or "").splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and not controllers:
            v2 = path
        elif "cpu" in controllers.split(","):
            v1 = path
    return v2, v1


def _with_ancestors(mount: Path, path: str | None) -> Iterator[Path]:
    """``mount/path`` and each of its parents up to ``mount`` itself. In a container with its own cgroup
    namespace the path is ``/`` and the mount is the container's cgroup; without one, the host path may not
    exist under the mount, and the mount itself is then the container's cgroup."""
    parts = PurePosixPath(path or "/").parts[1:]
    for n in range(len(parts), -1, -1):
        yield mount.joinpath(*parts[:n])


def _v2_quota(directory: Path) -> Fraction | None:
    text = _read(directory / "cpu.max")
    if text is None:
        return None
    fields = text.split()
    if len(fields) != 2 or fields[0] == "max":
        return None
    try:
        quota, period = int(fields[0]), int(fields[1])
    except ValueError:
        return None
    return Fraction(quota, period) if quota > 0 and period > 0 else None


def _v1_quota(directory: Path) -> Fraction | None:
    quota_text, period_text = _read(directory / "cpu.cfs_quota_us"), _read(directory / "cpu.cfs_period_us")
    if quota_text is None or period_text is None:
        return None
    try:
        quota, period = int(quota_text), int(period_text)
    except ValueError:
        return None
    return Fraction(quota, period) if quota > 0 and period > 0 else None  # -1: no quota


def cgroup_cpu_limit(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> Fraction | None:
    """The CPU quota of this process's cgroup in CPUs (``Fraction(3, 2)`` for 1.5), or None without one."""
    v2_path, v1_path = _own_paths(proc_cgroup)
    quotas: list[Fraction] = []
    for directory in _with_ancestors(root, v2_path):
        quota = _v2_quota(directory)
        if quota is not None:
            quotas.append(quota)
    for name in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        if (root / name).is_dir():
            for directory in _with_ancestors(root / name, v1_path):
                quota = _v1_quota(directory)
                if quota is not None:
                    quotas.append(quota)
            break
    return min(quotas) if quotas else None


def available_cpus() -> int:
    """CPUs in this process's affinity mask (all CPUs where the platform has no affinity)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def cpu_count(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP, available: int | None = None) -> int:
    """Workers for ``--workers auto``: the affinity mask capped by the cgroup CPU quota rounded up; at least 1."""
    cpus = available_cpus() if available is None else available
    limit = cgroup_cpu_limit(root, proc_cgroup)
    if limit is not None:
        cpus = min(cpus, -(-limit.numerator // limit.denominator))
    return max(1, cpus)
