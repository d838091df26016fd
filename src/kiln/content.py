"""Content-addressed blob store under ``$KILN_ROOT/blobs/sha256``, and where blobs come from.

A blob is visible under its digest only once it is complete and its digest verified:
writers stream into a temporary file, hashing as they go, and ``os.replace`` it into
place. A blob whose bytes do not match its name is treated as missing and removed.

For layer blobs the store also remembers the diff ID (the digest of the uncompressed
tar) once it is known for certain — computed when kiln wrote the layer, unpacked it or
checked it — under ``blobs/diffids/``. The :class:`BlobLocator` holds what the build's
sources *claim* a blob's diff ID is (an imported cache's record, a base image's config)
and checks every claim against the blob itself before handing it out: a cache that
names the wrong blob for a step is a miss, never a different image.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol

from kiln.errors import CorruptBlobError, KilnError
from kiln.oci import Descriptor, digest_hex, is_digest
from kiln.state import use_lock, write_atomic
from kiln.timing import timed

CHUNK = 1 << 20


class DigestMismatch(Exception):
    def __init__(self, expected: str, actual: str) -> None:
        super().__init__(f"digest mismatch: expected {expected}, got {actual}")
        self.expected = expected
        self.actual = actual


@dataclass
class BlobWriter:
    """File-like sink that hashes and counts what it writes. With *vouched* (the digest
    its source checks itself, see :meth:`BlobStore.ingest`) it does not hash."""

    fh: IO[bytes]
    vouched: str | None = None
    _hash: hashlib._Hash = field(default_factory=hashlib.sha256)
    size: int = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self.vouched is None:
            self._hash.update(data)
        self.fh.write(data)
        self.size += len(data)
        return len(data)

    @property
    def digest(self) -> str:
        return self.vouched or "sha256:" + self._hash.hexdigest()


class BlobStore:
    """*guard*: the lock a build holds for an instant while it marks a blob used, and the
    garbage collector (``kiln.gc``) while it deletes one; ``gc.lock`` beside the store."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._diff_ids = root.parent / "diffids"
        root.mkdir(parents=True, exist_ok=True)
        self.guard = use_lock(root.parent / "gc.lock")

    def path(self, digest: str) -> Path:
        return self.root / digest_hex(digest)

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def touch(self, digest: str) -> bool:
        """Mark the blob used now (the collector keeps what running builds use) and tell
        whether it is here."""
        with self.guard.shared():
            try:
                os.utime(self.path(digest))
                return True
            except FileNotFoundError:
                return False
            except OSError:  # a read-only store: no last use, but the blob may be there
                return self.has(digest)

    def size(self, digest: str) -> int:
        return self.path(digest).stat().st_size

    def read(self, digest: str) -> bytes:
        return self.path(digest).read_bytes()

    def digests(self) -> Iterator[str]:
        for p in self.root.iterdir():
            if len(p.name) == 64 and not p.name.startswith("."):
                yield "sha256:" + p.name

    def remove(self, digest: str) -> None:
        with suppress(FileNotFoundError):
            self.path(digest).unlink()
        with suppress(FileNotFoundError):
            (self._diff_ids / digest_hex(digest)).unlink()

    def diff_id(self, digest: str) -> str | None:
        """The diff ID known for certain of layer blob *digest*, if any."""
        try:
            text = (self._diff_ids / digest_hex(digest)).read_text().strip()
        except OSError:
            return None
        return text if is_digest(text) else None

    def record_diff_id(self, digest: str, diff_id: str) -> None:
        """Remember the diff ID of *digest*, computed from its bytes (atomic: a crash
        leaves the old record or none, which only costs a recomputation)."""
        write_atomic(self._diff_ids / digest_hex(digest), diff_id.encode())

    @contextmanager
    def writer(self, expected: str | None = None, *, vouched: bool = False
               ) -> Iterator[BlobWriter]:  # fmt: skip
        """Stream a new blob; it is committed under its digest when the block exits.

        With *expected*, a mismatching digest raises :class:`DigestMismatch` and nothing
        is stored; with *vouched* too, the bytes are not hashed here: the caller's source
        checks that digest itself and raises inside the block on a mismatch. The final
        digest is available as ``writer.digest`` afterwards.
        """
        fd, tmp = tempfile.mkstemp(prefix=".ingest-", dir=self.root)
        try:
            with os.fdopen(fd, "wb") as fh:
                w = BlobWriter(fh, expected if vouched and expected else None)
                yield w
                fh.flush()
                os.fsync(fh.fileno())  # durable before it is visible under its digest
            if expected is not None and w.digest != expected:
                raise DigestMismatch(expected, w.digest)
            os.replace(tmp, self.path(w.digest))
        except BaseException:
            with suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def ingest(self, desc: Descriptor, chunks: Iterable[bytes], what: str, *,
               vouched: bool = False) -> int:  # fmt: skip
        """Store *chunks* as the blob of *desc*: a size or digest mismatch raises
        :class:`CorruptBlobError` and stores nothing. Returns the bytes stored.
        *vouched*: *chunks* raises once exhausted unless the bytes have *desc*'s digest
        (a registry download verifies as it goes), so they are not hashed twice."""
        try:
            with self.writer(desc.digest, vouched=vouched) as sink:
                for chunk in chunks:
                    sink.write(chunk)
                    if sink.size > desc.size:
                        raise CorruptBlobError(
                            f"{what} is larger than its {desc.size} bytes", digest=desc.digest
                        )
                if sink.size != desc.size:  # checked before the digest: never stored
                    raise CorruptBlobError(
                        f"{what} has {sink.size} bytes, not the {desc.size} its descriptor says",
                        digest=desc.digest,
                    )
        except DigestMismatch as exc:
            raise CorruptBlobError(
                f"{what} is corrupt (its bytes do not match its digest)",
                digest=desc.digest,
                why=str(exc),
            ) from exc
        return sink.size

    def put(self, data: bytes, expected: str | None = None) -> str:
        with self.writer(expected) as w:
            w.write(data)
        return w.digest

    def verify(self, digest: str) -> bool:
        """Re-hash a stored blob; a corrupt one is removed and reported missing."""
        p = self.path(digest)
        h = hashlib.sha256()
        try:
            with p.open("rb") as fh:
                while chunk := fh.read(CHUNK):
                    h.update(chunk)
        except FileNotFoundError:
            return False
        if "sha256:" + h.hexdigest() != digest:
            self.remove(digest)
            return False
        return True


