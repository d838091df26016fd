"""The cache manifest shared by the registry and local backends.

``image-manifest=true``: an OCI image manifest whose config is the cache config and whose
layers are the cached blobs, annotated with their diff IDs. ``false``: an index listing
the layer blobs, then the cache config (some registries, ECR and Quay, reject it).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from kiln.cache.records import CacheEntry, MountRecord
from kiln.cache.remote.format import (
    ANNOTATION_CREATED,
    ANNOTATION_DIFF_ID,
    CACHE_CONFIG_MEDIA_TYPE,
    MALFORMED,
    CacheContents,
    CacheFormatError,
    build_config,
    parse_config,
    parse_json,
    parse_mounts,
    parse_trees,
)
from kiln.errors import CacheError
from kiln.oci import (
    DOCKER_MANIFEST_LIST,
    INDEX_TYPES,
    LAYER_TYPES,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    Layer,
    canonical_json,
    compression_of,
    is_digest,
    layer_media_type,
    sha256_digest,
)


@dataclass(frozen=True, slots=True)
class CacheManifest:
    config: bytes
    config_desc: Descriptor
    layers: list[Layer]  # with annotated descriptors
    manifest: bytes
    media_type: str

    @property
    def digest(self) -> str:
        return sha256_digest(self.manifest)


def build_manifest(
    entries: Sequence[CacheEntry],
    *,
    image_manifest: bool = True,
    oci: bool = True,
    mounts: Sequence[MountRecord] = (),
) -> CacheManifest:
    """The manifest (or index) of a cache; *mounts* must be in media types it can hold
    (see :func:`kiln.cache.remote.convert.convert_mounts`)."""
    config, layers = build_config(entries, annotate=False, mounts=mounts)
    if not oci and any(x.blob.media_type.endswith("zstd") for x in layers):
        raise CacheError("zstd layers need OCI media types", hint="drop oci-mediatypes=false")
    config_bytes = canonical_json(config)
    config_desc = Descriptor(
        CACHE_CONFIG_MEDIA_TYPE, sha256_digest(config_bytes), len(config_bytes)
    )
    created = {e.layer.digest: e.created for e in entries if e.layer is not None}
    annotated = [_annotated(x, created.get(x.digest, ""), oci=oci) for x in layers]
    body: dict[str, Any]
    if image_manifest:
        media = OCI_MANIFEST
        body = {
            "schemaVersion": 2,
            "mediaType": media,
            "config": config_desc.to_json(),
            "layers": [x.blob.to_json() for x in annotated],
        }
    else:
        media = OCI_INDEX if oci else DOCKER_MANIFEST_LIST
        body = {
            "schemaVersion": 2,
            "mediaType": media,
            "manifests": [x.blob.to_json() for x in annotated] + [config_desc.to_json()],
        }
    return CacheManifest(config_bytes, config_desc, annotated, json.dumps(body).encode(), media)


def _annotated(layer: Layer, created: str, *, oci: bool) -> Layer:
    annotations = {ANNOTATION_DIFF_ID: layer.diff_id}
    if created:
        annotations[ANNOTATION_CREATED] = created
    media = layer.blob.media_type
    if not oci:
        media = layer_media_type(compression_of(media), oci=False)
    return Layer(Descriptor(media, layer.digest, layer.blob.size, annotations), layer.diff_id)


def is_cache_manifest(raw: dict[str, Any], media_type: str) -> bool:
    if media_type in INDEX_TYPES:
        return any(
            isinstance(d, dict) and d.get("mediaType") == CACHE_CONFIG_MEDIA_TYPE
            for d in raw.get("manifests") or []
        )
    config = raw.get("config") or {}
    return isinstance(config, dict) and config.get("mediaType") == CACHE_CONFIG_MEDIA_TYPE


def read_records(
    raw: dict[str, Any], media_type: str, read_blob: Callable[[Descriptor], bytes], what: str
) -> CacheContents:
    """Records and mounts of a cache manifest or index; *read_blob* fetches the (small)
    config. Anything malformed is a :class:`CacheFormatError`."""
    try:
        return _read_records(raw, media_type, read_blob, what)
    except MALFORMED as exc:
        raise CacheFormatError(f"{what} is malformed: {exc}") from exc


def descriptor(raw: Any) -> Descriptor:
    """A descriptor from untrusted JSON: a dict with a sha256 digest and a size."""
    if not isinstance(raw, dict) or not is_digest(str(raw.get("digest", ""))):
        raise CacheFormatError("a descriptor has no valid digest")
    size = raw.get("size")
    if not isinstance(size, int) or size < 0:
        raise CacheFormatError("a descriptor has no valid size")
    return Descriptor.from_json(raw)


def _read_records(
    raw: dict[str, Any], media_type: str, read_blob: Callable[[Descriptor], bytes], what: str
) -> CacheContents:
    if media_type in INDEX_TYPES:
        descs = [descriptor(d) for d in raw.get("manifests") or []]
        configs = [d for d in descs if d.media_type == CACHE_CONFIG_MEDIA_TYPE]
        layers = [d for d in descs if d.media_type != CACHE_CONFIG_MEDIA_TYPE]
    else:
        configs = [descriptor(raw.get("config"))]
        layers = [descriptor(d) for d in raw.get("layers") or []]
    if not configs or configs[0].media_type != CACHE_CONFIG_MEDIA_TYPE:
        raise CacheFormatError(f"{what} is not a cache manifest")
    blobs: dict[str, Layer] = {}
    for desc in layers:
        if desc.media_type not in LAYER_TYPES:
            raise CacheFormatError(
                f"{what} names a layer of an unknown media type {desc.media_type!r}"
            )
        diff_id = desc.annotations.get(ANNOTATION_DIFF_ID, "")
        if not is_digest(diff_id):  # a layer without a valid diff ID is unusable, not trusted
            continue
        known = blobs.get(desc.digest)
        if known is not None and known.diff_id != diff_id:
            raise CacheFormatError(
                f"{what} names blob {desc.digest} as two different layers "
                f"({known.diff_id} and {diff_id}): it cannot be trusted"
            )
        blobs[desc.digest] = Layer(Descriptor(desc.media_type, desc.digest, desc.size), diff_id)
    config = parse_json(read_blob(configs[0]), f"cache config of {what}")
    return CacheContents(parse_config(config, blobs), parse_mounts(config), parse_trees(config))
