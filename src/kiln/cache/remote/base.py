"""Remote cache backends: the interface, the attributes they share, imported caches.

``--cache-from`` / ``--cache-to`` values are parsed at the edge into frozen specs (an
unknown type or attribute is an error naming it); a backend turns an import spec into an
:class:`ImportedCache` (records by key, blobs fetched lazily through the locator) and
writes an export from a list of :class:`CacheEntry`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from kiln import units
from kiln.cache.remote.format import CacheEntry
from kiln.cache.store import StepRecord
from kiln.content import BlobLocator, BlobProvider, BlobStore
from kiln.errors import UsageError
from kiln.image import ImageConfig
from kiln.oci import Layer, Platform, host_platform
from kiln.solver.types import CacheHit

COMMON_EXPORT_ATTRS = frozenset(
    {"mode", "compression", "compression-level", "force-compression", "ignore-error"}
)


@dataclass(frozen=True, slots=True)
class ExportOptions:
    """Attributes every exporting backend accepts."""

    mode: str = "min"  # min | max
    compression: str | None = None  # None: keep each layer's compression
    compression_level: int | None = None
    force_compression: bool = False
    ignore_error: bool = False


class Attrs:
    """``key=value`` attributes of one --cache-from/--cache-to value, checked as read."""

    def __init__(self, flag: str, text: str, kind: str, values: Mapping[str, str]) -> None:
        self.flag, self.text, self.kind = flag, text, kind
        self.values = dict(values)

    def error(self, what: str, hint: str | None = None) -> UsageError:
        return UsageError(f"{self.flag} {self.text!r}: {what}", hint=hint)

    def check(self, allowed: frozenset[str] | set[str]) -> None:
        unknown = sorted(set(self.values) - set(allowed))
        if unknown:
            raise self.error(
                f"unknown attribute {unknown[0]!r} for type={self.kind}",
                hint="known: " + ", ".join(sorted(allowed)),
            )

    def get(self, key: str, default: str = "") -> str:
        return self.values.get(key, default)

    def required(self, key: str) -> str:
        value = self.values.get(key, "")
        if not value:
            raise self.error(f"{key} is required for type={self.kind}")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self.values.get(key)
        if value is None:
            return default
        lowered = value.strip().lower()
        if lowered in ("true", "1", "yes", ""):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise self.error(f"{key} must be true or false, not {value!r}")

    def size(self, key: str) -> int | None:
        value = self.values.get(key)
        if value is None:
            return None
        try:
            return units.parse_size(value)
        except ValueError as exc:
            raise self.error(f"{key} must be a size like 500MB or 2GB, not {value!r}") from exc

    def duration(self, key: str, default: float) -> float:
        value = self.values.get(key)
        if value is None:
            return default
        try:
            return units.parse_duration(value)
        except ValueError as exc:
            raise self.error(f"{key} must be a duration like 10m or 90s, not {value!r}") from exc

    def manifest_form(self) -> tuple[bool, bool]:
        """``image-manifest`` (default true) and ``oci-mediatypes`` (default true)."""
        image_manifest = self.boolean("image-manifest", True)
        oci = self.boolean("oci-mediatypes", True)
        if image_manifest and not oci:
            raise self.error("image-manifest=true requires oci-mediatypes=true")
        return image_manifest, oci

    def export_options(self, *, max_allowed: bool = True) -> ExportOptions:
        mode = self.get("mode", "min")
        if mode not in ("min", "max"):
            raise self.error(f"mode must be min or max, not {mode!r}")
        if mode == "max" and not max_allowed:
            raise self.error(
                f"type={self.kind} supports only mode=min",
                hint="to export every step use --cache-to type=registry,ref=<repo:tag>,mode=max",
            )
        compression = self.values.get("compression")
        if compression is not None and compression not in ("gzip", "zstd", "uncompressed"):
            raise self.error("compression must be gzip, zstd or uncompressed")
        level = self.values.get("compression-level")
        if level is not None:
            limit = 22 if compression == "zstd" else 9
            if not level.isdigit() or int(level) > limit:
                raise self.error(f"compression-level must be a whole number from 0 to {limit}")
        return ExportOptions(
            mode=mode,
            compression=compression,
            compression_level=int(level) if level is not None else None,
            force_compression=self.boolean("force-compression", False),
            ignore_error=self.boolean("ignore-error", False),
        )


@dataclass
class CacheContext:
    """What backends work with: the registry client, local blobs, the blob locator."""

    client: Any  # kiln.registry.client.RegistryClient (kept loose: no import cycle)
    store: BlobStore
    locator: BlobLocator
    warn: Callable[[str], None]
    stats: Any = None  # kiln.registry.stats.TransferStats, for backends with their own client
    platform: Platform = field(default_factory=host_platform)  # the build's platform


class ImportedCache:
    """Records imported from one source; a hit registers where its blob can be fetched."""

    def __init__(self, name: str, records: dict[str, StepRecord], provider: BlobProvider,
                 locator: BlobLocator) -> None:  # fmt: skip
        self.name = name
        self.records = records
        self.provider = provider
        self.locator = locator
        self._lock = threading.Lock()

    def lookup(self, key: str) -> CacheHit | None:
        with self._lock:
            record = self.records.get(key)
        if record is None:
            return None
        if record.layer is not None:
            self.locator.add(record.layer.digest, self.provider)
        return CacheHit(record, "remote")

    def invalidate(self, digest: str) -> bool:
        """Forget every record whose layer is *digest* (a corrupt blob)."""
        with self._lock:
            bad = [k for k, r in self.records.items() if r.layer and r.layer.digest == digest]
            for key in bad:
                del self.records[key]
        return bool(bad)


class Backend(Protocol):
    """One remote cache type (``registry``, ``inline``, ``local``, ``gha``)."""

    name: str

    def parse_import(self, attrs: Attrs) -> object:
        """A typed import spec; raises UsageError naming a bad attribute."""
        ...

    def parse_export(self, attrs: Attrs) -> object:
        """A typed export spec; raises UsageError naming a bad attribute."""
        ...

    def load(self, spec: Any, ctx: CacheContext) -> ImportedCache | None:
        """Read the cache; a missing or unreachable source warns and returns None."""
        ...

    def annotate_image(self, spec: Any, config: ImageConfig, entries: list[CacheEntry],
                       layers: list[Layer]) -> None:  # fmt: skip
        """Put the cache into the image config (inline only); others do nothing."""
        ...

    def export(self, spec: Any, entries: list[CacheEntry], ctx: CacheContext) -> None:
        """Write the cache (blobs first, manifest last)."""
        ...
