"""A build's remote caches: parse the flags, import before, export after.

Backends come from the registry the composition root passes in (name → backend), so this
module never imports one. ``mode=min`` exports the steps of the final stage and of the
stages it is built FROM; ``mode=max`` every step of every stage the target needs —
including stages this build did not have to solve (their results are looked up, so a
fully cached build re-exports the whole cache instead of shrinking it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kiln.cache.remote.base import Attrs, Backend, CacheContext, ExportOptions, ImportedCache
from kiln.cache.remote.format import CacheEntry
from kiln.errors import KilnError, UsageError
from kiln.exporter.base import split_attrs
from kiln.frontend.base import StageBase
from kiln.image import ImageConfig
from kiln.oci import Layer
from kiln.solver.types import BuildResult, CacheHit


@dataclass(frozen=True, slots=True)
class CacheSpec:
    backend: str
    spec: Any
    text: str

    @property
    def options(self) -> ExportOptions:
        options = getattr(self.spec, "options", None)
        return options if isinstance(options, ExportOptions) else ExportOptions()


def parse_cache_flag(text: str, flag: str, backends: Mapping[str, Backend]) -> CacheSpec:
    """``type=T,k=v,...`` (or a bare reference, meaning ``type=registry,ref=<it>``)."""
    if "=" not in text:
        text = f"type=registry,ref={text}"
    values = split_attrs(text, flag=flag)
    kind = values.pop("type", "")
    backend = backends.get(kind)
    if backend is None:
        raise UsageError(
            f"{flag} {text!r}: unknown cache type {kind!r}",
            hint="known types: " + ", ".join(sorted(backends)),
        )
    attrs = Attrs(flag, text, kind, values)
    if flag == "--cache-from":
        return CacheSpec(kind, backend.parse_import(attrs), text)
    return CacheSpec(kind, backend.parse_export(attrs), text)


class RemoteCaches:
    def __init__(self, backends: Mapping[str, Backend], ctx: CacheContext,
                 imports: Sequence[CacheSpec], exports: Sequence[CacheSpec]) -> None:  # fmt: skip
        self.backends = backends
        self.ctx = ctx
        self.imports = list(imports)
        self.exports = list(exports)
        self.loaded: list[ImportedCache] = []
        self._selected: dict[str, list[CacheEntry]] = {}
        self._selected_for: BuildResult | None = None

    def load(self) -> list[ImportedCache]:
        """Import every ``--cache-from`` in order (earlier sources win on lookups)."""
        for item in self.imports:
            cache = self.backends[item.backend].load(item.spec, self.ctx)
            if cache is not None:
                self.loaded.append(cache)
        return self.loaded

    def _entries(self, result: BuildResult, lookup: Lookup, mode: str) -> list[CacheEntry]:
        """The entries of *mode* for *result*, selected once (image annotation and export
        share them)."""
        if self._selected_for is not result:
            self._selected_for, self._selected = result, {}
        if mode not in self._selected:
            self._selected[mode] = select_entries(result, lookup, mode)
        return self._selected[mode]

    def close(self) -> None:
        """Release what backends hold for the build (connections)."""
        for backend in self.backends.values():
            close = getattr(backend, "close", None)
            if close is not None:
                close()

    def invalidate(self, digest: str) -> bool:
        return any([cache.invalidate(digest) for cache in self.loaded])

    def annotate_image(self, result: BuildResult, lookup: Lookup, config: ImageConfig,
                       layers: list[Layer]) -> None:  # fmt: skip
        for item in self.exports:
            entries = self._entries(result, lookup, item.options.mode)
            self.backends[item.backend].annotate_image(item.spec, config, entries, layers)

    def export(self, result: BuildResult, lookup: Lookup) -> None:
        for item in self.exports:
            entries = self._entries(result, lookup, item.options.mode)
            try:
                self.backends[item.backend].export(item.spec, entries, self.ctx)
            except KilnError as exc:
                if not item.options.ignore_error:
                    raise
                self.ctx.warn(f"cache export {item.text} failed (ignored): {exc.what}")


Lookup = Callable[[str], CacheHit | None]


def select_entries(result: BuildResult, lookup: Lookup, mode: str) -> list[CacheEntry]:
    plan = result.plan
    if mode == "max":
        stages = plan.needed_order()
    else:
        stages = []
        index: int | None = plan.target
        while index is not None:
            stages.append(index)
            base = plan.stages[index].base
            index = base.stage if isinstance(base, StageBase) else None
    entries: list[CacheEntry] = []
    for index in stages:
        keys = result.keys[index]
        solved = result.stages.get(index)
        known: dict[str, tuple[Layer | None, str]] = {}
        if solved is not None:
            times = {r.key: r.created for r in result.reports if r.step.stage == index}
            for key, layer in solved.step_results:
                known[key] = (layer, times.get(key, ""))
        parent = keys.base
        for key in keys.steps:
            if key not in known:
                hit = lookup(key)
                if hit is not None:
                    known[key] = (hit.record.layer, hit.record.created)
            if key in known:
                layer, created = known[key]
                entries.append(CacheEntry(key, parent, layer, created))
            parent = key
    return entries
