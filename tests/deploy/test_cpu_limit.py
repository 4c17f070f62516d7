"""``--workers auto``: one worker per CPU of the container's limit (cgroup v2 ``cpu.max`` or v1 CFS quota),
rounded up, capped by the affinity mask, at least one; and one worker whatever the CPUs with the memory engine."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import pytest
from harness import ServerFactory

from node.workers import cgroup_cpu_limit, cpu_count


def children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def fake_cgroup(tmp_path: Path, proc_line: str, files: dict[str, str]) -> tuple[Path, Path]:
    """A fake ``/sys/fs/cgroup`` tree and ``/proc/self/cgroup`` file."""
    root = tmp_path / "cgroup"
    root.mkdir()
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text(proc_line + "\n")
    return root, proc


@pytest.mark.parametrize(("cpu_max", "available", "workers"), [
    ("150000 100000", 8, 2),   # 1.5 CPUs: rounded up
    ("200000 100000", 8, 2),   # exactly 2
    ("10000 100000", 8, 1),    # 0.1 CPU: at least one
    ("800000 100000", 3, 3),   # the affinity mask (cpuset, taskset) is smaller
    ("max 100000", 6, 6),      # no quota
    ("garbage", 4, 4),         # unreadable: ignored
])
def test_cgroup_v2_quota_in_a_container(tmp_path: Path, cpu_max: str, available: int, workers: int) -> None:
    # A container with its own cgroup namespace: /proc/self/cgroup says "/", the mount is its cgroup.
    root, proc = fake_cgroup(tmp_path, "0::/", {"cpu.max": cpu_max, "cgroup.controllers": "cpu memory"})
    assert cpu_count(root, proc, available=available) == workers


def test_cgroup_v2_the_smallest_quota_of_the_cgroup_and_its_ancestors(tmp_path: Path) -> None:
    root, proc = fake_cgroup(tmp_path, "0::/kubepods/pod1/ctr", {
        "kubepods/cpu.max": "400000 100000",
        "kubepods/pod1/cpu.max": "250000 100000",
        "kubepods/pod1/ctr/cpu.max": "max 100000",
    })
    assert cgroup_cpu_limit(root, proc) == Fraction(5, 2)
    assert cpu_count(root, proc, available=16) == 3


def test_cgroup_v2_host_path_missing_under_the_mount(tmp_path: Path) -> None:
    # No cgroup namespace: the host path is not under the container's mount, whose root is its cgroup.
    root, proc = fake_cgroup(tmp_path, "0::/kubepods.slice/pod1.slice/cri-abc.scope", {"cpu.max": "300000 100000"})
    assert cpu_count(root, proc, available=64) == 3


def test_cgroup_v1_cfs_quota(tmp_path: Path) -> None:
    root, proc = fake_cgroup(tmp_path, "5:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc", {
        "cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "250000",
        "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000",
        "cpu,cpuacct/cpu.cfs_quota_us": "-1",
        "cpu,cpuacct/cpu.cfs_period_us": "100000",
    })
    assert cgroup_cpu_limit(root, proc) == Fraction(5, 2)
    assert cpu_count(root, proc, available=8) == 3


def test_cgroup_v1_without_quota(tmp_path: Path) -> None:
    root, proc = fake_cgroup(tmp_path, "2:cpu:/", {"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"})
    assert cgroup_cpu_limit(root, proc) is None
    assert cpu_count(root, proc, available=5) == 5


def test_no_cgroup_files_at_all(tmp_path: Path) -> None:
    assert cpu_count(tmp_path / "missing", tmp_path / "missing-proc", available=0) == 1


async def test_auto_with_the_memory_engine_runs_one_process(server_factory: ServerFactory) -> None:
    # The container image always passes --workers auto; with the memory engine that must still start.
    server = await server_factory(name="auto", extra_args=("--workers", "auto"))
    assert len((await server.api_result("info"))["nodes"]) == 1
    assert server.pid is not None and children(server.pid) == []  # no supervisord: a single process
    if cpu_count() > 1:
        assert "--workers auto: 1 worker" in server.log_text()
