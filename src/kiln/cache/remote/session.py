"""A build's remote caches: import before the build, annotate the image, export after.

Each backend gets one session per build, opened when a flag of its type is first used
and closed with the build. What to export (``mode=min`` / ``max``) is the solver's choice
(:mod:`kiln.solver.cache_export`); this module only carries the chosen entries to every
``--cache-to``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar, cast

from kiln.cache.records import CacheEntry
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

ImportT = TypeVar("ImportT")
ExportT = TypeVar("ExportT", bound=ExportSpec)

Entries = Callable[[str], list[CacheEntry]]
"""The entries to export for a mode (``min`` / ``max``)."""


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
        self.sessions = CacheSessions(ctx)
        self.warn = ctx.warn
        self.imports = list(imports)
        self.exports = list(exports)
        self.loaded: list[ImportedCache] = []

    def load(self) -> list[ImportedCache]:
        """Import every ``--cache-from`` in order (earlier sources win on lookups)."""
        for item in self.imports:
            cache = item.load(self.sessions)
            if cache is not None:
                self.loaded.append(cache)
        return self.loaded

    def close(self) -> None:
        self.sessions.close()

    def invalidate(self, digest: str) -> bool:
        return any([cache.invalidate(digest) for cache in self.loaded])

    def annotate_image(self, entries: Entries, config: ImageConfig, layers: list[Layer]) -> None:
        for item in self.exports:
            item.annotate_image(self.sessions, config, entries(item.options.mode), layers)

    def export(self, entries: Entries) -> None:
        for item in self.exports:
            try:
                item.export(self.sessions, entries(item.options.mode))
            except KilnError as exc:
                if not item.options.ignore_error:
                    raise
                self.warn(f"cache export {item.text} failed (ignored): {exc.what}")
