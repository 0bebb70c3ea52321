"""How much memory this process may still allocate: the kernel's MemAvailable, lowered by
every memory limit of the control groups (cgroup v1 and v2) the process belongs to.

A container or a systemd unit limits memory through its cgroup, at any level of the
hierarchy: the process's own group, or any group above it up to the mount point. The
room left under a limit is the limit less the group's usage, plus the page cache the
kernel would reclaim before failing (inactive file pages). The smallest room over all
levels of every mounted memory hierarchy, and MemAvailable, is what is left.

Read from the same files the kernel documents, relative to `root` (tests pass a fake
tree): /proc/self/cgroup (which group, per hierarchy), /proc/self/mountinfo (where each
hierarchy is mounted and which part of it this mount namespace sees), /proc/meminfo;
in each group folder, v2: memory.max, memory.current, memory.stat (inactive_file);
v1: memory.limit_in_bytes, memory.usage_in_bytes, memory.stat (total_inactive_file).
Files that are absent or unreadable are skipped; "max" and v1's near-2^63 "no limit"
mean no limit.
"""

from __future__ import annotations

import os

MEMORY_FRACTION = 0.8          # of what is available, to leave room for everything else
WHOLE_IMAGE_BUDGET = 3 * 2**30  # the working budget when more than that is available
NO_LIMIT = 2**60               # v1 writes PAGE_COUNTER_MAX pages (about 2^63 bytes)
_READ_LIMIT = 1 << 20          # no file read here is larger; a bigger one is not ours


def _read(path: str) -> str | None:
    try:
        with open(path, "rb") as fh:
            return fh.read(_READ_LIMIT).decode("ascii", "replace")
    except OSError:
        return None


def _number(text: str | None) -> int | None:
    if text is None:
        return None
    text = text.strip()
    if not text or text == "max":
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    return value if 0 <= value < NO_LIMIT else None


def _stat_field(text: str | None, name: str) -> int:
    for line in (text or "").splitlines():
        key, _, value = line.partition(" ")
        if key == name:
            return _number(value) or 0
    return 0


def meminfo_available(root: str = "/") -> int | None:
    for line in (_read(os.path.join(root, "proc/meminfo")) or "").splitlines():
        if line.startswith("MemAvailable:"):
            try:
                return int(line.split()[1]) * 1024
            except (IndexError, ValueError):
                return None
    return None


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (\\040 ...)."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def _memory_mounts(root: str) -> list[tuple[str, str, str]]:
    """(version "1" | "2", mount root inside the hierarchy, mount point) of every
    mounted cgroup2 hierarchy and every cgroup v1 hierarchy with the memory controller."""
    mounts = []
    for line in (_read(os.path.join(root, "proc/self/mountinfo")) or "").splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or len(tail) < 1:
            continue
        fstype = tail[0]
        options = tail[2].split(",") if len(tail) > 2 else []
        if fstype == "cgroup2":
            mounts.append(("2", _unescape(fields[3]), _unescape(fields[4])))
        elif fstype == "cgroup" and "memory" in options:
            mounts.append(("1", _unescape(fields[3]), _unescape(fields[4])))
    return mounts


def _own_groups(root: str) -> dict[str, str]:
    """{"2": path} for the unified hierarchy and {"1": path} for the v1 memory one."""
    groups: dict[str, str] = {}
    for line in (_read(os.path.join(root, "proc/self/cgroup")) or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            groups.setdefault("2", path)
        elif "memory" in controllers.split(","):
            groups["1"] = path
    return groups


def _room_in(folder: str, version: str) -> int | None:
    """limit - usage + inactive file cache of one group folder; None without a limit."""
    if version == "2":
        limit = _number(_read(os.path.join(folder, "memory.max")))
        usage = _number(_read(os.path.join(folder, "memory.current")))
        cache = _stat_field(_read(os.path.join(folder, "memory.stat")), "inactive_file")
    else:
        limit = _number(_read(os.path.join(folder, "memory.limit_in_bytes")))
        usage = _number(_read(os.path.join(folder, "memory.usage_in_bytes")))
        cache = _stat_field(_read(os.path.join(folder, "memory.stat")), "total_inactive_file")
    if limit is None:
        return None
    return max(0, limit - (usage or 0) + min(cache, usage or 0))


def cgroup_room(root: str = "/") -> int | None:
    """The smallest room under any memory limit of this process's cgroups, at every
    level from its own group up to the top of each mount; None when nothing limits."""
    groups = _own_groups(root)
    rooms = []
    for version, mount_root, mount_point in _memory_mounts(root):
        path = groups.get(version)
        if path is None:
            continue
        # the part of the group path below what this mount shows
        relative = os.path.relpath(path, mount_root) if mount_root != "/" else path.lstrip("/")
        if relative.startswith(".."):
            relative = ""   # the group lies outside this mount's view: check the mount root
        parts = [p for p in relative.split("/") if p not in ("", ".")]
        base = os.path.join(root, mount_point.lstrip("/"))
        for depth in range(len(parts), -1, -1):
            room = _room_in(os.path.join(base, *parts[:depth]), version)
            if room is not None:
                rooms.append(room)
    return min(rooms) if rooms else None


def available_memory(root: str = "/") -> int | None:
    """Bytes this process may still allocate: the smaller of MemAvailable and the room
    under every cgroup memory limit; None where neither can be read."""
    found = [v for v in (meminfo_available(root), cgroup_room(root)) if v is not None]
    return min(found) if found else None


_NOW = object()


def working_budget(available=_NOW) -> int:
    """What one run may plan to use: MEMORY_FRACTION of `available` (default: what is
    available now), at most WHOLE_IMAGE_BUDGET, which is also the budget when nothing
    can be read (available None)."""
    available = available_memory() if available is _NOW else available
    if available is None:
        return WHOLE_IMAGE_BUDGET
    return min(WHOLE_IMAGE_BUDGET, int(available * MEMORY_FRACTION))
