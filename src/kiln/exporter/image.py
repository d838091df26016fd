"""Image assembly: the final config and manifest of a build result, and the image index
of a multi-platform build."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from kiln.errors import KilnError
from kiln.image import ImageConfig
from kiln.oci import (
    DOCKER_CONFIG,
    DOCKER_LAYER_GZIP,
    DOCKER_LAYER_TAR,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_LAYER_TAR,
    OCI_MANIFEST,
    Descriptor,
    Layer,
    Platform,
    sha256_digest,
)

_TO_DOCKER = {OCI_LAYER_GZIP: DOCKER_LAYER_GZIP, OCI_LAYER_TAR: DOCKER_LAYER_TAR}
_TO_OCI = {v: k for k, v in _TO_DOCKER.items()}


@dataclass(frozen=True, slots=True)
class ImageArtifacts:
    config: bytes
    config_desc: Descriptor
    manifest: bytes
    manifest_desc: Descriptor
    layers: tuple[Layer, ...]

    @property
    def digest(self) -> str:
        return self.manifest_desc.digest


def _layer_type(layer: Layer, oci: bool) -> str:
    media = layer.blob.media_type
    if oci:
        return _TO_OCI.get(media, media)
    if media in _TO_DOCKER:
        return _TO_DOCKER[media]
    if media in _TO_DOCKER.values():
        return media
    raise KilnError(
        f"layer {layer.digest} ({media}) cannot be exported with Docker media types",
        hint="use oci-mediatypes=true or compression=gzip",
    )


def assemble(config: ImageConfig, layers: list[Layer], *, oci: bool = True) -> ImageArtifacts:
    if [layer.diff_id for layer in layers] != config.diff_ids:
        raise KilnError("internal error: the image config does not list the image's layers")
    config_bytes = config.to_bytes()
    config_desc = Descriptor(OCI_CONFIG if oci else DOCKER_CONFIG, sha256_digest(config_bytes),
                             len(config_bytes))  # fmt: skip
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST if oci else DOCKER_MANIFEST,
        "config": config_desc.to_json(),
        "layers": [
            Descriptor(_layer_type(layer, oci), layer.digest, layer.blob.size).to_json()
            for layer in layers
        ],
    }
    manifest_bytes = json.dumps(manifest, indent=2).encode()
    manifest_desc = Descriptor(
        OCI_MANIFEST if oci else DOCKER_MANIFEST, sha256_digest(manifest_bytes), len(manifest_bytes)
    )
    return ImageArtifacts(config_bytes, config_desc, manifest_bytes, manifest_desc, tuple(layers))


class ImageSet:
    """The final image, assembled once per media-type flavour the outputs ask for."""

    def __init__(self, config: ImageConfig, layers: list[Layer]) -> None:
        self.config = config
        self.layers = layers
        self._made: dict[bool, ImageArtifacts] = {}

    def get(self, oci: bool) -> ImageArtifacts:
        if oci not in self._made:
            self._made[oci] = assemble(self.config, self.layers, oci=oci)
        return self._made[oci]


@dataclass(frozen=True, slots=True)
class IndexArtifacts:
    """A multi-platform build's image index (a Docker manifest list with Docker media
    types) and the per-platform images it lists, in the order of ``--platform``."""

    index: bytes
    desc: Descriptor
    images: tuple[tuple[Platform, ImageArtifacts], ...]

    @property
    def digest(self) -> str:
        return self.desc.digest


def assemble_index(
    images: Sequence[tuple[Platform, ImageArtifacts]], *, oci: bool
) -> IndexArtifacts:
    media = OCI_INDEX if oci else DOCKER_MANIFEST_LIST
    entries = [
        Descriptor(art.manifest_desc.media_type, art.digest, art.manifest_desc.size,
                   platform=platform_json(platform))
        for platform, art in images
    ]  # fmt: skip
    body = {"schemaVersion": 2, "mediaType": media, "manifests": [d.to_json() for d in entries]}
    data = json.dumps(body, indent=2).encode()
    return IndexArtifacts(data, Descriptor(media, sha256_digest(data), len(data)), tuple(images))


def platform_json(platform: Platform) -> dict[str, str]:
    out = {"architecture": platform.architecture, "os": platform.os}
    if platform.variant:
        out["variant"] = platform.variant
    return out


class BuildImages:
    """What a build made: one image per platform; with several, the index over them.
    Outputs that hold one image use :meth:`single`; those that hold an index use
    :meth:`top` (the index, or the one image's manifest)."""

    def __init__(self, images: Sequence[tuple[Platform, ImageSet]]) -> None:
        self.images = list(images)
        self._index: dict[bool, IndexArtifacts] = {}

    @property
    def multi(self) -> bool:
        return len(self.images) > 1

    def single(self) -> ImageSet:
        if self.multi:
            raise KilnError("internal error: a multi-platform build has no single image")
        return self.images[0][1]

    def per_platform(self, oci: bool) -> list[tuple[Platform, ImageArtifacts]]:
        return [(platform, images.get(oci)) for platform, images in self.images]

    def index(self, oci: bool) -> IndexArtifacts:
        if oci not in self._index:
            self._index[oci] = assemble_index(self.per_platform(oci), oci=oci)
        return self._index[oci]

    def top(self, oci: bool) -> tuple[bytes, Descriptor]:
        """The manifest an output names: the index of a multi-platform build, else the
        image's manifest."""
        if self.multi:
            index = self.index(oci)
            return index.index, index.desc
        art = self.single().get(oci)
        return art.manifest, art.manifest_desc
