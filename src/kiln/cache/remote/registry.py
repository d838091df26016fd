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

from dataclasses import dataclass
from typing import Any

from kiln.cache.remote.base import (
    COMMON_EXPORT_ATTRS,
    Attrs,
    CacheContext,
    ExportOptions,
    ImportedCache,
)
from kiln.cache.remote.convert import convert_layers
from kiln.cache.remote.format import (
    INLINE_CONFIG_KEY,
    CacheEntry,
    CacheFormatError,
    parse_inline,
    parse_json,
)
from kiln.cache.remote.manifest import build_manifest, is_cache_manifest, read_records
from kiln.cache.store import StepRecord
from kiln.errors import KilnError, NotFoundError
from kiln.exporter.registry import blob_source, mount_candidates
from kiln.image import ImageConfig
from kiln.oci import INDEX_TYPES, Descriptor, Layer, host_platform
from kiln.registry.blobsource import RegistryBlobSource
from kiln.registry.client import RegistryClient
from kiln.registry.manifest import MANIFEST_ACCEPT, select_platform
from kiln.registry.reference import Reference
from kiln.registry.upload import BlobSource

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


def _ref(attrs: Attrs) -> Reference:
    ref = Reference.parse(attrs.required("ref"))
    return ref if ref.tag or ref.digest else ref.with_tag("latest")


class RegistryBackend:
    name = "registry"

    def parse_import(self, attrs: Attrs) -> RegistryImport:
        attrs.check({"ref", "registry.insecure"})
        return RegistryImport(_ref(attrs), attrs.boolean("registry.insecure", False))

    def parse_export(self, attrs: Attrs) -> RegistryExport:
        attrs.check(
            COMMON_EXPORT_ATTRS | {"ref", "image-manifest", "oci-mediatypes", "registry.insecure"}
        )
        image_manifest, oci = attrs.manifest_form()
        return RegistryExport(
            _ref(attrs),
            attrs.export_options(),
            image_manifest,
            oci,
            attrs.boolean("registry.insecure", False),
        )

    # ------------------------------------------------------------------ import
    def load(self, spec: RegistryImport, ctx: CacheContext) -> ImportedCache | None:
        client: RegistryClient = ctx.client
        try:
            records = read_registry_records(client, spec.ref)
        except NotFoundError:
            ctx.warn(f"cache {spec.ref} not found: building without it")
            return None
        except (KilnError, CacheFormatError) as exc:
            ctx.warn(f"cannot import cache {spec.ref}: {str(exc).splitlines()[0]}")
            return None
        source = RegistryBlobSource(client, spec.ref, CATEGORY)
        return ImportedCache(f"registry {spec.ref}", records, source, ctx.locator)

    def annotate_image(self, spec: Any, config: ImageConfig, entries: list[CacheEntry],
                       layers: list[Layer]) -> None:  # fmt: skip
        return None

    # ------------------------------------------------------------------ export
    def export(self, spec: RegistryExport, entries: list[CacheEntry], ctx: CacheContext) -> None:
        client: RegistryClient = ctx.client
        entries = convert_layers(entries, spec.options, ctx)
        cache = build_manifest(entries, image_manifest=spec.image_manifest, oci=spec.oci_mediatypes)
        repo = spec.ref.repo_ref
        digests = [layer.digest for layer in cache.layers]
        candidates = [c for c in mount_candidates(ctx.locator, digests) if c != repo]
        blobs: list[tuple[Descriptor, BlobSource]] = [
            (x.blob, blob_source(ctx.locator, x.digest, x.blob.size, x.blob.media_type))
            for x in cache.layers
        ]
        blobs.append((cache.config_desc, cache.config))
        client.push_blobs(repo, blobs, candidates, category=CATEGORY)
        client.put_manifest(spec.ref, cache.manifest, cache.media_type, category=CATEGORY)


def read_registry_records(client: RegistryClient, ref: Reference) -> dict[str, StepRecord]:
    """Records from a cache manifest, a cache index, or an image's inline cache."""
    manifest = client.get_manifest(ref, MANIFEST_ACCEPT, category=CATEGORY)
    raw = manifest.json()

    def read_blob(desc: Descriptor) -> bytes:
        return client.get_blob_bytes(ref.repo_ref, desc.digest, category=CATEGORY)

    if is_cache_manifest(raw, manifest.media_type):
        return read_records(raw, manifest.media_type, read_blob, str(ref))
    if manifest.media_type in INDEX_TYPES:
        # an image index: the host platform's image may carry an inline cache
        entry = select_platform(manifest, host_platform(), ref)
        manifest = client.get_manifest(ref.with_digest(entry.digest), category=CATEGORY)
        raw = manifest.json()
    config = Descriptor.from_json(raw.get("config") or {"digest": "", "size": 0})
    layers = [Descriptor.from_json(d) for d in raw.get("layers") or []]
    image = parse_json(read_blob(config), f"image config of {ref}")
    value = image.get(INLINE_CONFIG_KEY)
    if not isinstance(value, str):
        raise CacheFormatError(f"{ref} is an image without an inline cache")
    diff_ids = (image.get("rootfs") or {}).get("diff_ids") or []
    if len(diff_ids) != len(layers):
        raise CacheFormatError(
            f"{ref} ({manifest.digest}) lists {len(layers)} layers but {len(diff_ids)} diff IDs"
        )
    image_layers = [
        Layer(Descriptor(d.media_type, d.digest, d.size), str(diff))
        for d, diff in zip(layers, diff_ids, strict=True)
    ]
    return parse_inline(value, image_layers)
