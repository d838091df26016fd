"""The metadata store: which entries exist, which uploads are in flight, and counters.

Entries are rows keyed by ``(scope, key, version)`` under a unique constraint, which is
what makes entries immutable and lets exactly one of N concurrent creators win: the
reservation inserts a *pending* row, the commit flips it to *ready*. Lookups only ever
see ready rows. The stored bytes live in :mod:`~kiln.gha.server.storage` under the
row's ``blob`` name, a random id that never derives from the user's key.

A pending row's ``last_access`` is the time of its upload's last activity (reservation,
bytes received, chunk or block recorded, commit started). A reservation idle for long
enough can be *taken over* (:meth:`MetadataStore.take_over`): its row is deleted and a
new one (new id, new blob) inserted in one transaction, so the old upload's later
requests find no pending row, and of N concurrent takers exactly one wins.

Implementations are synchronous and thread-safe; the ASGI app calls them from worker
threads.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

PENDING = "pending"
READY = "ready"

COUNTERS = ("hits", "misses", "evictions", "expired", "abandoned", "taken_over")


class AlreadyExists(Exception):
    """A row with the same scope, key and version exists (pending or ready)."""


@dataclass(frozen=True, slots=True)
class Entry:
    id: int
    scope: str
    key: str
    version: str
    blob: str  # storage name: random, never derived from the key
    state: str  # PENDING or READY
    size: int  # committed size (0 while pending)
    declared_size: int | None  # size announced at reservation (v1 cacheSize), if any
    created_at: float  # reservation time
    committed_at: float | None
    last_access: float  # last lookup/download (ready), last upload activity (pending)
    hits: int

    @property
    def ready(self) -> bool:
        return self.state == READY


@dataclass(frozen=True, slots=True)
class Totals:
    entries: int
    bytes: int
    pending: int


class MetadataStore(ABC):
    """Interface of a metadata backend (SQLite, PostgreSQL)."""

    # --- reservations and uploads ------------------------------------------------------
    @abstractmethod
    def reserve(
        self,
        scope: str,
        key: str,
        version: str,
        blob: str,
        declared_size: int | None,
        now: float,
    ) -> Entry:
        """Insert a pending row; raise :class:`AlreadyExists` when the triple is taken."""

    @abstractmethod
    def take_over(
        self,
        scope: str,
        key: str,
        version: str,
        blob: str,
        declared_size: int | None,
        now: float,
        idle_before: float,
    ) -> tuple[Entry, Entry | None]:
        """Reserve the triple in place of a *pending* row idle since before *idle_before*.

        In one transaction: delete that row (its chunks and blocks with it) if its last
        upload activity is older than *idle_before*, then insert the new pending row.
        Returns the new row and the one it replaced (None when the triple was free).
        Raises :class:`AlreadyExists` when the triple is held by a ready row or by a
        pending one active since; of concurrent takers exactly one wins.
        """

    @abstractmethod
    def get(self, entry_id: int) -> Entry | None: ...

    @abstractmethod
    def get_by_blob(self, blob: str) -> Entry | None: ...

    @abstractmethod
    def find(self, scope: str, key: str, version: str) -> Entry | None:
        """The row (pending or ready) holding this exact triple."""

    @abstractmethod
    def note_activity(self, entry_id: int, now: float) -> bool:
        """Record upload activity on a pending row; False when it is no longer pending
        (taken over, abandoned, removed or committed)."""

    @abstractmethod
    def record_chunk(self, entry_id: int, start: int, length: int, now: float) -> bool:
        """Note that bytes [start, start+length) of a pending upload were written.

        False (and nothing recorded) when the row is no longer pending, as for every
        ``record_*``/``replace_*`` method.
        """

    @abstractmethod
    def replace_chunks(self, entry_id: int, length: int, now: float) -> bool:
        """Forget every chunk and block; the whole upload is one chunk [0, length)."""

    @abstractmethod
    def chunks(self, entry_id: int) -> list[tuple[int, int]]:
        """``(start, length)`` of the chunks written so far, sorted by start."""

    @abstractmethod
    def record_block(self, entry_id: int, block_id: str, length: int, now: float) -> bool:
        """Note a staged block (Azure Put Block); a retry replaces the earlier one."""

    @abstractmethod
    def blocks(self, entry_id: int) -> dict[str, int]:
        """Staged blocks of a pending upload: block id → length."""

    @abstractmethod
    def commit(self, entry_id: int, size: int, now: float) -> Entry | None:
        """Flip a pending row to ready, in one transaction; None if it was not pending."""

    # --- lookups -----------------------------------------------------------------------
    @abstractmethod
    def match(self, scope: str, version: str, key: str, *, prefix: bool) -> Entry | None:
        """The newest ready entry whose key equals (or starts with) *key*."""

    @abstractmethod
    def touch(self, entry_id: int, now: float, *, hit: bool) -> None:
        """Record an access (for LRU), and a hit when *hit*."""

    @abstractmethod
    def list_entries(
        self,
        scopes: Sequence[str] | None,
        key_prefix: str,
        *,
        include_pending: bool = False,
        limit: int = 1000,
    ) -> list[Entry]:
        """Entries of *scopes* (all scopes when None), newest first."""

    # --- removal and quota -------------------------------------------------------------
    @abstractmethod
    def delete(self, entry_id: int) -> Entry | None:
        """Remove a row (and its chunks/blocks); returns what was removed."""

    @abstractmethod
    def totals(self) -> Totals: ...

    @abstractmethod
    def least_recently_used(self, limit: int) -> list[Entry]:
        """Ready entries, least recently accessed first."""

    @abstractmethod
    def unused_since(self, before: float, limit: int) -> list[Entry]:
        """Ready entries whose last access is older than *before*."""

    @abstractmethod
    def stale_pending(self, before: float, limit: int) -> list[Entry]:
        """Pending rows whose last upload activity is older than *before*."""

    @abstractmethod
    def has_blob(self, blob: str) -> bool: ...

    # --- counters ----------------------------------------------------------------------
    @abstractmethod
    def bump(self, counter: str, n: int = 1) -> None: ...

    @abstractmethod
    def counters(self) -> dict[str, int]: ...

    @abstractmethod
    def close(self) -> None: ...


def covered(chunks: Sequence[tuple[int, int]], size: int) -> bool:
    """Whether *chunks* (sorted by start) cover exactly [0, size) with no gap or overrun."""
    end = 0
    for start, length in chunks:
        if start > end:
            return False
        end = max(end, start + length)
    return end == size
