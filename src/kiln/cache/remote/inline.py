"""``type=inline``: the cache records inside the image config (``moby.buildkit.cache.v0``).

Only ``mode=min`` is possible: an image carries its own layers only, so the records can
describe the steps of the final stage (and the stages it is built FROM) and nothing else.
Imported with ``--cache-from type=registry,ref=<image>``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kiln.cache.remote.base import (
    COMMON_EXPORT_ATTRS,
    Attrs,
    CacheContext,
    ExportOptions,
    ImportedCache,
)
from kiln.cache.remote.format import INLINE_CONFIG_KEY, CacheEntry, build_inline
from kiln.image import ImageConfig
from kiln.oci import Layer


@dataclass(frozen=True, slots=True)
class InlineExport:
    options: ExportOptions


class InlineBackend:
    name = "inline"

    def parse_import(self, attrs: Attrs) -> object:
        raise attrs.error(
            "type=inline cannot be imported directly",
            hint="import an inline cache with --cache-from type=registry,ref=<image>",
        )

    def parse_export(self, attrs: Attrs) -> InlineExport:
        attrs.check(COMMON_EXPORT_ATTRS)
        return InlineExport(attrs.export_options(max_allowed=False))

    def load(self, spec: Any, ctx: CacheContext) -> ImportedCache | None:
        return None

    def annotate_image(
        self,
        spec: InlineExport,
        config: ImageConfig,
        entries: list[CacheEntry],
        layers: list[Layer],
    ) -> None:
        config.extra[INLINE_CONFIG_KEY] = build_inline(entries, layers)

    def export(self, spec: InlineExport, entries: list[CacheEntry], ctx: CacheContext) -> None:
        return None  # travels with the image
