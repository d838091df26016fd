"""A cache mount directory as a table of entries: what changed since a known state, what
is left out of an export, and trimming to a size cap.

An entry is known by its lstat: type and mode, owner, size, mtime, ctime and inode. ctime
cannot be set from user space, so a file written (or chmod-ed, renamed over) since the
table was made differs even if its size and mtime were put back; reading does not.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

Entry = tuple[int, int, int, int, int, int, int]  # mode, uid, gid, size, mtime, ctime, inode
Table = dict[str, Entry]


def _entry(st: os.stat_result) -> Entry:
    return (st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns, st.st_ctime_ns,
            st.st_ino)  # fmt: skip


def walk(root: Path) -> Iterator[tuple[str, str, os.stat_result]]:
    """Every entry below *root*: (relative path, path, lstat); directories not followed
    through symlinks. An entry that vanishes while walked is skipped."""
    todo = [("", os.fspath(root))]
    while todo:
        prefix, path = todo.pop()
        try:
            with os.scandir(path) as it:
                children = [(e.name, e.path) for e in it]
        except OSError:
            continue
        for name, child in children:
            try:
                st = os.lstat(child)
            except OSError:
                continue
            rel = prefix + name
            yield rel, child, st
            if stat.S_ISDIR(st.st_mode):
                todo.append((rel + "/", child))


@dataclass(frozen=True, slots=True)
class Scan:
    table: Table
    left_out: list[str]  # paths not exported: secret targets, files holding a secret

    @property
    def content_bytes(self) -> int:
        return sum(e[3] for e in self.table.values() if stat.S_ISREG(e[0]))


def scan(root: Path, *, excluded: Collection[str] = (), secrets: Collection[bytes] = ()) -> Scan:
    """The table of *root* without the *excluded* relative paths (and what is below them)
    and without regular files whose content is one of *secrets*."""
    table: Table = {}
    left_out: list[str] = []
    sizes = {len(s) for s in secrets if s}
    skipped: set[str] = set()
    for rel, path, st in walk(root):
        parent = rel.rpartition("/")[0]
        if rel in excluded or parent in skipped:
            skipped.add(rel)
            left_out.append(rel)
            continue
        if stat.S_ISREG(st.st_mode) and st.st_size in sizes and _holds_secret(path, secrets):
            left_out.append(rel)
            continue
        table[rel] = _entry(st)
    return Scan(table, sorted(left_out))


def _holds_secret(path: str, secrets: Collection[bytes]) -> bool:
    """Whether the file is one of *secrets* (its size is one of theirs: read it whole)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError:
        return False
    return data in secrets


def changes(old: Table, new: Table) -> tuple[set[str], list[str]]:
    """What to write on top of *old* to get *new*: the changed or added paths, and the
    deleted ones (only the topmost of a deleted tree)."""
    changed = {rel for rel, entry in new.items() if old.get(rel) != entry}
    gone = {rel for rel in old if rel not in new}
    deleted = [rel for rel in gone if not _under_any(rel, gone)]
    return changed, sorted(deleted)


def _under_any(rel: str, paths: set[str]) -> bool:
    parent = rel.rpartition("/")[0]
    while parent:
        if parent in paths:
            return True
        parent = parent.rpartition("/")[0]
    return False


@dataclass(frozen=True, slots=True)
class Trimmed:
    files: int
    bytes: int
    total: int  # bytes of file content before trimming


def trim(root: Path, max_size: int) -> Trimmed:
    """Remove the least recently used regular files (by the later of access and
    modification time) until the files below *root* hold at most *max_size* bytes. A file's
    bytes are freed with its last link below *root*."""
    files: list[tuple[int, str, int]] = []
    links: dict[int, int] = {}  # inode: links below root
    sizes: dict[int, int] = {}
    for _rel, path, st in walk(root):
        if stat.S_ISREG(st.st_mode):
            links[st.st_ino] = links.get(st.st_ino, 0) + 1
            sizes[st.st_ino] = st.st_size
            files.append((max(st.st_atime_ns, st.st_mtime_ns), path, st.st_ino))
    total = sum(sizes.values())
    if total <= max_size:
        return Trimmed(0, 0, total)
    files.sort()
    left, count, freed = total, 0, 0
    for _used, path, inode in files:
        if left <= max_size:
            break
        try:
            os.unlink(path)
        except OSError:
            continue
        count += 1
        links[inode] -= 1
        if links[inode] == 0:
            left -= sizes[inode]
            freed += sizes[inode]
    return Trimmed(count, freed, total)