class BlobProvider(Protocol):
    """Somewhere a blob can be fetched from (a registry repository, a remote cache)."""

    location: str  # "host/repository" for registries (used for cross-repository mounts)

    def fetch(self, desc: Descriptor, store: BlobStore) -> None:
        """Download *desc* into *store*, verifying its digest."""
        ...


DiffIdOf = Callable[[Path, str], str]
"""Computes the diff ID of a stored layer blob (its path and media type)."""


class BlobLocator:
    """Knows where every blob of a build can be fetched from, so fetching can be lazy, and
    what each source claims about the layer a blob holds (checked when it is used)."""

    def __init__(self, store: BlobStore, diff_id_of: DiffIdOf | None = None) -> None:
        self.store = store
        self._diff_id_of = diff_id_of
        self._providers: dict[str, list[BlobProvider]] = {}
        self._claims: dict[str, list[tuple[str, BlobProvider]]] = {}  # digest: (diff ID, by)
        self._lock = threading.Lock()

    def add(self, digest: str, provider: BlobProvider, *, diff_id: str | None = None) -> None:
        """*provider* can fetch *digest*; with *diff_id*, it claims that layer for it."""
        with self._lock:
            providers = self._providers.setdefault(digest, [])
            if provider not in providers:
                providers.append(provider)
            if diff_id is not None:
                claims = self._claims.setdefault(digest, [])
                if (diff_id, provider) not in claims:
                    claims.append((diff_id, provider))

    def forget(self, digest: str, provider: BlobProvider) -> None:
        """Drop what *provider* said about *digest* (its records were found wrong)."""
        with self._lock:
            if provider in self._providers.get(digest, []):
                self._providers[digest].remove(provider)
            claims = [c for c in self._claims.get(digest, []) if c[1] != provider]
            self._claims[digest] = claims

    def providers(self, digest: str) -> list[BlobProvider]:
        with self._lock:
            return list(self._providers.get(digest, []))

    def fetch(self, desc: Descriptor, *, check: bool = True) -> None:
        """Make *desc* present in the local store, trying each known source in turn, and
        (unless *check* is off: the caller verifies the layer itself, as unpacking does)
        check that it is the layer every source claims it is."""
        if not self.store.touch(desc.digest):
            self._download(desc)
        if check:
            self._check_claims(desc)

    @timed("pull")
    def _download(self, desc: Descriptor) -> None:
        providers = self.providers(desc.digest)
        if not providers:
            raise KilnError(
                f"blob {desc.digest} is neither local nor available from any known source",
                hint="run the build again with --no-cache",
            )
        first: KilnError | None = None
        for provider in providers:
            try:
                provider.fetch(desc, self.store)
                return
            except KilnError as exc:
                first = first or exc  # the first source's reason is the telling one
        assert first is not None
        raise first

    def _check_claims(self, desc: Descriptor) -> None:
        """Raise :class:`CorruptBlobError` when a source claimed another diff ID for the
        stored blob *desc* than its bytes have."""
        with self._lock:
            claimed = {diff_id for diff_id, _ in self._claims.get(desc.digest, [])}
        if not claimed or self._diff_id_of is None:
            return
        actual = self.store.diff_id(desc.digest)
        if actual is None:
            actual = self._diff_id_of(self.store.path(desc.digest), desc.media_type)
            self.store.record_diff_id(desc.digest, actual)
        wrong = sorted(claimed - {actual})
        if wrong:
            raise CorruptBlobError(
                f"blob {desc.digest} is not the layer its source says",
                digest=desc.digest,
                why=f"its diff ID is {actual}, not {', '.join(wrong)}",
            )
