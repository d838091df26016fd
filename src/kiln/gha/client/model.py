"""The values the GitHub Actions cache client hands out: scopes, entries, the version."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from kiln.gha.scopes import READ, WRITE, Scope

__all__ = ["GO_VERSION", "READ", "WRITE", "GhaEntry", "Scope"]


# go-actions-cache (BuildKit's gha backend) sends one `version` for every key: the hex
# sha256 of this fixed string (the npm client hashes the cached paths instead). Using the
# same value lets kiln and BuildKit read each other's entries.
GO_VERSION = hashlib.sha256(b"|go-actionscache-1.0").hexdigest()


@dataclass(frozen=True, slots=True)
class GhaEntry:
    """A committed cache entry found by a lookup; ``download_url`` is signed (a secret)."""

    key: str
    version: str
    download_url: str
    size: int | None = None

    def __repr__(self) -> str:  # never print the signed URL
        return f"GhaEntry(key={self.key!r}, version={self.version!r}, size={self.size!r})"
