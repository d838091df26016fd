"""A build's remote caches: import before the build, annotate the image, export after.

Each backend gets one session per build, opened when a flag of its type is first used
and closed with the build. What to export (``mode=min`` / ``max``) is the solver's choice
(:mod:`kiln.solver.cache_export`); this module only carries the chosen entries to every
``--cache-to``. Cache mounts: the first ``--cache-from`` that holds a mount provides it;
each mount an export selects (``cache-mounts=``) is sealed once, under the smallest
``cache-mount-max-size`` of the exports that carry it, and the same record goes to all.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar, cast

from kiln.cache.records import CacheEntry, MountIdentity, MountRecord, SourceStatus
from kiln.cache.remote.base import (
    CacheBackend,
    CacheContext,
    CacheSession,
    ExportFlag,
    ExportSpec,
    ImportedCache,
    ImportFlag,
)
from kiln.errors import KilnError
from kiln.image import ImageConfig
from kiln.oci import Layer
from kiln.timing import timed

ImportT = TypeVar("ImportT")
ExportT = TypeVar("ExportT", bound=ExportSpec)

Entries = Callable[[str], list[CacheEntry]]
"""The entries to export for a mode (``min`` / ``max``)."""


class MountExports(Protocol):
    """The cache mounts a build can export (its stages use them) and how to seal one: its
    current content as a record, within *max_size* bytes (None: nothing to export)."""

    def identities(self) -> list[MountIdentity]: ...
    def seal(self, identity: MountIdentity, max_size: int) -> MountRecord | None: ...


class CacheSessions:
    """The sessions of one build, one per backend."""

    def __init__(self, ctx: CacheContext) -> None:
        self.ctx = ctx
        self._open: dict[str, object] = {}

    def session(self, backend: CacheBackend[ImportT, ExportT]) -> CacheSession[ImportT, ExportT]:
        found = self._open.get(backend.name)
        if found is None:
            found = self._open[backend.name] = backend.open(self.ctx)
        # sound: the session under a backend's name was opened by that backend
        return cast("CacheSession[ImportT, ExportT]", found)

    def close(self) -> None:
        """Close every session, even when one fails to (the first failure is raised)."""
        opened, self._open = list(self._open.values()), {}
        failure: BaseException | None = None
        for session in opened:
            try:
                cast("CacheSession[object, ExportSpec]", session).close()
            except BaseException as exc:
                failure = failure or exc
        if failure is not None:
            raise failure


class RemoteCaches:
    def __init__(self, ctx: CacheContext, imports: Sequence[ImportFlag],
                 exports: Sequence[ExportFlag]) -> None:  # fmt: skip
        self.sessions = CacheSessions(dataclasses.replace(ctx, warn=self._warn))
        self.warn = ctx.warn
        self.imports = list(imports)
        self.exports = list(exports)
        self.loaded: list[ImportedCache] = []
        self.statuses: list[SourceStatus] = []  # per --cache-from, after load()
        self._notes: list[str] | None = None

    def _warn(self, message: str) -> None:
        if self._notes is not None:
            self._notes.append(message)
        self.warn(message)

    @timed("cache import")
    def load(self) -> list[ImportedCache]:
        """Import every ``--cache-from`` in order (earlier sources win on lookups)."""
        for item in self.imports:
            self._notes = []
            try:
                cache = item.load(self.sessions)
            finally:
                notes, self._notes = self._notes, None
            if cache is not None:
                self.loaded.append(cache)
            described = cache is not None and any(r.about for r in cache.records.values())
            self.statuses.append(SourceStatus(item.text, cache is not None, "; ".join(notes),
                                              described))  # fmt: skip
        return self.loaded

    def close(self) -> None:
        self.sessions.close()

    def invalidate(self, digest: str) -> bool:
        return any([cache.invalidate(digest) for cache in self.loaded])

    def mount(self, name: str) -> tuple[MountRecord, str] | None:
        """The imported cache mount of identity *name* from the first source holding it."""
        for cache in self.loaded:
            record = cache.mount(name)
            if record is not None:
                return record, cache.name
        return None

    def annotate_image(self, entries: Entries, config: ImageConfig, layers: list[Layer]) -> None:
        for item in self.exports:
            item.annotate_image(self.sessions, config, entries(item.options.mode), layers)

    @timed("cache export")
    def export(self, entries: Entries, mounts: MountExports | None = None) -> None:
        chosen = self._chosen_mounts(mounts)
        for item in self.exports:
            try:
                records = [r for r in chosen if item.options.exports_mount(r.identity.id)]
                item.export(self.sessions, entries(item.options.mode), records)
            except KilnError as exc:
                if not item.options.ignore_error:
                    raise
                self.warn(f"cache export {item.text} failed (ignored): {exc.what}")

    def _chosen_mounts(self, mounts: MountExports | None) -> list[MountRecord]:
        if mounts is None:
            return []
        caps: dict[MountIdentity, int] = {}
        for identity in mounts.identities():
            for item in self.exports:
                if item.options.exports_mount(identity.id):
                    cap = item.options.cache_mount_max_size
                    caps[identity] = min(caps.get(identity, cap), cap)
        sealed = [mounts.seal(identity, cap) for identity, cap in caps.items()]
        return [record for record in sealed if record is not None]
