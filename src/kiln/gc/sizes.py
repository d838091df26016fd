"""Bytes on disk, counted as ``du`` counts them, and a memo of the sizes of big trees.

A size is the space a file takes on disk (512 bytes per ``st_blocks``, what ``du`` shows, not
the apparent size): what a full disk runs out of. Directories count too, every inode is
counted once (hard links), and a walk never crosses into another file system (a mount
point below ``$KILN_ROOT`` — an overlay of a running step — counts as its directory
only, as ``du -x``).

Walking every file of every snapshot after every build would cost more than the build
saves, so the sizes of trees that never change once they are in place (unpacked
snapshots, build-context views: renamed in whole, used read-only) are remembered in
``$KILN_ROOT/gc/sizes.json`` by inode and mtime; a tree made again has a new inode. A
cache mount changes while steps use it: its size is remembered only when no running
build has used it since that build started, and only until its next use (its lock
file's mtime, touched by every use, is then newer than the measurement).
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from pathlib import Path

from kiln.state import write_atomic

_VERSION = 1

Seen = set[tuple[int, int]]


def on_disk(st: os.stat_result, seen: Seen) -> int:
    """The bytes *st* takes, 0 for a hard link already counted in *seen*."""
    if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
        key = (st.st_dev, st.st_ino)
        if key in seen:
            return 0
        seen.add(key)
    return st.st_blocks * 512


def tree_size(path: Path, seen: Seen) -> int:
    """The bytes *path* and everything below it take (0 when it is gone)."""
    try:
        top = path.lstat()
    except OSError:
        return 0
    total = on_disk(top, seen)
    if not stat.S_ISDIR(top.st_mode):
        return total
    pending = [os.fspath(path)]
    while pending:
        directory = pending.pop()
        try:
            entries = os.scandir(directory)
        except OSError:
            continue
        with entries:
            for entry in entries:
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                total += on_disk(st, seen)
                if stat.S_ISDIR(st.st_mode) and st.st_dev == top.st_dev:
                    pending.append(entry.path)
    return total


class SizeCache:
    """Remembered sizes of trees under a KILN_ROOT, by path relative to it."""

    def __init__(self, file: Path) -> None:
        self.file = file
        self._entries: dict[str, list[int]] = {}
        self._used: set[str] = set()
        self._changed = False
        try:
            raw = json.loads(file.read_bytes())
            if raw.get("version") == _VERSION and isinstance(raw.get("trees"), dict):
                self._entries = {
                    str(k): [int(x) for x in v]
                    for k, v in raw["trees"].items()
                    if isinstance(v, list) and len(v) == 3
                }
        except (OSError, ValueError, TypeError, AttributeError):
            self._entries = {}

    def fixed(self, key: str, path: Path, st: os.stat_result) -> int:
        """The size of the tree *path* (``lstat`` *st*) that never changes in place."""
        self._used.add(key)
        known = self._entries.get(key)
        if known is not None and known[:2] == [st.st_ino, st.st_mtime_ns]:
            return known[2]
        size = tree_size(path, set())
        self._remember(key, [st.st_ino, st.st_mtime_ns, size])
        return size

    def changing(
        self, key: str, path: Path, st: os.stat_result, last_use: int, measured_at: int,
        *, quiet: bool
    ) -> int:  # fmt: skip
        """The size of the tree *path* that steps change while they use it: remembered
        (as of *measured_at*, a file-system time taken before the walk) while it is not
        used again (*last_use* older than the measurement); *quiet*: no running build has
        used it, so what the walk sees may be remembered."""
        self._used.add(key)
        known = self._entries.get(key)
        if known is not None and known[0] == st.st_ino and last_use < known[1]:
            return known[2]
        size = tree_size(path, set())
        if quiet:
            self._remember(key, [st.st_ino, measured_at, size])
        elif key in self._entries:
            del self._entries[key]
            self._changed = True
        return size

    def _remember(self, key: str, entry: list[int]) -> None:
        if self._entries.get(key) != entry:
            self._entries[key] = entry
            self._changed = True

    def save(self, *, forget_unused: bool) -> None:
        """Write what changed (a lost race with another writer costs a walk next time);
        *forget_unused*: drop the trees this walk did not see (after a whole walk)."""
        if forget_unused:
            for key in [k for k in self._entries if k not in self._used]:
                del self._entries[key]
                self._changed = True
        if not self._changed:
            return
        data = json.dumps({"version": _VERSION, "trees": self._entries}, separators=(",", ":"))
        with contextlib.suppress(OSError):
            write_atomic(self.file, data.encode())
        self._changed = False
