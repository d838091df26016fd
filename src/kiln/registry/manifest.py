"""Manifests as fetched from a registry, and picking a platform out of an index."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kiln.errors import NotFoundError, RegistryError
from kiln.oci import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    INDEX_TYPES,
    LAYER_TYPES,
    MANIFEST_TYPES,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    Platform,
)
from kiln.registry.reference import Reference

# What we can read, most preferred first (an index lets us choose the platform).
MANIFEST_ACCEPT: tuple[str, ...] = (OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST)
MAX_MANIFEST_SIZE = 4 << 20  # the distribution registry's own limit
_GENERIC_TYPES = frozenset({"", "application/json", "text/plain", "application/octet-stream"})
_ATTESTATION = "attestation-manifest"


@dataclass(frozen=True, slots=True)
class Manifest:
    """A manifest or index exactly as served: its bytes, media type and digest."""

    raw: bytes
    media_type: str
    digest: str

    @property
    def size(self) -> int:
        return len(self.raw)

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES

    def json(self) -> dict[str, Any]:
        return parse_json(self.raw, self.digest)

    def descriptor(self, platform: Mapping[str, str] | None = None) -> Descriptor:
        return Descriptor(self.media_type, self.digest, self.size, platform=platform)


@dataclass(frozen=True, slots=True)
class ResolvedImage:
    """One platform's image: its manifest, config and layers.

    ``ref`` is the reference as requested; ``digest`` is the platform manifest's digest
    and ``index_digest`` the digest of the index it was chosen from (if any).
    """

    ref: Reference
    digest: str
    manifest: Manifest
    config: bytes
    config_descriptor: Descriptor
    layers: list[Descriptor] = field(default_factory=list)
    index_digest: str | None = None

    @property
    def media_type(self) -> str:
        return self.manifest.media_type

    @property
    def pinned(self) -> Reference:
        """The reference pinned to what was resolved (the index when there was one)."""
        return self.ref.with_digest(self.index_digest or self.digest)

    def config_json(self) -> dict[str, Any]:
        return parse_json(self.config, self.config_descriptor.digest)


def parse_json(raw: bytes, what: str) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise RegistryError(f"{what} is not valid JSON", why=str(exc)) from exc
    if not isinstance(data, dict):
        raise RegistryError(f"{what} is not a JSON object")
    return data


def detect_media_type(content_type: str | None, raw: bytes) -> str:
    """The manifest's media type: the header unless generic, else the document's own."""
    header = (content_type or "").split(";", 1)[0].strip().lower()
    if header not in _GENERIC_TYPES:
        return header
    try:
        data = json.loads(raw)
    except ValueError:
        return header
    if not isinstance(data, dict):
        return header
    declared = data.get("mediaType")
    if isinstance(declared, str) and declared:
        return declared
    if data.get("schemaVersion") == 1:
        return "application/vnd.docker.distribution.manifest.v1+json"
    if "manifests" in data:
        return OCI_INDEX
    if "config" in data and "layers" in data:
        return OCI_MANIFEST
    return header


def select_platform(index: Manifest, platform: Platform, ref: Reference) -> Descriptor:
    """The index entry for *platform*; an error listing the available ones if none."""
    entries = index.json().get("manifests")
    if not isinstance(entries, list):
        raise RegistryError(f"the index of {ref} lists no manifests")
    candidates: list[tuple[int, int, Descriptor]] = []
    available: list[str] = []
    for pos, raw in enumerate(entries):
        if not isinstance(raw, dict):
            continue
        try:
            desc = Descriptor.from_json(raw)
        except (KeyError, TypeError, ValueError):
            continue
        if desc.annotations.get("vnd.docker.reference.type") == _ATTESTATION:
            continue
        plat = desc.platform or {}
        if plat.get("os") == "unknown":
            continue
        if desc.platform:
            available.append(_platform_name(desc.platform))
        if not platform.matches(desc.platform):
            continue
        variant = (desc.platform or {}).get("variant", "")
        # Prefer the exact variant, then an entry that names none, then the rest.
        rank = 0 if variant == platform.variant else 1 if not variant else 2
        candidates.append((rank, pos, desc))
    if not candidates:
        listed = ", ".join(sorted(set(available))) or "none"
        raise NotFoundError(
            f"image {ref} has no manifest for platform {platform}",
            why=f"available platforms: {listed}",
            hint="choose one of them with --platform",
        )
    candidates.sort(key=lambda c: (c[0], c[1]))
    chosen = candidates[0][2]
    if chosen.media_type and chosen.media_type not in MANIFEST_TYPES:
        raise RegistryError(
            f"image {ref} for {platform} has an unsupported manifest type {chosen.media_type}"
        )
    return chosen


def _platform_name(raw: Mapping[str, Any]) -> str:
    name = f"{raw.get('os', '?')}/{raw.get('architecture', '?')}"
    return f"{name}/{raw['variant']}" if raw.get("variant") else name


def image_parts(manifest: Manifest, ref: Reference) -> tuple[Descriptor, list[Descriptor]]:
    """Config descriptor and layer descriptors of an image manifest."""
    if manifest.media_type not in MANIFEST_TYPES:
        raise RegistryError(
            f"image {ref} has an unsupported manifest type {manifest.media_type or 'unknown'}",
            hint="kiln reads OCI and Docker schema 2 images",
        )
    data = manifest.json()
    try:
        config = Descriptor.from_json(data["config"])
        layers = [Descriptor.from_json(layer) for layer in data.get("layers") or []]
    except (KeyError, TypeError, ValueError) as exc:
        raise RegistryError(f"the manifest of {ref} is malformed", why=str(exc)) from exc
    for layer in layers:
        if layer.media_type not in LAYER_TYPES:
            raise RegistryError(
                f"image {ref} has a layer of an unknown media type {layer.media_type!r}",
                why=f"layer {layer.digest}",
                hint="kiln reads OCI and Docker layers (tar, tar+gzip, tar+zstd)",
            )
    return config, layers


def accept_header(accept: Sequence[str]) -> str:
    return ", ".join(accept)
