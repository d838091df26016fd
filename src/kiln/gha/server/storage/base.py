"""The byte store of the cache server: in-flight uploads and committed entries.

Every name handed to a storage backend is a *blob name*: 32 lowercase hex characters
chosen by the server at reservation time, never anything a client sent. Backends refuse
any other name, so no key, block id or path a client controls can reach the file system
or an object key. Block ids are hashed before they become names.

Streaming methods are asynchronous and never hold a whole entry in memory; maintenance
methods (listing, deleting) are synchronous and run in worker threads.
"""

from __future__ import annotations

import hashlib
import re
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass

BLOB_NAME = re.compile(r"^[0-9a-f]{32}$")
BUFFER = 1 << 20  # bytes gathered before one write; the memory one upload stream holds


class StorageError(Exception):
    """The backend failed, or was asked for something that cannot be."""


class SizeMismatch(StorageError):
    """Uploaded data does not have the size the client declared."""


def check_blob_name(blob: str) -> str:
    if not BLOB_NAME.match(blob):
        raise StorageError(f"invalid blob name {blob!r}")
    return blob


def block_name(block_id: str) -> str:
    """A safe storage name for a client's (base64) block id."""
    return hashlib.sha256(block_id.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True, slots=True)
class Stored:
    """One stored object found by a listing: its blob name and its age."""

    blob: str
    mtime: float


class BlobReader(ABC):
    """An open committed entry; reading it is not disturbed by a concurrent delete."""

    size: int

    @abstractmethod
    def chunks(self, start: int, length: int) -> AsyncIterator[bytes]:
        """Bytes [start, start+length) in pieces of at most :data:`BUFFER`."""

    @abstractmethod
    async def close(self) -> None: ...


class Storage(ABC):
    """Interface of a storage backend (filesystem; an object store later)."""

    # --- uploads -----------------------------------------------------------------------
    @abstractmethod
    async def write_at(self, blob: str, offset: int, body: AsyncIterator[bytes]) -> int:
        """Write *body* into the upload of *blob* at *offset*; return the bytes written."""

    @abstractmethod
    async def write_whole(self, blob: str, body: AsyncIterator[bytes]) -> int:
        """Replace the upload's data with *body* (Azure Put Blob)."""

    @abstractmethod
    async def write_block(self, blob: str, block_id: str, body: AsyncIterator[bytes]) -> int:
        """Stage one block of the upload (Azure Put Block); a retry replaces it."""

    @abstractmethod
    async def assemble(self, blob: str, block_ids: Sequence[str]) -> int:
        """Concatenate staged blocks in list order into the upload's data; return its size."""

    @abstractmethod
    async def seal(self, blob: str, size: int) -> None:
        """Make the upload durable as the committed entry *blob* of exactly *size* bytes.

        After this returns, the bytes survive a crash; they are visible to clients only
        once the metadata row is committed, which the caller does next.
        """

    # --- committed entries -------------------------------------------------------------
    @abstractmethod
    async def open(self, blob: str) -> BlobReader | None:
        """The committed entry *blob*, or None if it is not stored."""

    # --- maintenance (synchronous, called from worker threads) -------------------------
    @abstractmethod
    def delete(self, blob: str) -> None:
        """Remove the committed entry and any upload data of *blob* (missing is fine)."""

    @abstractmethod
    def stored(self) -> Iterator[Stored]:
        """Every committed entry present in storage."""

    @abstractmethod
    def uploads(self) -> Iterator[Stored]:
        """Every upload area present in storage."""

    @abstractmethod
    def discard_upload(self, blob: str) -> None:
        """Remove the upload area of *blob* (missing is fine)."""
