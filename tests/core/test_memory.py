"""Available memory honours cgroup v1 and v2 memory limits at any level of the hierarchy
(fake /proc and /sys/fs/cgroup trees under tmp_path)."""

from __future__ import annotations

from pathlib import Path

from core.memory import available_memory, cgroup_room, working_budget

GIB = 2**30
V1_NO_LIMIT = "9223372036854771712"


def _tree(root: Path, cgroup: str, mountinfo: str, files: dict[str, str],
          meminfo_gib: int = 64) -> Path:
    (root / "proc/self").mkdir(parents=True)
    (root / "proc/self/cgroup").write_text(cgroup)
    (root / "proc/self/mountinfo").write_text(mountinfo)
    (root / "proc/meminfo").write_text(f"MemTotal: {meminfo_gib * 2**20} kB\n"
                                       f"MemAvailable: {meminfo_gib * 2**20} kB\n")
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


V1_MOUNTS = ("35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
             "32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n")
V2_MOUNT = "41 31 0:38 / /sys/fs/cgroup rw,relatime - cgroup2 cgroup2 rw\n"


def test_a_cgroup_v1_limit_on_the_process_group_is_honoured(tmp_path):
    group = "sys/fs/cgroup/memory/batch/job7"
    root = _tree(tmp_path, "4:memory:/batch/job7\n1:cpu:/\n0::/\n", V1_MOUNTS, {
        f"{group}/memory.limit_in_bytes": str(2 * GIB),
        f"{group}/memory.usage_in_bytes": str(GIB // 2),
        f"{group}/memory.stat": "cache 100\ntotal_inactive_file 0\n",
        "sys/fs/cgroup/memory/batch/memory.limit_in_bytes": V1_NO_LIMIT,
        "sys/fs/cgroup/memory/memory.limit_in_bytes": V1_NO_LIMIT,
    })
    assert cgroup_room(str(root)) == 2 * GIB - GIB // 2
    assert available_memory(str(root)) == 2 * GIB - GIB // 2
    assert working_budget(available_memory(str(root))) == int(1.5 * GIB * 0.8)


def test_a_limit_on_a_parent_group_counts_when_the_own_group_has_none(tmp_path):
    root = _tree(tmp_path, "0::/user.slice/user-1000.slice/session-3.scope\n", V2_MOUNT, {
        "sys/fs/cgroup/user.slice/user-1000.slice/session-3.scope/memory.max": "max",
        "sys/fs/cgroup/user.slice/user-1000.slice/session-3.scope/memory.current": "123",
        "sys/fs/cgroup/user.slice/user-1000.slice/memory.max": str(3 * GIB),
        "sys/fs/cgroup/user.slice/user-1000.slice/memory.current": str(GIB),
        "sys/fs/cgroup/user.slice/user-1000.slice/memory.stat":
            "anon 100\ninactive_file 268435456\nactive_file 5\n",
        "sys/fs/cgroup/user.slice/memory.max": str(8 * GIB),
        "sys/fs/cgroup/user.slice/memory.current": str(GIB),
    })
    # 3 GiB - 1 GiB in use + 256 MiB of reclaimable cache; the 8 GiB level leaves more
    assert cgroup_room(str(root)) == 2 * GIB + 2**28


def test_the_tightest_of_v1_v2_and_meminfo_wins(tmp_path):
    mounts = V1_MOUNTS + "41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n"
    files = {"sys/fs/cgroup/memory/a/memory.limit_in_bytes": str(6 * GIB),
             "sys/fs/cgroup/memory/a/memory.usage_in_bytes": "0",
             "sys/fs/cgroup/unified/a/memory.max": str(5 * GIB),
             "sys/fs/cgroup/unified/a/memory.current": "0"}
    root = _tree(tmp_path / "one", "4:memory:/a\n0::/a\n", mounts, files)
    assert available_memory(str(root)) == 5 * GIB
    root = _tree(tmp_path / "two", "4:memory:/a\n0::/a\n", mounts, files, meminfo_gib=4)
    assert available_memory(str(root)) == 4 * GIB


def test_a_container_sees_its_group_as_the_mount_root(tmp_path):
    # inside a container the mount's root field is the container's own group, and
    # /proc/self/cgroup names the full path: the limit sits at the mount point itself
    mounts = "900 800 0:40 /docker/abc /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"
    root = _tree(tmp_path, "0::/docker/abc\n", mounts, {
        "sys/fs/cgroup/memory.max": str(GIB), "sys/fs/cgroup/memory.current": str(GIB // 4)})
    assert cgroup_room(str(root)) == GIB - GIB // 4


def test_no_limits_and_damaged_files_mean_meminfo(tmp_path):
    root = _tree(tmp_path / "none", "4:memory:/\n0::/\n", V1_MOUNTS + V2_MOUNT, {
        "sys/fs/cgroup/memory/memory.limit_in_bytes": V1_NO_LIMIT,
        "sys/fs/cgroup/memory.max": "max"})
    assert cgroup_room(str(root)) is None
    assert available_memory(str(root)) == 64 * GIB
    root = _tree(tmp_path / "bad", "garbage\n4:memory\n0::/x\n", "nonsense line\n" + V2_MOUNT, {
        "sys/fs/cgroup/x/memory.max": "lots", "sys/fs/cgroup/x/memory.current": "-5"})
    assert cgroup_room(str(root)) is None
    assert available_memory(str(tmp_path / "nothing-here")) is None
    assert working_budget(None) == 3 * GIB
