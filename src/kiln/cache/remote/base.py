"""The remote cache plug-in point: a stateless parser and a per-build session per type.

A :class:`CacheBackend` turns the attributes of one ``--cache-from`` / ``--cache-to`` value
into a frozen import or export spec (an unknown or bad attribute is an error naming it)
and opens one :class:`CacheSession` per build, which imports (records by key, blobs
fetched lazily through the locator), annotates the image (inline only) and exports;
``close()`` releases what it holds. Both are generic in the backend's own spec types, so
no untyped value crosses the interface: each parsed spec is bound to its backend
(:class:`CacheImport`, :class:`CacheExport`).

Adding a backend: one module with its specs, a ``CacheBackend`` subclass and its session,
and one line in the composition root's registry (:func:`kiln.build.cache_backends`).
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, Generic, Protocol, TypeVar

from kiln.attrs import Attrs
from kiln.cache.records import CacheEntry, CacheHit, MountRecord, StepRecord
from kiln.content import BlobLocator, BlobProvider, BlobStore
from kiln.http.stats import TransferStats
from kiln.image import ImageConfig
from kiln.oci import Layer, Platform
from kiln.registry.client import RegistryClient

COMMON_EXPORT_ATTRS = frozenset(
    {"mode", "compression", "compression-level", "force-compression", "ignore-error"}
)
MANIFEST_FORM_ATTRS = frozenset({"image-manifest", "oci-mediatypes"})
# cache mounts travel with every backend but inline (see ExportOptions.exports_mount)
MOUNT_EXPORT_ATTRS = frozenset({"cache-mounts", "cache-mount-max-size"})
DEFAULT_MOUNT_MAX_SIZE = 1 << 30
_BOOLEAN_WORDS = {"true": True, "1": True, "yes": True, "on": True,
                  "false": False, "0": False, "no": False, "off": False}  # fmt: skip


@dataclass(frozen=True, slots=True)
class ExportOptions:
    """Attributes every exporting backend accepts."""

    mode: str = "min"  # min | max
    compression: str | None = None  # None: keep each layer's compression
    compression_level: int | None = None
    force_compression: bool = False
    ignore_error: bool = False
    # cache mounts exported: None follows the mode (max: all, min: none), a bool all or
    # none, a set those ids
    cache_mounts: bool | frozenset[str] | None = None
    cache_mount_max_size: int = DEFAULT_MOUNT_MAX_SIZE

    def exports_mount(self, mount_id: str) -> bool:
        choice = self.cache_mounts
        if choice is None:
            return self.mode == "max"
        if isinstance(choice, bool):
            return choice
        return mount_id in choice


class ExportSpec(Protocol):
    """What every export spec offers the build: its common options."""

    @property
    def options(self) -> ExportOptions: ...


def export_options(attrs: Attrs, kind: str, *, max_allowed: bool = True) -> ExportOptions:
    """The common export attributes of *attrs* (``type=kind``), checked."""
    mode = attrs.choice("mode", ("min", "max"), "min")
    if mode == "max" and not max_allowed:
        raise attrs.error(
            f"type={kind} supports only mode=min",
            hint="to export every step use --cache-to type=registry,ref=<repo:tag>,mode=max",
        )
    compression = attrs.optional("compression")
    if compression is not None:
        compression = attrs.choice("compression", ("gzip", "zstd", "uncompressed"), "gzip")
    level = None
    if "compression-level" in attrs:
        level = attrs.integer("compression-level", 0, maximum=22 if compression == "zstd" else 9)
    max_size = attrs.size("cache-mount-max-size")
    if max_size is not None and max_size <= 0:
        raise attrs.error("cache-mount-max-size must be more than 0 bytes")
    return ExportOptions(
        mode=mode,
        compression=compression,
        compression_level=level,
        force_compression=attrs.boolean("force-compression", False),
        ignore_error=attrs.boolean("ignore-error", False),
        cache_mounts=_mount_choice(attrs),
        cache_mount_max_size=max_size or DEFAULT_MOUNT_MAX_SIZE,
    )


def _mount_choice(attrs: Attrs) -> bool | frozenset[str] | None:
    """``cache-mounts=true|false|<id>[;<id>...]``."""
    text = attrs.optional("cache-mounts")
    if text is None:
        return None
    if text.strip().lower() in _BOOLEAN_WORDS:
        return _BOOLEAN_WORDS[text.strip().lower()]
    ids = frozenset(part.strip() for part in text.split(";") if part.strip())
    if not ids:
        raise attrs.error(
            "cache-mounts must be true, false or mount ids separated by ';'",
            hint="e.g. cache-mounts=/root/.cache/go-build;pip (an id defaults to the target)",
        )
    return ids


def manifest_form(attrs: Attrs) -> tuple[bool, bool]:
    """``image-manifest`` (default true) and ``oci-mediatypes`` (default true)."""
    image_manifest = attrs.boolean("image-manifest", True)
    oci = attrs.boolean("oci-mediatypes", True)
    if image_manifest and not oci:
        raise attrs.error("image-manifest=true requires oci-mediatypes=true")
    return image_manifest, oci


@dataclass(frozen=True, slots=True)
class CacheContext:
    """What sessions work with for one build."""

    client: RegistryClient  # the build's registry client (auth, transfers, stats)
    store: BlobStore
    locator: BlobLocator
    warn: Callable[[str], None]
    stats: TransferStats  # for sessions with a client of their own (gha)
    platform: Platform  # the build's platform
    # a name unique to this build's context, Dockerfile, target and platform, for
    # backends whose namespace is shared by the jobs of a matrix (gha's default scope)
    build_scope: str = "buildkit"


class ImportedCache:
    """Records imported from one source; a hit registers where its blob can be fetched and
    which layer (diff ID) the record says it is, to be checked when the blob is used.

    A source that names one blob with two diff IDs contradicts itself: every record of
    that blob is dropped (with a warning), as a step whose result cannot be trusted."""

    def __init__(self, name: str, records: dict[str, StepRecord], provider: BlobProvider,
                 locator: BlobLocator, warn: Callable[[str], None],
                 mounts: Sequence[MountRecord] = (),
                 trees: Mapping[str, str] | None = None) -> None:  # fmt: skip
        self.name = name
        self.records = _consistent(name, records, warn)
        self.mounts = {m.identity.name: m for m in mounts}
        self.trees = dict(trees or {})
        self.provider = provider
        self.locator = locator
        self._lock = threading.Lock()
        self._by_place: dict[str, list[StepRecord]] | None = None

    def candidates(self, slot: str, parent: str) -> list[StepRecord]:
        """The described records at *slot* or started from *parent* (indexed once)."""
        with self._lock:
            if self._by_place is None:
                self._by_place = {}
                for record in self.records.values():
                    if record.about is not None:
                        for place in (record.about.slot, record.about.parent):
                            self._by_place.setdefault(place, []).append(record)
            found = self._by_place.get(slot, []) + self._by_place.get(parent, [])
        return list({id(r): r for r in found}.values())

    def tree(self, digest: str) -> str | None:
        return self.trees.get(digest)

    def mount(self, name: str) -> MountRecord | None:
        """The cache mount of identity *name*, its blobs made fetchable from this source."""
        record = self.mounts.get(name)
        if record is not None:
            for item in record.layers:
                self.locator.add(item.layer.digest, self.provider, diff_id=item.layer.diff_id)
        return record

    def lookup(self, key: str) -> CacheHit | None:
        with self._lock:
            record = self.records.get(key)
        if record is None:
            return None
        if record.layer is not None:
            self.locator.add(record.layer.digest, self.provider, diff_id=record.layer.diff_id)
        return CacheHit(record, "remote", self.name)

    def invalidate(self, digest: str) -> bool:
        """Forget every record whose layer is *digest* (a corrupt or mislabelled blob)."""
        with self._lock:
            bad = [k for k, r in self.records.items() if r.layer and r.layer.digest == digest]
            for key in bad:
                del self.records[key]
        if bad:
            self.locator.forget(digest, self.provider)
        return bool(bad)


def _consistent(name: str, records: dict[str, StepRecord], warn: Callable[[str], None]
                ) -> dict[str, StepRecord]:  # fmt: skip
    diff_ids: dict[str, set[str]] = {}
    for record in records.values():
        if record.layer is not None:
            diff_ids.setdefault(record.layer.digest, set()).add(record.layer.diff_id)
    bad = {digest for digest, ids in diff_ids.items() if len(ids) > 1}
    for digest in sorted(bad):
        warn(f"cache {name} names blob {digest} as {len(diff_ids[digest])} different layers: "
             "the steps it records are run instead")  # fmt: skip
    return {k: r for k, r in records.items() if not (r.layer and r.layer.digest in bad)}


ImportT = TypeVar("ImportT")
ExportT = TypeVar("ExportT", bound=ExportSpec)


class CacheSession(ABC, Generic[ImportT, ExportT]):
    """One backend's work for one build; sessions may keep state between calls (clients,
    what was imported) and release it in :meth:`close`."""

    def __init__(self, ctx: CacheContext) -> None:
        self.ctx = ctx

    def load(self, spec: ImportT) -> ImportedCache | None:
        """Read the cache; a missing or unreachable source warns and returns None."""
        return None

    def annotate_image(self, spec: ExportT, config: ImageConfig, entries: list[CacheEntry],
                       layers: list[Layer]) -> None:  # fmt: skip
        """Put the cache into the image config (inline only); others do nothing."""
        return None

    @abstractmethod
    def export(self, spec: ExportT, entries: list[CacheEntry], mounts: list[MountRecord]) -> None:
        """Write the cache: the step entries and the cache mounts (blobs first, manifest
        last, so an interrupted export leaves the previous cache whole)."""

    def close(self) -> None:
        """Release what the session holds (connections)."""
        return None


class SessionPool(Protocol):
    """The open sessions of a build, one per backend, opened on first use."""

    def session(
        self, backend: CacheBackend[ImportT, ExportT]
    ) -> CacheSession[ImportT, ExportT]: ...


class ImportFlag(Protocol):
    """One ``--cache-from`` value bound to its backend, ready to load."""

    @property
    def text(self) -> str: ...
    @property
    def insecure_hosts(self) -> frozenset[str]: ...
    def load(self, sessions: SessionPool) -> ImportedCache | None: ...


class ExportFlag(Protocol):
    """One ``--cache-to`` value bound to its backend, ready to export."""

    @property
    def text(self) -> str: ...
    @property
    def options(self) -> ExportOptions: ...
    @property
    def insecure_hosts(self) -> frozenset[str]: ...
    def annotate_image(self, sessions: SessionPool, config: ImageConfig,
                       entries: list[CacheEntry], layers: list[Layer]) -> None: ...  # fmt: skip
    def export(self, sessions: SessionPool, entries: list[CacheEntry],
               mounts: list[MountRecord]) -> None: ...  # fmt: skip


class CacheBackend(ABC, Generic[ImportT, ExportT]):
    """One remote cache type (``registry``, ``inline``, ``local``, ``gha``): stateless."""

    name: ClassVar[str]
    import_attributes: ClassVar[frozenset[str]]  # checked before parse_import is called
    export_attributes: ClassVar[frozenset[str]]  # checked before parse_export is called

    @abstractmethod
    def parse_import(self, attrs: Attrs) -> ImportT:
        """A typed import spec; raises UsageError naming a bad value."""

    @abstractmethod
    def parse_export(self, attrs: Attrs) -> ExportT:
        """A typed export spec; raises UsageError naming a bad value."""

    @abstractmethod
    def open(self, ctx: CacheContext) -> CacheSession[ImportT, ExportT]:
        """This build's session."""

    def insecure_hosts(self, spec: ImportT | ExportT) -> frozenset[str]:
        """Registries *spec* may reach without TLS verification (``registry.insecure``)."""
        return frozenset()

    def bind_import(self, attrs: Attrs, text: str) -> ImportFlag:
        attrs.check(self.import_attributes, self.name)
        return CacheImport(self, self.parse_import(attrs), text)

    def bind_export(self, attrs: Attrs, text: str) -> ExportFlag:
        attrs.check(self.export_attributes, self.name)
        return CacheExport(self, self.parse_export(attrs), text)


