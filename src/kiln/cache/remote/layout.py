"""An OCI image layout directory as a cache store: blobs by digest, ``index.json``, a lock.

Blobs are written under temporary names and renamed into place. A blob is trusted only
when its bytes are its digest: :meth:`Layout.has` hashes a blob the first time an export
relies on it and remembers the result in ``.kiln-verified.json`` while the file's size,
inode and times stay the same, so a corrupt or truncated blob is removed and written
again instead of being kept forever (the size alone says nothing about a flipped byte).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kiln.cache.remote.format import parse_json
from kiln.errors import CorruptBlobError
from kiln.oci import Descriptor, digest_hex, is_digest, sha256_digest
from kiln.state import atomic_writer, write_atomic

_VERIFIED = ".kiln-verified.json"


@contextlib.contextmanager
def locked(root: Path, kind: int) -> Iterator[None]:
    """``flock`` on ``<dir>/.kiln-lock``: exports exclusive, imports shared, so two kiln
    processes never rewrite the index or collect blobs under each other."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".kiln-lock", "a") as fh:
        fcntl.flock(fh, kind)
        yield


def _stat_key(path: Path) -> list[int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns]


def _file_digest(path: Path) -> str:
    with path.open("rb") as fh:
        return "sha256:" + hashlib.file_digest(fh, "sha256").hexdigest()


class Layout:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs" / "sha256"
        self._verified: dict[str, list[int]] | None = None

    def blob(self, digest: str) -> Path:
        return self.blobs / digest_hex(digest)

    def read_index(self) -> dict[str, Any]:
        return parse_json((self.root / "index.json").read_bytes(), f"{self.root}/index.json")

    def read_blob(self, desc: Descriptor) -> bytes:
        data = self.blob(desc.digest).read_bytes()
        if sha256_digest(data) != desc.digest:
            raise CorruptBlobError(f"{self.blob(desc.digest)} is corrupt", digest=desc.digest)
        return data

    # ------------------------------------------------------------------ integrity
    def has(self, desc: Descriptor) -> bool:
        """The blob of *desc* is here and intact. A corrupt or truncated one is removed
        (the caller holds the exclusive lock) so that it is written again."""
        path = self.blob(desc.digest)
        key = _stat_key(path)
        if key is None:
            return False
        verified = self._memo()
        if verified.get(desc.digest) == key:
            return True
        if key[0] != desc.size or _file_digest(path) != desc.digest:
            with contextlib.suppress(OSError):
                path.unlink()
            verified.pop(desc.digest, None)
            return False
        verified[desc.digest] = key
        return True

    def discard_corrupt(self, desc: Descriptor) -> None:
        """Remove the blob of *desc* if its bytes are not its digest (found by an import;
        checked again under the exclusive lock, so a blob an export just rewrote stays).
        Never waits: an export holding the lock (maybe this very build's) rewrites it."""
        with contextlib.suppress(OSError), locked(self.root, fcntl.LOCK_EX | fcntl.LOCK_NB):
            path = self.blob(desc.digest)
            if _file_digest(path) != desc.digest:
                path.unlink()

    def _memo(self) -> dict[str, list[int]]:
        if self._verified is None:
            self._verified = {}
            try:
                raw = json.loads((self.root / _VERIFIED).read_bytes())
            except (OSError, ValueError):
                raw = {}
            if isinstance(raw, dict):
                for digest, key in raw.items():
                    if (
                        is_digest(digest)
                        and isinstance(key, list)
                        and len(key) == 4
                        and all(type(v) is int for v in key)
                    ):
                        self._verified[digest] = key
        return self._verified

    def save_verified(self) -> None:
        """Persist what was verified, for the blobs still here (the export's last step)."""
        memo = {d: k for d, k in self._memo().items() if _stat_key(self.blob(d)) == k}
        with contextlib.suppress(OSError):
            write_atomic(self.root / _VERIFIED, json.dumps(memo).encode())

    # ------------------------------------------------------------------ writing
    def write_blob(self, digest: str, source: Path | bytes) -> None:
        target = self.blob(digest)
        if isinstance(source, bytes) and self.has(Descriptor("", digest, len(source))):
            return
        with atomic_writer(target) as fh:
            if isinstance(source, bytes):
                fh.write(source)
            else:
                with source.open("rb") as src:
                    shutil.copyfileobj(src, fh, 1 << 20)
