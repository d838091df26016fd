"""A registry repository as a place blobs can be fetched from (lazily, when needed)."""

from __future__ import annotations

from kiln.content import BlobStore
from kiln.errors import MissingBlobError, NotFoundError
from kiln.oci import Descriptor
from kiln.registry.client import RegistryClient
from kiln.registry.reference import Reference


class RegistryBlobSource:
    """Blobs of one repository; ``location`` names it for cross-repository mounts."""

    def __init__(self, client: RegistryClient, repo: Reference, category: str) -> None:
        self.client = client
        self.repo = repo.repo_ref
        self.category = category
        self.location = self.repo.name

    def fetch(self, desc: Descriptor, store: BlobStore) -> None:
        try:
            self.client.fetch_blob(self.repo, desc, store, category=self.category)
        except NotFoundError as exc:
            raise MissingBlobError(
                f"blob {desc.digest} is gone from {self.location}", digest=desc.digest
            ) from exc

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RegistryBlobSource) and other.location == self.location

    def __hash__(self) -> int:
        return hash(self.location)
