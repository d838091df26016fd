"""Where kiln keeps its state: the layout of ``$KILN_ROOT``.

An empty KILN_ROOT is a fresh machine. Everything under it is written atomically
(temporary name in the same directory, then ``os.replace``) so that a crash never leaves
a half-written entry that could be mistaken for a complete one.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO


def default_root() -> Path:
    env = os.environ.get("KILN_ROOT")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/kiln")
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "kiln"


@dataclass(frozen=True, slots=True)
class KilnRoot:
    path: Path

    @property
    def blobs(self) -> Path:
        return self.path / "blobs" / "sha256"

    @property
    def snapshots(self) -> Path:
        return self.path / "snapshots"

    @property
    def cache_keys(self) -> Path:
        return self.path / "cache" / "keys"

    @property
    def cache_mounts(self) -> Path:
        return self.path / "cache" / "mounts"

    @property
    def tmp(self) -> Path:
        return self.path / "tmp"

    @property
    def sources(self) -> Path:
        """Downloaded ADD sources, keyed by URL digest."""
        return self.path / "sources"

    def ensure(self) -> KilnRoot:
        for p in (self.blobs, self.snapshots, self.cache_keys, self.cache_mounts, self.tmp):
            p.mkdir(parents=True, exist_ok=True)
        return self

    def tempdir(self, prefix: str) -> Path:
        self.tmp.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=prefix, dir=self.tmp))


@contextmanager
def atomic_writer(target: Path, mode: str = "wb") -> Iterator[IO[bytes]]:
    """Write *target* through a temporary file that replaces it only on success."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_atomic(target: Path, data: bytes) -> None:
    with atomic_writer(target) as fh:
        fh.write(data)
