"""``type=registry``: the cache as a manifest in a registry repository (BuildKit's layout).

Export: every layer blob is made present in the cache repository (HEAD first, a mount
from a repository of the same registry, an upload only when neither works), then the
cache config blob, then the manifest under the tag — last, so an interrupted export
leaves the previous cache usable. With ``image-manifest=true`` (the default) the
manifest is an OCI image manifest whose config is the cache config; with ``false`` an OCI
index listing the layers and the config. Import also reads inline caches: a ref naming an
image whose config carries ``moby.buildkit.cache.v0``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kiln.attrs import Attrs
from kiln.cache.records import CacheEntry, MountRecord, StepRecord
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
from kiln.cache.remote.format import (
    INLINE_CONFIG_KEY,
    MALFORMED,
    CacheContents,
    CacheFormatError,
    parse_inline,
    parse_json,
)
from kiln.cache.remote.manifest import build_manifest, descriptor, is_cache_manifest, read_records
from kiln.errors import KilnError, NotFoundError
from kiln.oci import INDEX_TYPES, Descriptor, Layer, Platform, is_digest
from kiln.registry.blobsource import RegistryBlobSource
from kiln.registry.client import RegistryClient
from kiln.registry.manifest import MANIFEST_ACCEPT, select_platform
from kiln.registry.push import push_blobs
from kiln.registry.reference import Reference

CATEGORY = "cache"


@dataclass(frozen=True, slots=True)
class RegistryImport:
    ref: Reference
    insecure: bool = False


@dataclass(frozen=True, slots=True)
class RegistryExport:
    ref: Reference
    options: ExportOptions
    image_manifest: bool = True
    oci_mediatypes: bool = True
    insecure: bool = False


def _ref(attrs: Attrs, *, exporting: bool = False) -> Reference:
    ref = Reference.parse(attrs.required("ref", "registry"))
    if exporting and ref.digest:
        raise attrs.error("an export ref needs a tag, not a digest (the cache is tagged)")
    return ref


class RegistryBackend(CacheBackend[RegistryImport, RegistryExport]):
    name = "registry"
    import_attributes = frozenset({"ref", "registry.insecure"})
    export_attributes = (COMMON_EXPORT_ATTRS | MANIFEST_FORM_ATTRS | MOUNT_EXPORT_ATTRS
                         | {"ref", "registry.insecure"})  # fmt: skip

    def parse_import(self, attrs: Attrs) -> RegistryImport:
        return RegistryImport(_ref(attrs), attrs.boolean("registry.insecure", False))

    def parse_export(self, attrs: Attrs) -> RegistryExport:
        image_manifest, oci = manifest_form(attrs)
        return RegistryExport(
            _ref(attrs, exporting=True),
            export_options(attrs, self.name),
            image_manifest,
            oci,
            attrs.boolean("registry.insecure", False),
        )

    def insecure_hosts(self, spec: RegistryImport | RegistryExport) -> frozenset[str]:
        return frozenset({spec.ref.registry}) if spec.insecure else frozenset()

    def open(self, ctx: CacheContext) -> RegistrySession:
        return RegistrySession(ctx)


class RegistrySession(CacheSession[RegistryImport, RegistryExport]):
    def load(self, spec: RegistryImport) -> ImportedCache | None:
        ctx = self.ctx
        try:
            contents = read_registry_records(ctx.client, spec.ref, ctx.platform)
        except NotFoundError:
            ctx.warn(f"cache {spec.ref} not found: building without it")
            return None
        except (KilnError, CacheFormatError) as exc:
            ctx.warn(f"cannot import cache {spec.ref}: {str(exc).splitlines()[0]}")
            return None
        source = RegistryBlobSource(ctx.client, spec.ref, CATEGORY)
        return ImportedCache(f"registry {spec.ref}", contents.records, source, ctx.locator,
                             ctx.warn, contents.mounts, contents.trees)  # fmt: skip

    def export(self, spec: RegistryExport, entries: list[CacheEntry],
               mounts: list[MountRecord]) -> None:  # fmt: skip
        ctx = self.ctx
        entries = convert_layers(entries, spec.options, ctx)
        mounts = convert_mounts(mounts, ctx, oci=spec.oci_mediatypes)
        cache = build_manifest(entries, image_manifest=spec.image_manifest, oci=spec.oci_mediatypes,
                               mounts=mounts)  # fmt: skip
        blobs: list[tuple[Descriptor, bytes | None]] = [(x.blob, None) for x in cache.layers]
        blobs.append((cache.config_desc, cache.config))
        push_blobs(ctx.client, spec.ref, blobs, ctx.locator, category=CATEGORY)
        ctx.client.put_manifest(spec.ref, cache.manifest, cache.media_type, category=CATEGORY)


def read_registry_records(
    client: RegistryClient, ref: Reference, platform: Platform
) -> CacheContents:
    """Records (and mounts) from a cache manifest, a cache index, or an image's inline
    cache."""
    manifest = client.get_manifest(ref, MANIFEST_ACCEPT, category=CATEGORY)
    raw = manifest.json()

    def read_blob(desc: Descriptor) -> bytes:
        return client.get_blob_bytes(ref.repo_ref, desc.digest, category=CATEGORY)

    if is_cache_manifest(raw, manifest.media_type):
        return read_records(raw, manifest.media_type, read_blob, str(ref))
    if manifest.media_type in INDEX_TYPES:
        # an image index: the build platform's image may carry an inline cache
        entry = select_platform(manifest, platform, ref)
        manifest = client.get_manifest(ref.with_digest(entry.digest), category=CATEGORY)
        raw = manifest.json()
    try:
        return CacheContents(_inline_records(raw, read_blob, f"{ref} ({manifest.digest})"))
    except MALFORMED as exc:
        raise CacheFormatError(f"{ref} is malformed: {exc}") from exc


def _inline_records(
    raw: dict[str, Any], read_blob: Callable[[Descriptor], bytes], what: str
) -> dict[str, StepRecord]:
    layers = [descriptor(d) for d in raw.get("layers") or []]
    image = parse_json(read_blob(descriptor(raw.get("config"))), f"image config of {what}")
    value = image.get(INLINE_CONFIG_KEY)
    if not isinstance(value, str):
        raise CacheFormatError(f"{what} is an image without an inline cache")
    diff_ids = (image.get("rootfs") or {}).get("diff_ids") or []
    if len(diff_ids) != len(layers) or not all(is_digest(str(d)) for d in diff_ids):
        raise CacheFormatError(f"{what}: its layers and diff IDs do not match")
    image_layers = [
        Layer(Descriptor(d.media_type, d.digest, d.size), str(diff))
        for d, diff in zip(layers, diff_ids, strict=True)
    ]
    return parse_inline(value, image_layers)
