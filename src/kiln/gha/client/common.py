"""What the v1 and v2 API modules share: the interface, JSON bodies, transfer settings."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from kiln.errors import CacheError
from kiln.gha.client.model import GhaEntry
from kiln.gha.client.source import Source
from kiln.http.sender import redact


@dataclass(frozen=True, slots=True)
class Transfer:
    """How uploads are cut and sent, and where sent bytes are counted."""

    chunk_size: int
    parallel: int
    sent: Callable[[int], None]


class CacheApi(Protocol):
    def lookup(self, keys: Sequence[str], version: str) -> GhaEntry | None: ...

    def save(self, key: str, source: Source, version: str) -> bool:
        """False when the entry already exists (or another job is saving it)."""
        ...


def json_body(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def json_object(response: httpx.Response, what: str) -> dict[str, Any]:
    """The JSON object a response carries (a UTF-8 BOM tolerated)."""
    try:
        value = json.loads(response.content.decode("utf-8-sig"))
    except ValueError as exc:
        raise CacheError(
            f"{what}: the cache service answered something that is not JSON",
            why=f"from {redact(response.request.url)}",
        ) from exc
    if not isinstance(value, dict):
        raise CacheError(
            f"{what}: the cache service answered an unexpected JSON value",
            why=f"from {redact(response.request.url)}",
        )
    return value


def check_keys(keys: Sequence[str]) -> None:
    for key in keys:
        if not key or "," in key or len(key) > 512:
            raise CacheError(
                f"invalid cache key {key[:80]!r}", why="keys are 1 to 512 characters without commas"
            )
