"""Image assembly: the final config and manifest of a build result."""

from __future__ import annotations

import json
from dataclasses import dataclass

from kiln.errors import KilnError
from kiln.image import ImageConfig
from kiln.oci import (
    DOCKER_CONFIG,
    DOCKER_LAYER_GZIP,
    DOCKER_LAYER_TAR,
    DOCKER_MANIFEST,
    OCI_CONFIG,
    OCI_LAYER_GZIP,
    OCI_LAYER_TAR,
    OCI_MANIFEST,
    Descriptor,
    Layer,
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
