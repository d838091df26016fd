"""Configuration of the cache server: parsed once at the edge into a frozen dataclass.

Sizes accept ``10GB``, ``512MiB``, ``1048576``; durations accept ``7d``, ``12h``, ``30m``,
``45s`` or plain seconds. A bad value is a :class:`~kiln.errors.UsageError` naming it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from kiln import units
from kiln.errors import UsageError

DEFAULT_MAX_SIZE = 10 * 10**9
DEFAULT_MAX_AGE = 7 * 86400.0
DEFAULT_RESERVATION_TIMEOUT = 120.0


def parse_size(text: str, *, name: str = "size") -> int:
    """``10GB`` → 10_000_000_000; ``1GiB`` → 1_073_741_824."""
    try:
        return units.parse_size(text)
    except ValueError as exc:
        raise UsageError(
            f"invalid {name} {text!r}",
            hint="use a number of bytes with an optional unit: 500MB, 10GB, 2GiB",
        ) from exc


def parse_duration(text: str, *, name: str = "duration") -> float:
    """``7d`` → 604800.0 seconds."""
    try:
        return units.parse_duration(text)
    except ValueError as exc:
        raise UsageError(
            f"invalid {name} {text!r}", hint="use a number with a unit: 45s, 30m, 12h, 7d, 2w"
        ) from exc


@dataclass(frozen=True, slots=True)
class Keys:
    """Keys derived from the one server secret, each for one purpose."""

    jwt: bytes
    url: bytes

    @classmethod
    def derive(cls, secret: bytes) -> Keys:
        def sub(label: bytes) -> bytes:
            return hmac.new(secret, label, hashlib.sha256).digest()

        return cls(jwt=sub(b"kiln-gha-jwt-v1"), url=sub(b"kiln-gha-blob-url-v1"))


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """Everything that shapes the server's behaviour; storage and metadata are injected."""

    secret: bytes
    max_size: int = DEFAULT_MAX_SIZE  # total bytes of committed entries (LRU beyond)
    max_entry_size: int | None = None  # one entry's cap; None: max_size
    max_age: float = DEFAULT_MAX_AGE  # entries unused this long are evicted
    upload_timeout: float = 3600.0  # an upload idle this long is abandoned (row and data removed)
    # A reservation whose upload is idle this long is taken over by the next save of its
    # key (instead of a 409), so a crash mid-upload does not block the key until then.
    reservation_timeout: float = DEFAULT_RESERVATION_TIMEOUT
    url_ttl: float = 6 * 3600.0  # lifetime of a signed blob URL
    eviction_interval: float = 300.0  # background sweep period
    orphan_grace: float = 600.0  # stored files without metadata older than this are removed
    public_url: str | None = None  # base of signed URLs; None: the request's own base URL
    # Trusted networks only: requests without a valid token of this server get read-write
    # access to this one scope (runners whose forge hands out its own tokens, act_runner).
    anonymous_scope: str | None = None
    max_json_body: int = 64 * 1024
    max_block_list_body: int = 8 * 1024 * 1024

    def __post_init__(self) -> None:
        if len(self.secret) < 16:
            raise UsageError("the cache server secret is too short", hint="use 16 bytes or more")
        if self.max_size <= 0:
            raise UsageError("--max-size must be positive")
        if self.max_entry_size is not None and self.max_entry_size <= 0:
            raise UsageError("the per-entry size cap must be positive")
        if self.max_age <= 0:
            raise UsageError("--max-age must be positive")
        if self.reservation_timeout <= 0:
            raise UsageError("--reservation-timeout must be positive")

    @property
    def entry_cap(self) -> int:
        cap = self.max_entry_size if self.max_entry_size is not None else self.max_size
        return min(cap, self.max_size)

    @property
    def keys(self) -> Keys:
        return Keys.derive(self.secret)


def read_secret_file(path: Path) -> bytes:
    try:
        data = path.read_bytes().strip()
    except OSError as exc:
        raise UsageError(f"cannot read the secret file {path}", why=str(exc)) from exc
    if len(data) < 16:
        raise UsageError(f"the secret in {path} is too short", hint="use 16 bytes or more")
    return data


def load_or_create_secret(path: Path) -> bytes:
    """The secret at *path*, created (mode 0600, random) on first use."""
    if path.exists():
        return read_secret_file(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_hex(32).encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(value + b"\n")
        fh.flush()
        os.fsync(fh.fileno())
    return value
