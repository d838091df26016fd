"""Pushing blobs and manifests: every blob verified present (HEAD, mount or upload), the
manifest last.

A layer that is not on this machine (a base-image layer, a remote-cache hit) is not
downloaded when the destination already has it or can mount it from another repository
of the same registry; only when it must really be uploaded is it fetched first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from kiln.content import BlobLocator
from kiln.errors import UsageError
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


def mount_candidates(locator: BlobLocator, digest: str, repo: Reference) -> list[Reference]:
    """Other repositories of *repo*'s registry known to hold *digest* (mount sources)."""
    out: list[Reference] = []
    for provider in locator.providers(digest):
        if not provider.location:
            continue  # a cache directory or the gha service: not mountable
        try:
            ref = Reference.parse(provider.location).repo_ref
        except UsageError:
            continue
        if ref.registry == repo.registry and ref != repo and ref not in out:
            out.append(ref)
    return out


def push_blobs(
    client: RegistryClient,
    repo: Reference,
    blobs: Sequence[tuple[Descriptor, bytes | None]],
    locator: BlobLocator,
    *,
    category: str,
) -> None:
    """Make every blob present in *repo*: HEAD, then a mount from a repository known to
    hold that very blob, then an upload (fetching the blob first only then). A ``None``
    content means the blob's bytes come from the locator."""
    repo = repo.repo_ref
    sources: list[tuple[Descriptor, BlobSource]] = [
        (d, data if data is not None else blob_source(locator, d.digest, d.size, d.media_type))
        for d, data in blobs
    ]
    mounts = {d.digest: mount_candidates(locator, d.digest, repo) for d, _ in blobs}
    client.push_blobs(repo, sources, mounts, category=category)


def push_manifest(
    client: RegistryClient,
    names: Sequence[Reference],
    blobs: Sequence[tuple[Descriptor, bytes | None]],
    manifest: bytes,
    media_type: str,
    locator: BlobLocator,
    *,
    category: str = "image",
) -> None:
    """Push *blobs* to every repository of *names*, then *manifest* under each name."""
    for repo in dict.fromkeys(name.repo_ref for name in names):
        push_blobs(client, repo, blobs, locator, category=category)
    for name in names:
        client.put_manifest(name, manifest, media_type, category=category)
