"""``kiln imagetools``: merge images pushed by digest into one index, and inspect one —
the end of Docker's "distribute the build across multiple runners" workflow, as
``docker buildx imagetools``.

Sources are references (``repo:tag``, ``repo@sha256:…``) or bare digests (in the target's
repository). An index source contributes its entries; an image its own, with the
platform its config names. Images of another repository are copied into the target's
(blobs mounted when the registry can, else copied), and the index is pushed last, under
every tag.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from kiln.content import BlobLocator
from kiln.errors import RegistryError, UsageError
from kiln.oci import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    Descriptor,
    is_digest,
)
from kiln.registry.blobsource import RegistryBlobSource
from kiln.registry.client import RegistryClient
from kiln.registry.manifest import Manifest, image_parts
from kiln.registry.push import push_blobs
from kiln.registry.reference import Reference

CATEGORY = "image"


@dataclass(frozen=True, slots=True)
class Entry:
    """One image of an index: where it lives and its descriptor (with its platform)."""

    repo: Reference
    desc: Descriptor


def source_ref(text: str, target: Reference) -> Reference:
    """A source as given: a reference, or a bare digest of the target's repository."""
    if is_digest(text):
        return target.repo_ref.with_digest(text)
    return Reference.parse(text)


def entries_of(client: RegistryClient, ref: Reference) -> list[Entry]:
    """The images *ref* names: an index's entries, or the one image with its platform."""
    manifest = client.get_manifest(ref, category=CATEGORY)
    if manifest.is_index:
        out = []
        for raw in manifest.json().get("manifests") or []:
            if not isinstance(raw, dict) or not is_digest(str(raw.get("digest", ""))):
                raise RegistryError(f"{ref}: the index has an entry without a valid digest")
            out.append(Entry(ref.repo_ref, Descriptor.from_json(raw)))
        return out
    config_desc, _layers = image_parts(manifest, ref)
    config = json.loads(client.get_blob_bytes(ref.repo_ref, config_desc.digest,
                                              max_size=max(config_desc.size, 1),
                                              category=CATEGORY))  # fmt: skip
    platform = {"architecture": str(config.get("architecture", "")),
                "os": str(config.get("os", ""))}  # fmt: skip
    if config.get("variant"):
        platform["variant"] = str(config["variant"])
    return [Entry(ref.repo_ref, manifest.descriptor(platform))]


def build_index(entries: Sequence[Entry]) -> tuple[bytes, str]:
    """The index over *entries* (each digest once, first kept): an OCI index, or a Docker
    manifest list when every image is a Docker manifest."""
    seen: dict[str, Descriptor] = {}
    for entry in entries:
        seen.setdefault(entry.desc.digest, entry.desc)
    docker = all(d.media_type == DOCKER_MANIFEST for d in seen.values())
    media = DOCKER_MANIFEST_LIST if docker else OCI_INDEX
    body = {"schemaVersion": 2, "mediaType": media,
            "manifests": [d.to_json() for d in seen.values()]}  # fmt: skip
    return json.dumps(body, indent=2).encode(), media


def copy_image(client: RegistryClient, entry: Entry, target: Reference,
               locator: BlobLocator) -> None:  # fmt: skip
    """Make *entry*'s image (and, for a nested index, its images) present in *target*'s
    repository, by digest (blobs through *locator*: mounted, or fetched and uploaded)."""
    if entry.repo == target.repo_ref:
        return
    ref = entry.repo.with_digest(entry.desc.digest)
    manifest = client.get_manifest(ref, category=CATEGORY)
    if manifest.is_index:
        for child in entries_of(client, ref):
            copy_image(client, child, target, locator)
    else:
        config, layers = image_parts(manifest, ref)
        source = RegistryBlobSource(client, entry.repo, CATEGORY)
        for desc in [config, *layers]:
            locator.add(desc.digest, source)
        push_blobs(client, target.repo_ref, [(d, None) for d in [config, *layers]], locator,
                   category=CATEGORY)  # fmt: skip
    client.put_manifest(target.repo_ref.with_digest(manifest.digest), manifest.raw,
                        manifest.media_type, category=CATEGORY)  # fmt: skip


def create(client: RegistryClient, locator: BlobLocator, tags: Sequence[Reference],
           sources: Sequence[str], *, append: bool = False,
           dry_run: bool = False) -> tuple[bytes, str]:  # fmt: skip
    """Merge *sources* (and with *append* what the first tag names now) into one index
    pushed under every tag; returns its bytes and media type."""
    if not tags:
        raise UsageError("imagetools create needs at least one -t/--tag")
    if not sources and not append:
        raise UsageError("imagetools create needs at least one source image")
    target = tags[0]
    entries: list[Entry] = []
    if append:
        entries += entries_of(client, target)
    for text in sources:
        entries += entries_of(client, source_ref(text, target))
    data, media = build_index(entries)
    if dry_run:
        return data, media
    for repo in dict.fromkeys(t.repo_ref for t in tags):
        for entry in entries:
            copy_image(client, entry, repo, locator)
    for tag in tags:
        client.put_manifest(tag, data, media, category=CATEGORY)
    return data, media


def describe(ref: Reference, manifest: Manifest) -> str:
    """What ``imagetools inspect`` prints: name, media type, digest, and the platforms."""
    lines = [f"Name:      {ref}", f"MediaType: {manifest.media_type}",
             f"Digest:    {manifest.digest}"]  # fmt: skip
    if manifest.is_index:
        lines += ["", "Manifests:"]
        for raw in manifest.json().get("manifests") or []:
            platform = raw.get("platform") or {}
            shown = "/".join(p for p in (platform.get("os"), platform.get("architecture"),
                                         platform.get("variant")) if p)  # fmt: skip
            lines += [f"  Name:      {ref.repo_ref}@{raw.get('digest')}",
                      f"  MediaType: {raw.get('mediaType')}",
                      f"  Platform:  {shown or 'unknown'}", ""]  # fmt: skip
    return "\n".join(lines).rstrip() + "\n"
