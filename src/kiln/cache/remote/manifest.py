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

from kiln.cache.remote.format import (
    ANNOTATION_CREATED,
    ANNOTATION_DIFF_ID,
    CACHE_CONFIG_MEDIA_TYPE,
    CacheEntry,
    CacheFormatError,
    build_config,
    parse_config,
    parse_json,
)
from kiln.cache.store import StepRecord
from kiln.oci import (
    DOCKER_MANIFEST_LIST,
    INDEX_TYPES,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    Layer,
    canonical_json,
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

    @property
    def descriptor(self) -> Descriptor:
        return Descriptor(self.media_type, self.digest, len(self.manifest))


def build_manifest(
    entries: Sequence[CacheEntry], *, image_manifest: bool = True, oci: bool = True
) -> CacheManifest:
    config, layers = build_config(entries, annotate=False)
    config_bytes = canonical_json(config)
    config_desc = Descriptor(
        CACHE_CONFIG_MEDIA_TYPE, sha256_digest(config_bytes), len(config_bytes)
    )
    created = {e.layer.digest: e.created for e in entries if e.layer is not None}
    annotated = [_annotated(layer, created.get(layer.digest, "")) for layer in layers]
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


def _annotated(layer: Layer, created: str) -> Layer:
    annotations = {ANNOTATION_DIFF_ID: layer.diff_id}
    if created:
        annotations[ANNOTATION_CREATED] = created
    return Layer(Descriptor(layer.blob.media_type, layer.digest, layer.blob.size, annotations),
                 layer.diff_id)  # fmt: skip


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
) -> dict[str, StepRecord]:
    """Records of a cache manifest or index; *read_blob* fetches the (small) config."""
    if media_type in INDEX_TYPES:
        descs = [Descriptor.from_json(d) for d in raw.get("manifests") or []]
        configs = [d for d in descs if d.media_type == CACHE_CONFIG_MEDIA_TYPE]
        layers = [d for d in descs if d.media_type != CACHE_CONFIG_MEDIA_TYPE]
    else:
        configs = [Descriptor.from_json(raw.get("config") or {"digest": "", "size": 0})]
        layers = [Descriptor.from_json(d) for d in raw.get("layers") or []]
    if not configs or configs[0].media_type != CACHE_CONFIG_MEDIA_TYPE:
        raise CacheFormatError(f"{what} is not a cache manifest")
    blobs: dict[str, Layer] = {}
    for desc in layers:
        diff_id = desc.annotations.get(ANNOTATION_DIFF_ID, "")
        if diff_id:
            blobs[desc.digest] = Layer(Descriptor(desc.media_type, desc.digest, desc.size), diff_id)
    return parse_config(parse_json(read_blob(configs[0]), f"cache config of {what}"), blobs)
