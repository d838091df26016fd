"""Quota and cleanup: LRU eviction over a size cap, max-age eviction, abandoned uploads.

One :meth:`Evictor.run` pass, in order:

1. uploads whose reservation saw no activity for ``upload_timeout`` are abandoned: the
   pending row and its data are removed, freeing the key for another writer (a writer
   that wants the key sooner takes over an upload idle for ``reservation_timeout``, by
   the same activity time: see :mod:`~kiln.gha.server.service`);
2. entries unused (no lookup hit, no download) for ``max_age`` are removed;
3. while committed entries add up to more than ``max_size``, the least recently used
   are removed;
4. (full passes only) stored data without a metadata row — left by a crash between a
   seal and its commit, or between a row's removal and its data's — is removed once it
   is older than ``orphan_grace``.

Metadata rows go first and data second, so a crash in between leaves an orphan (swept
later), never a row pointing at missing data. Every removal is logged and counted.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from kiln.gha.server.metadata.base import Entry, MetadataStore
from kiln.gha.server.settings import ServerSettings
from kiln.gha.server.storage.base import Storage

log = logging.getLogger("kiln.gha.server.eviction")
BATCH = 200


@dataclass(frozen=True, slots=True)
class EvictionReport:
    abandoned: int = 0
    expired: int = 0
    evicted: int = 0
    orphans: int = 0
    freed_bytes: int = 0


class Evictor:
    def __init__(
        self,
        settings: ServerSettings,
        storage: Storage,
        metadata: MetadataStore,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.storage = storage
        self.metadata = metadata
        self.clock = clock
        self._lock = threading.Lock()

    def run(self, *, full: bool = False) -> EvictionReport:
        """One pass (blocking: call it from a worker thread). Passes never overlap."""
        with self._lock:
            return self._run(full)

    def _remove(self, entry: Entry, why: str) -> bool:
        gone = self.metadata.delete(entry.id)
        if gone is None:  # removed concurrently
            return False
        self.storage.delete(gone.blob)
        log.info(
            "%s entry %d in scope %s: %d bytes, key %s",
            why,
            gone.id,
            gone.scope,
            gone.size,
            gone.key,
        )
        return True

    def _run(self, full: bool) -> EvictionReport:
        now = self.clock()
        abandoned = expired = evicted = orphans = freed = 0

        while batch := self.metadata.stale_pending(now - self.settings.upload_timeout, BATCH):
            for entry in batch:
                abandoned += self._remove(entry, "abandoned upload")
        while batch := self.metadata.unused_since(now - self.settings.max_age, BATCH):
            for entry in batch:
                if self._remove(entry, f"expired (unused for {self.settings.max_age:.0f}s)"):
                    expired += 1
                    freed += entry.size
        excess = self.metadata.totals().bytes - self.settings.max_size
        while excess > 0:
            batch = self.metadata.least_recently_used(BATCH)
            if not batch:
                break
            for entry in batch:
                if excess <= 0:
                    break
                if self._remove(entry, "evicted (cache over its size cap)"):
                    evicted += 1
                    freed += entry.size
                    excess -= entry.size
            excess = self.metadata.totals().bytes - self.settings.max_size
        if full:
            orphans = self._sweep_orphans(now)

        if abandoned:
            self.metadata.bump("abandoned", abandoned)
        if expired:
            self.metadata.bump("expired", expired)
        if evicted + expired:
            self.metadata.bump("evictions", evicted + expired)
        report = EvictionReport(abandoned, expired, evicted, orphans, freed)
        if abandoned or expired or evicted or orphans:
            log.info(
                "eviction pass: %d abandoned, %d expired, %d evicted, %d orphans, %d bytes freed",
                abandoned,
                expired,
                evicted,
                orphans,
                freed,
            )
        return report

    def _sweep_orphans(self, now: float) -> int:
        cutoff = now - self.settings.orphan_grace
        removed = 0
        for found in list(self.storage.stored()):
            if found.mtime < cutoff and not self.metadata.has_blob(found.blob):
                self.storage.delete(found.blob)
                log.info("removed orphaned stored data %s", found.blob)
                removed += 1
        for found in list(self.storage.uploads()):
            if found.mtime < cutoff and not self.metadata.has_blob(found.blob):
                self.storage.discard_upload(found.blob)
                log.info("removed orphaned upload data %s", found.blob)
                removed += 1
        return removed
