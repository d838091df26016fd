"""``type=local``: the cache as an OCI image layout in a directory (``src`` / ``dest``).

Unlike BuildKit's exporter, which only ever adds blobs (the directory grows forever and
needs the "Move cache" workaround), kiln keeps the directory bounded: after an export it
holds exactly the blobs its tags reference, and never more than ``max-size`` — the oldest
results are left out first. Exporting into the directory the cache was imported from is
safe: blobs are written under temporary names, the index is replaced atomically last,
and only then are unreferenced blobs removed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln.attrs import Attrs
from kiln.cache.records import CacheEntry, MountRecord
from kiln.cache.remote.base import (
    COMMON_EXPORT_ATTRS,
    MANIFEST_FORM_ATTRS,
    MOUNT_EXPORT_ATTRS,
    CacheBackend,
    CacheContext,
    CacheSession,
    ExportOptions,
    ImportedCache,
    export_options,
    manifest_form,
)
from kiln.cache.remote.convert import convert_layers, convert_mounts
from kiln.cache.remote.format import CacheFormatError, parse_json
from kiln.cache.remote.layout import Layout, locked
from kiln.cache.remote.manifest import CacheManifest, build_manifest, read_records
from kiln.content import BlobStore
from kiln.errors import CacheError, CorruptBlobError, MissingBlobError
from kiln.oci import INDEX_TYPES, OCI_INDEX, Descriptor, is_digest
from kiln.registry.reference import DEFAULT_TAG
from kiln.state import write_atomic

REF_NAME = "org.opencontainers.image.ref.name"
_STALE_TEMP = 3600.0


@dataclass(frozen=True, slots=True)
class LocalImport:
    src: Path
    tag: str = DEFAULT_TAG
    digest: str | None = None


@dataclass(frozen=True, slots=True)
class LocalExport:
    dest: Path
    options: ExportOptions
    tag: str = DEFAULT_TAG
    image_manifest: bool = True
    oci_mediatypes: bool = True
    max_size: int | None = None


class LocalBlobSource:
    """Blobs of a local cache directory, copied in (and verified) when needed."""

    location = ""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout

    def fetch(self, desc: Descriptor, store: BlobStore) -> None:
        path = self.layout.blob(desc.digest)
        try:
            with path.open("rb") as fh:
                store.ingest(desc, iter(lambda: fh.read(1 << 20), b""), f"cache blob {path}")
        except FileNotFoundError as exc:
            raise MissingBlobError(f"cache blob {path} is gone", digest=desc.digest) from exc
        except CorruptBlobError:
            self.layout.discard_corrupt(desc)  # so the next export writes it again
            raise
        except OSError as exc:
            raise CacheError(f"cannot read cache blob {path}: {exc}") from exc

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LocalBlobSource) and other.layout.root == self.layout.root

    def __hash__(self) -> int:
        return hash(self.layout.root)


class LocalBackend(CacheBackend[LocalImport, LocalExport]):
    name = "local"
    import_attributes = frozenset({"src", "tag", "digest"})
    export_attributes = (COMMON_EXPORT_ATTRS | MANIFEST_FORM_ATTRS | MOUNT_EXPORT_ATTRS
                         | {"dest", "tag", "max-size"})  # fmt: skip

    def parse_import(self, attrs: Attrs) -> LocalImport:
        digest = attrs.get("digest") or None
        if digest is not None and not is_digest(digest):
            raise attrs.error(f"digest must be sha256:<64 hex>, not {digest!r}")
        return LocalImport(Path(attrs.required("src", self.name)), attrs.get("tag", DEFAULT_TAG),
                           digest)  # fmt: skip

    def parse_export(self, attrs: Attrs) -> LocalExport:
        image_manifest, oci = manifest_form(attrs)
        return LocalExport(
            Path(attrs.required("dest", self.name)),
            export_options(attrs, self.name),
            attrs.get("tag", DEFAULT_TAG),
            image_manifest,
            oci,
            attrs.size("max-size"),
        )

    def open(self, ctx: CacheContext) -> LocalSession:
        return LocalSession(ctx)


class LocalSession(CacheSession[LocalImport, LocalExport]):
    # ------------------------------------------------------------------ import
    def load(self, spec: LocalImport) -> ImportedCache | None:
        layout = Layout(spec.src)
        where = f"{spec.src} ({spec.digest or 'tag ' + spec.tag})"
        if not spec.src.is_dir():
            self.ctx.warn(f"no cache at {spec.src}: building without it")
            return None
        with locked(spec.src, fcntl.LOCK_SH):
            return self._load(layout, spec, where)

    def _load(self, layout: Layout, spec: LocalImport, where: str) -> ImportedCache | None:
        ctx = self.ctx
        try:
            index = layout.read_index()
        except FileNotFoundError:
            ctx.warn(f"no cache at {spec.src}: building without it")
            return None
        except (OSError, CacheFormatError) as exc:
            ctx.warn(f"cannot read cache {spec.src}: {exc}")
            return None
        desc = _find(index, spec.tag, spec.digest)
        if desc is None:
            ctx.warn(f"cache {where} not found: building without it")
            return None
        try:
            raw = parse_json(layout.read_blob(desc), where)
            contents = read_records(raw, str(raw.get("mediaType") or desc.media_type),
                                    layout.read_blob, where)  # fmt: skip
        except (OSError, CacheFormatError, CorruptBlobError) as exc:
            ctx.warn(f"cannot read cache {where}: {exc}")
            return None
        return ImportedCache(f"local {where}", contents.records, LocalBlobSource(layout),
                             ctx.locator, ctx.warn, contents.mounts, contents.trees)  # fmt: skip

    # ------------------------------------------------------------------ export
    def export(self, spec: LocalExport, entries: list[CacheEntry],
               mounts: list[MountRecord]) -> None:  # fmt: skip
        try:
            with locked(spec.dest, fcntl.LOCK_EX):
                self._export(spec, entries, mounts, self.ctx)
        except OSError as exc:
            raise CacheError(f"cannot write local cache {spec.dest}: {exc}") from exc

    @staticmethod
    def _export(spec: LocalExport, entries: list[CacheEntry], mounts: list[MountRecord],
                ctx: CacheContext) -> None:  # fmt: skip
        layout = Layout(spec.dest)
        layout.blobs.mkdir(parents=True, exist_ok=True)
        index = _read_index_or_empty(layout)
        others = [d for d in _manifests(index) if d.annotations.get(REF_NAME) != spec.tag]
        entries = convert_layers(entries, spec.options, ctx)
        mounts = convert_mounts(mounts, ctx, oci=spec.oci_mediatypes)
        kept, mounts = _fit(entries, mounts, spec, _referenced(layout, others), ctx)
        cache = build_manifest(kept, image_manifest=spec.image_manifest, oci=spec.oci_mediatypes,
                               mounts=mounts)  # fmt: skip
        for layer in cache.layers:
            if not layout.has(layer.blob):
                ctx.locator.fetch(layer.blob)
                layout.write_blob(layer.digest, ctx.store.path(layer.digest))
        layout.write_blob(cache.config_desc.digest, cache.config)
        layout.write_blob(cache.digest, cache.manifest)
        mine = Descriptor(cache.media_type, cache.digest, len(cache.manifest), {REF_NAME: spec.tag})
        new_index = {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [d.to_json() for d in others] + [mine.to_json()],
        }
        write_atomic(spec.dest / "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        write_atomic(spec.dest / "index.json", json.dumps(new_index, indent=2).encode())
        _collect_garbage(layout, [*others, mine])
        layout.save_verified()


def _find(index: dict[str, Any], tag: str, digest: str | None) -> Descriptor | None:
    found = None
    for desc in _manifests(index):
        if digest is not None and desc.digest == digest:
            return desc
        if digest is None and desc.annotations.get(REF_NAME) == tag:
            found = desc
    return found


def _manifests(index: dict[str, Any]) -> list[Descriptor]:
    out = []
    for item in index.get("manifests") or []:
        if isinstance(item, dict) and is_digest(str(item.get("digest", ""))):
            out.append(Descriptor.from_json(item))
    return out


def _read_index_or_empty(layout: Layout) -> dict[str, Any]:
    try:
        return layout.read_index()
    except FileNotFoundError:
        return {"schemaVersion": 2, "manifests": []}
    except (OSError, CacheFormatError) as exc:
        raise CacheError(
            f"{layout.root}/index.json is unreadable: {exc}",
            hint="remove the directory or export to another one",
        ) from exc


def _referenced(layout: Layout, roots: Iterable[Descriptor]) -> set[str]:
    """Every blob reachable from *roots* (manifests and indexes) in the layout."""
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        desc = todo.pop()
        if desc.digest in seen:
            continue
        seen.add(desc.digest)
        if not (desc.media_type.endswith("+json") or desc.media_type in INDEX_TYPES):
            continue
        try:
            raw = json.loads(layout.blob(desc.digest).read_bytes())
        except (OSError, ValueError):
            continue
        if not isinstance(raw, dict):
            continue
        children = list(raw.get("manifests") or []) + list(raw.get("layers") or [])
        if isinstance(raw.get("config"), dict):
            children.append(raw["config"])
        for child in children:
            if isinstance(child, dict) and is_digest(str(child.get("digest", ""))):
                todo.append(Descriptor.from_json(child))
    return seen


def _fit(
    entries: list[CacheEntry],
    mounts: list[MountRecord],
    spec: LocalExport,
    others: set[str],
    ctx: CacheContext,
) -> tuple[list[CacheEntry], list[MountRecord]]:
    """Leave out the oldest results until the directory fits ``max-size``, then (should
    that not do) the cache mounts."""
    if spec.max_size is None:
        return entries, mounts
    layout = Layout(spec.dest)

    def size_of(digest: str) -> int:
        try:
            return layout.blob(digest).stat().st_size
        except OSError:
            return 0

    fixed = sum(size_of(d) for d in others)
    kept = sorted(entries, key=lambda e: e.created)
    mounts = list(mounts)

    def total(items: list[CacheEntry]) -> int:
        blobs = {e.layer.digest: e.layer.blob.size for e in items if e.layer is not None}
        blobs.update((m.layer.digest, m.layer.blob.size) for r in mounts for m in r.layers)
        extra = sum(size for digest, size in blobs.items() if digest not in others)
        return fixed + extra + _overhead(items, mounts)

    dropped = 0
    while (kept or mounts) and total(kept) > spec.max_size:
        if not kept:
            gone = mounts.pop()
            ctx.warn(f"local cache {spec.dest}: left out cache mount {gone.identity.id} to "
                     f"stay within max-size={spec.max_size} bytes")  # fmt: skip
            continue
        kept.pop(0)
        dropped += 1
    if dropped:
        ctx.warn(f"local cache {spec.dest}: left out the {dropped} oldest results to stay "
                 f"within max-size={spec.max_size} bytes")  # fmt: skip
    if total(kept) > spec.max_size:
        raise CacheError(
            f"local cache {spec.dest} cannot fit in max-size={spec.max_size} bytes",
            hint="other tags in the directory use the space; raise max-size",
        )
    return kept, mounts


def _overhead(entries: list[CacheEntry], mounts: list[MountRecord]) -> int:
    manifest: CacheManifest = build_manifest(entries, mounts=mounts)
    return len(manifest.config) + len(manifest.manifest)


def _collect_garbage(layout: Layout, roots: list[Descriptor]) -> None:
    keep = _referenced(layout, roots)
    now = time.time()
    for path in layout.blobs.iterdir():
        name = path.name
        if name.startswith("."):
            with contextlib.suppress(OSError):  # temp files of an interrupted writer
                if now - path.stat().st_mtime > _STALE_TEMP:
                    path.unlink()
            continue
        if "sha256:" + name not in keep:
            with contextlib.suppress(OSError):
                os.unlink(path)
