"""This process's cgroups, read from where the kernel shows them: the limits a container sets.

A process belongs to one cgroup per hierarchy (``/proc/self/cgroup``): the unified one of cgroup v2
(line ``0::/path``), and under cgroup v1 one per controller (``4:cpu,cpuacct:/path``). A limit may
be set on the process's cgroup or on any cgroup above it, and the tightest one holds, so ``levels``
lists them all. Inside a container the mount's root is the container's own cgroup: the path's
levels that this view lacks are skipped, and a path that leaves the namespace's root ('..') names
no level this view can find. Whatever cannot be read counts as no limit.
"""

from __future__ import annotations

import os
from typing import NamedTuple

CGROUP_ROOT = "/sys/fs/cgroup"
PROC_CGROUP = "/proc/self/cgroup"


class Level(NamedTuple):
    directory: str  # the cgroup's folder in the cgroup filesystem
    version: int  # 1 or 2


def levels(controller: str, v1_mounts: tuple[str, ...]) -> list[Level]:
    """This process's cgroup and its ancestors in the unified hierarchy and in the v1 hierarchy of
    ``controller`` (mounted under its controllers' joint name, or one of ``v1_mounts``)."""
    membership = read_text(PROC_CGROUP)
    if membership is None:
        return []
    found = []
    for line in membership.splitlines():
        fields = line.split(":", 2)  # hierarchy id, controllers, path (which may hold colons)
        if len(fields) != 3 or ".." in fields[2].split("/"):
            continue
        _, controllers, path = fields
        if controllers == "":  # cgroup v2: the unified hierarchy (under 'unified' beside v1 ones)
            root = CGROUP_ROOT if os.path.exists(os.path.join(CGROUP_ROOT, "cgroup.controllers")) else \
                os.path.join(CGROUP_ROOT, "unified")
            found += [Level(os.path.join(root, level), 2) for level in _ancestry(path)]
        elif controller in controllers.split(","):
            for mount in (controllers, *v1_mounts):
                root = os.path.join(CGROUP_ROOT, mount)
                if os.path.isdir(root):
                    found += [Level(os.path.join(root, level), 1) for level in _ancestry(path)]
                    break
    return found


def _ancestry(path: str) -> list[str]:
    """'/a/b' -> ['a/b', 'a', '']: a cgroup and its ancestors, relative to the hierarchy's root."""
    parts = [part for part in path.split("/") if part]
    return ["/".join(parts[:end]) for end in range(len(parts), -1, -1)]


def read_text(filename: str) -> str | None:
    """The file's text (bytes that are not UTF-8 replaced: a cgroup's name may hold any), None where
    it cannot be read (no such level in this view, no such controller)."""
    try:
        with open(filename, "rb") as file:
            return file.read().decode("utf-8", errors="replace")
    except OSError:
        return None


def read_fields(directory: str, name: str) -> list[str] | None:
    """The whitespace-separated fields of a cgroup file, None where it cannot be read."""
    text = read_text(os.path.join(directory, name))
    return None if text is None else text.split()


def whole_number(field: str) -> int | None:
    """A counter or limit as the kernel writes it (decimal digits), else None ('max', -1, junk)."""
    return int(field) if field.isdigit() and field.isascii() else None


V1_MEMORY_MOUNTS = ("memory",)


# Per version: the limit, the usage, and the usage's page cache that the kernel can drop (in memory.stat).
MEMORY_FILES = {2: ("memory.max", "memory.current", "inactive_file"),
                1: ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")}


def memory_headroom() -> int | None:
    """Bytes this process's cgroups let it use beyond what they use now: the least, over its cgroup
    and those above it, of limit - (usage - inactive page cache), as ``docker stats`` counts it (the
    usage counts files read and written, which the kernel drops under pressure); None where no limit
    is set or readable."""
    room = []
    for level in levels("memory", V1_MEMORY_MOUNTS):
        limit_name, usage_name, cache_name = MEMORY_FILES[level.version]
        limit, usage = read_fields(level.directory, limit_name), read_fields(level.directory, usage_name)
        if not limit or not usage or len(limit) != 1 or len(usage) != 1:
            continue
        limit_bytes, usage_bytes = whole_number(limit[0]), whole_number(usage[0])
        if limit_bytes is not None and usage_bytes is not None and limit_bytes < 2**62:  # v1 writes ~2**63 for none
            used = usage_bytes - min(_stat_entry(level.directory, cache_name), usage_bytes)
            room.append(max(0, limit_bytes - used))
    return min(room) if room else None


def _stat_entry(directory: str, name: str) -> int:
    """An entry of the cgroup's memory.stat (``name value`` lines), 0 where absent or unreadable."""
    fields = read_fields(directory, "memory.stat") or []
    for key, value in zip(fields[::2], fields[1::2]):
        if key == name:
            return whole_number(value) or 0
    return 0
