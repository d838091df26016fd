"""The cheap count of the after-build check: what :func:`kiln.gc.inventory.take` counts
as :attr:`~kiln.gc.entries.Inventory.kept`, as a ``du`` of the root (``tmp/`` aside)
that reads no file and uses the remembered sizes of trees (:mod:`kiln.gc.sizes`)."""

from __future__ import annotations

import contextlib
import os
import re
import stat
from pathlib import Path

from kiln.cache.mounts.store import LOCK_SUFFIX, STATE_SUFFIX
from kiln.gc.sizes import Seen, SizeCache, on_disk, tree_size
from kiln.state import KilnRoot

HEX64 = re.compile(r"[0-9a-f]{64}")  # a snapshot, a context view, a blob, a record
HEX32 = re.compile(r"[0-9a-f]{32}")  # a cache mount


def measure(root: KilnRoot, *, now: int, busy_since: int) -> int:
    """The bytes under *root* but ``tmp/`` (see :func:`kiln.gc.inventory.take` for *now*
    and *busy_since*)."""
    top = root.path
    sizes = SizeCache(top / "gc" / "sizes.json")
    seen: Seen = set()
    try:
        total = on_disk(top.lstat(), seen)
        entries = sorted(os.scandir(top), key=lambda e: e.name == "gc")  # gc/ last
    except OSError:
        return 0
    for entry in entries:
        path = Path(entry.path)
        if entry.name == "tmp":
            continue
        if entry.name == "gc":
            sizes.save(forget_unused=False)
            total += tree_size(path, seen)
        elif entry.name in ("snapshots", "contexts"):
            total += _measure_fixed(path, entry.name, sizes, seen)
        elif entry.name == "cache":
            total += on_disk(entry.stat(follow_symlinks=False), seen)
            for sub in os.scandir(path):
                if sub.name == "mounts":
                    total += _measure_mounts(Path(sub.path), sizes, seen, now, busy_since)
                else:
                    total += tree_size(Path(sub.path), seen)
        else:
            total += tree_size(path, seen)
    return total


def _measure_fixed(path: Path, name: str, sizes: SizeCache, seen: Seen) -> int:
    total = on_disk(path.lstat(), seen)
    for entry in os.scandir(path):
        st = entry.stat(follow_symlinks=False)
        if HEX64.fullmatch(entry.name) and stat.S_ISDIR(st.st_mode):
            total += sizes.fixed(f"{name}/{entry.name}", Path(entry.path), st)
        else:
            total += tree_size(Path(entry.path), seen)
    return total


def _measure_mounts(path: Path, sizes: SizeCache, seen: Seen, now: int, busy_since: int) -> int:
    total = on_disk(path.lstat(), seen)
    for entry in os.scandir(path):
        st = entry.stat(follow_symlinks=False)
        if HEX32.fullmatch(entry.name) and stat.S_ISDIR(st.st_mode):
            used = mount_used(path, entry.name, st)
            total += sizes.changing(f"cache/mounts/{entry.name}", Path(entry.path), st, used,
                                    now, quiet=used < busy_since)  # fmt: skip
        else:
            total += tree_size(Path(entry.path), seen)
    return total


def mount_used(base: Path, name: str, st: os.stat_result) -> int:
    """The last use (ns) of the cache mount *name* (directory ``lstat`` *st*)."""
    used = st.st_mtime_ns
    for other in (f".{name}{LOCK_SUFFIX}", f".{name}{STATE_SUFFIX}"):
        with contextlib.suppress(OSError):
            used = max(used, (base / other).lstat().st_mtime_ns)
    return used
