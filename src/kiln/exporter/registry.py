"""Pushing an image: every blob verified present (HEAD, mount or upload), manifest last.

A layer that is not on this machine (a base-image layer, a remote-cache hit) is not
downloaded when the destination already has it or can mount it from another repository
of the same registry; only when it must really be uploaded is it fetched first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from kiln.content import BlobLocator
from kiln.errors import UsageError
from kiln.exporter.image import ImageArtifacts
from kiln.oci import Descriptor
from kiln.registry.client import RegistryClient
from kiln.registry.reference import Reference
from kiln.registry.upload import BlobSource


def blob_source(
    locator: BlobLocator, digest: str, size: int, media_type: str
) -> Callable[[], Path]:
    """A lazy source for a blob: fetched into the local store only when called."""

    def materialise() -> Path:
        locator.fetch(Descriptor(media_type, digest, size))
        return locator.store.path(digest)

    return materialise


def mount_candidates(locator: BlobLocator, digests: Sequence[str]) -> list[Reference]:
    """Repositories the blobs are known to live in (cross-repository mount sources)."""
    out: list[Reference] = []
    for digest in digests:
        for provider in locator.providers(digest):
            if not provider.location:
                continue
            try:
                ref = Reference.parse(provider.location)
            except UsageError:  # a non-registry location (a cache directory, gha)
                continue
            if ref.repo_ref not in out:
                out.append(ref.repo_ref)
    return out


def push_image(
    client: RegistryClient,
    art: ImageArtifacts,
    names: Sequence[Reference],
    locator: BlobLocator,
    *,
    category: str = "image",
) -> str:
    """Push *art* under every name; returns the manifest digest."""
    repos: list[Reference] = []
    for name in names:
        if name.repo_ref not in repos:
            repos.append(name.repo_ref)
    layer_digests = [layer.digest for layer in art.layers]
    candidates = mount_candidates(locator, layer_digests)
    for repo in repos:
        blobs: list[tuple[Descriptor, BlobSource]] = []
        for layer in art.layers:
            d = layer.blob
            blobs.append((d, blob_source(locator, d.digest, d.size, d.media_type)))
        blobs.append((art.config_desc, art.config))
        client.push_blobs(
            repo,
            blobs,
            [c for c in candidates if c != repo],
            category=category,
        )
    for name in names:
        target = name if name.tag or name.digest else name.with_tag("latest")
        client.put_manifest(target, art.manifest, art.manifest_desc.media_type, category=category)
    return art.digest
