"""Base images (``FROM``, ``--from=<image>``) resolved through a registry.

Only the manifest and config are read: the image is pinned by its manifest digest and
its layers are registered with the blob locator, to be fetched when (if ever) a step
needs them.
"""

from __future__ import annotations

from dataclasses import dataclass

from kiln.content import BlobLocator
from kiln.errors import RegistryError
from kiln.image import ImageConfig
from kiln.oci import Descriptor, Platform
from kiln.registry.blobsource import RegistryBlobSource
from kiln.registry.client import RegistryClient
from kiln.registry.reference import Reference
from kiln.timing import timed


@dataclass(frozen=True, slots=True)
class ImageBase:
    """A resolved image: its manifest digest pins everything below it."""

    ref: str  # the normalised reference, pinned by digest when resolved
    repository: str  # registry/repository, where its blobs can be fetched
    manifest_digest: str
    config: ImageConfig
    layers: tuple[Descriptor, ...]


class RegistryResolver:
    """Resolves FROM / --from images through the registry (manifest and config only)."""

    def __init__(self, client: RegistryClient, locator: BlobLocator) -> None:
        self.client = client
        self.locator = locator

    @timed("resolve")
    def resolve(self, ref: str, platform: Platform) -> ImageBase:
        parsed = Reference.parse(ref)
        resolved = self.client.resolve_image(parsed, platform)
        try:
            config = ImageConfig.from_bytes(resolved.config)
        except (ValueError, TypeError, KeyError) as exc:
            raise RegistryError(f"image {ref} has an invalid config: {exc}") from exc
        has = config.platform
        if resolved.index_digest is None and (has.os, has.architecture) != (
            platform.os,
            platform.architecture,
        ):  # a single-platform image: the index check did not happen
            raise RegistryError(
                f"image {ref} has no {platform} image",
                why=f"it is a single-platform image for {has}",
                hint="use a multi-platform base, or build for its platform with --platform",
            )
        source = RegistryBlobSource(self.client, parsed.repo_ref, "image")
        # the config's diff IDs are what the image says its layers are: checked when used
        claims = config.diff_ids if len(config.diff_ids) == len(resolved.layers) else []
        for n, layer in enumerate(resolved.layers):
            self.locator.add(layer.digest, source, diff_id=claims[n] if claims else None)
        return ImageBase(
            ref=str(resolved.pinned),
            repository=parsed.name,
            manifest_digest=resolved.digest,
            config=config,
            layers=tuple(resolved.layers),
        )