@dataclass(frozen=True, slots=True)
class CacheImport(Generic[ImportT, ExportT]):
    backend: CacheBackend[ImportT, ExportT]
    spec: ImportT
    text: str

    @property
    def insecure_hosts(self) -> frozenset[str]:
        return self.backend.insecure_hosts(self.spec)

    def load(self, sessions: SessionPool) -> ImportedCache | None:
        return sessions.session(self.backend).load(self.spec)


@dataclass(frozen=True, slots=True)
class CacheExport(Generic[ImportT, ExportT]):
    backend: CacheBackend[ImportT, ExportT]
    spec: ExportT
    text: str

    @property
    def options(self) -> ExportOptions:
        return self.spec.options

    @property
    def insecure_hosts(self) -> frozenset[str]:
        return self.backend.insecure_hosts(self.spec)

    def annotate_image(self, sessions: SessionPool, config: ImageConfig,
                       entries: list[CacheEntry], layers: list[Layer]) -> None:  # fmt: skip
        sessions.session(self.backend).annotate_image(self.spec, config, entries, layers)

    def export(self, sessions: SessionPool, entries: list[CacheEntry],
               mounts: list[MountRecord]) -> None:  # fmt: skip
        sessions.session(self.backend).export(self.spec, entries, mounts)


class CacheType(Protocol):
    """What the registry of backends holds: a name and the two flag parsers."""

    @property
    def name(self) -> str: ...
    def bind_import(self, attrs: Attrs, text: str) -> ImportFlag: ...
    def bind_export(self, attrs: Attrs, text: str) -> ExportFlag: ...
