"""``type=inline``: the cache records inside the image config (``moby.buildkit.cache.v0``).

Only ``mode=min`` is possible: an image carries its own layers only, so the records can
describe the steps of the final stage (and the stages it is built FROM) and nothing else.
Imported with ``--cache-from type=registry,ref=<image>``. Cache mounts cannot travel this
way (an image holds image layers only): ``cache-mounts=true`` is an error saying so.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Never

from kiln.attrs import Attrs
from kiln.cache.records import CacheEntry, MountRecord
from kiln.cache.remote.base import (
    COMMON_EXPORT_ATTRS,
    MOUNT_EXPORT_ATTRS,
    CacheBackend,
    CacheContext,
    CacheSession,
    ExportOptions,
    export_options,
)
from kiln.cache.remote.format import INLINE_CONFIG_KEY, build_inline
from kiln.image import ImageConfig
from kiln.oci import Layer


@dataclass(frozen=True, slots=True)
class InlineExport:
    options: ExportOptions


class InlineBackend(CacheBackend[Never, InlineExport]):
    name = "inline"
    import_attributes = frozenset()
    export_attributes = COMMON_EXPORT_ATTRS | MOUNT_EXPORT_ATTRS  # refused with a reason

    def parse_import(self, attrs: Attrs) -> Never:
        raise attrs.error(
            "type=inline cannot be imported directly",
            hint="import an inline cache with --cache-from type=registry,ref=<image>",
        )

    def parse_export(self, attrs: Attrs) -> InlineExport:
        options = export_options(attrs, self.name, max_allowed=False)
        if options.cache_mounts not in (None, False):
            raise attrs.error(
                "type=inline cannot carry cache mounts: an image holds its own layers only",
                hint="export them with --cache-to type=registry,ref=<repo:tag>,mode=max "
                "(or type=local, type=gha)",
            )
        return InlineExport(dataclasses.replace(options, cache_mounts=False))

    def open(self, ctx: CacheContext) -> InlineSession:
        return InlineSession(ctx)


class InlineSession(CacheSession[Never, InlineExport]):
    def annotate_image(self, spec: InlineExport, config: ImageConfig, entries: list[CacheEntry],
                       layers: list[Layer]) -> None:  # fmt: skip
        config.extra[INLINE_CONFIG_KEY] = build_inline(entries, layers)

    def export(self, spec: InlineExport, entries: list[CacheEntry],
               mounts: list[MountRecord]) -> None:  # fmt: skip
        return None  # travels with the image
