"""Cache scopes as the runtime token's ``ac`` claim lists them: shared by the client (which
reads the claim) and the server (which issues and checks it)."""

from __future__ import annotations

from dataclasses import dataclass

READ = 1
WRITE = 2


@dataclass(frozen=True, slots=True)
class Scope:
    """One entry of the ``ac`` claim, in lookup order: permission bits 1 read, 2 write."""

    name: str
    permission: int

    @property
    def readable(self) -> bool:
        return bool(self.permission & READ)

    @property
    def writable(self) -> bool:
        return bool(self.permission & WRITE)
