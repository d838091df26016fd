"""Content hashes of build-context files, remembered in-process and across runs.

A memo entry is keyed by device, inode, size, mtime and ctime, and is only recorded when
the hash was taken clearly after the file last changed, so a later change always shows in
the key. With a ``memo_dir`` the memo persists (one JSON file per context root); anything
unreadable there is simply not remembered.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import threading
import time
from pathlib import Path

from kiln.errors import ContextError
from kiln.state import atomic_writer

_MEMO_VERSION = 1
_MEMO_MAX_ENTRIES = 500_000
# A file can change again within the same coarse timestamp tick (a few ms) without its
# mtime/ctime moving, so a hash taken right after a change may not be trusted later (git's
# "racily clean" problem). A hash is remembered in-process only when it was started more
# than _TICK_NS after the file's last change, and persisted only after _RACY_NS (which
# also absorbs clock steps and file servers with their own clocks).
_TICK_NS = 100_000_000
_RACY_NS = 2_000_000_000
_SMALL_FILE = 1 << 16

_FileKey = tuple[int, int, int, int, int]  # dev, ino, size, mtime_ns, ctime_ns


class FileHasher:
    def __init__(self, root: Path, memo_dir: Path | None) -> None:
        self._memo = _HashMemo(root, memo_dir)

    def sha256(self, path: Path, lst: os.stat_result) -> str:
        """The hex SHA-256 of the regular file *path* (``lstat`` *lst*), memoised."""
        spath = str(path)
        known = self._memo.get(spath, _key(lst))
        if known is not None:
            return known
        started = time.time_ns()
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        try:
            fd = os.open(spath, flags)
        except OSError as exc:
            raise ContextError(f'cannot read "{spath}"', why=exc.strerror) from exc
        with open(fd, "rb", buffering=0) as fh:
            before = os.fstat(fd)
            if not stat.S_ISREG(before.st_mode):
                raise ContextError(f'"{spath}" changed while it was read')
            try:
                if before.st_size <= _SMALL_FILE:  # one read: no per-file 256 KiB buffer
                    digest = hashlib.sha256(os.read(fd, _SMALL_FILE + 1)).hexdigest()
                else:
                    digest = hashlib.file_digest(fh, "sha256").hexdigest()
            except OSError as exc:  # an I/O error, a file that cannot be read: name it
                raise ContextError(f'cannot read "{spath}"', why=exc.strerror) from exc
            after = os.fstat(fd)
        key = _key(before)
        changed = max(after.st_mtime_ns, after.st_ctime_ns)
        if key == _key(after) and changed + _TICK_NS < started:
            self._memo.put(spath, key, digest, persist=changed + _RACY_NS < started)
        return digest

    def flush(self) -> None:
        self._memo.flush()


def _key(st: os.stat_result) -> _FileKey:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class _HashMemo:
    """File content hashes by path, valid only while the file's stat key is unchanged."""

    def __init__(self, root: Path, memo_dir: Path | None) -> None:
        self._lock = threading.Lock()
        self._live: dict[str, tuple[_FileKey, str]] = {}
        self._file: Path | None = None
        if memo_dir is not None:
            name = hashlib.sha256(os.fsencode(root)).hexdigest()[:24]
            self._file = memo_dir / f"context-{name}.json"
        self._stored: dict[str, tuple[_FileKey, str]] | None = None
        self._new: dict[str, tuple[_FileKey, str]] = {}
        self._pruned = False

    def get(self, path: str, key: _FileKey) -> str | None:
        with self._lock:
            hit = self._live.get(path)
            if hit is None and self._file is not None:
                hit = self._load().get(path)
            if hit is None or hit[0] != key:
                return None
            self._live[path] = hit
            return hit[1]

    def put(self, path: str, key: _FileKey, digest: str, *, persist: bool) -> None:
        with self._lock:
            self._live[path] = (key, digest)
            if persist and self._file is not None:
                self._new[path] = (key, digest)

    def _load(self) -> dict[str, tuple[_FileKey, str]]:
        if self._stored is None:
            self._stored = _read_memo(self._file) if self._file is not None else {}
        return self._stored

    def flush(self) -> None:
        """Persist new hashes (atomically; a failure only costs re-hashing next time)."""
        with self._lock:
            if self._file is None or not self._new:
                return
            entries = self._load()
            if not self._pruned:
                for path in [p for p in entries if not os.path.lexists(p)]:
                    del entries[path]
                self._pruned = True
            entries.update(self._new)
            self._new.clear()
            if len(entries) > _MEMO_MAX_ENTRIES:
                keep = set(self._live)
                for path in [p for p in entries if p not in keep]:
                    del entries[path]
            doc = {
                "version": _MEMO_VERSION,
                "entries": {p: [*key, digest] for p, (key, digest) in entries.items()},
            }
            data = json.dumps(doc, separators=(",", ":")).encode()
            try:
                with atomic_writer(self._file) as fh:
                    fh.write(data)
            except OSError:
                pass


_HEX64 = re.compile(r"[0-9a-f]{64}")


def _read_memo(path: Path) -> dict[str, tuple[_FileKey, str]]:
    """The stored memo; anything unreadable or malformed is simply not there."""
    try:
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}
    if not isinstance(doc, dict) or doc.get("version") != _MEMO_VERSION:
        return {}
    raw = doc.get("entries")
    if not isinstance(raw, dict):
        return {}
    out: dict[str, tuple[_FileKey, str]] = {}
    for p, value in raw.items():
        if (
            isinstance(value, list)
            and len(value) == 6
            and all(type(v) is int for v in value[:5])
            and isinstance(value[5], str)
            and _HEX64.fullmatch(value[5])
        ):
            key: _FileKey = (value[0], value[1], value[2], value[3], value[4])
            out[p] = (key, value[5])
    return out
