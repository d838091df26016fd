""":class:`GhaClient`: the GitHub Actions cache as go-actions-cache (BuildKit) uses it.

One client speaks one API version: v1 REST at ``<url>_apis/artifactcache/`` or v2 twirp
on the root of ``url_v2``. Entries are immutable; a *mutable* name is a series of keys
``name#1``, ``name#2``, … where the newest wins. Every request is retried through 429s,
5xx answers and dropped connections for ``timeout`` seconds (:mod:`kiln.http.retry`,
without a cap on tries; a 429 holds back the whole client); uploads go up in parallel
chunks streamed from the file; downloads are streamed and resume with ``Range``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

import httpx

from kiln.errors import CacheError
from kiln.gha.client.common import CacheApi, Transfer
from kiln.gha.client.download import stream_entry
from kiln.gha.client.errors import UNREACHABLE_HINT
from kiln.gha.client.model import GO_VERSION, GhaEntry, Scope
from kiln.gha.client.requester import Requester
from kiln.gha.client.source import Source
from kiln.gha.client.token import parse_scopes
from kiln.gha.client.v1 import V1Api
from kiln.gha.client.v2 import V2Api
from kiln.http.clients import Clients
from kiln.http.retry import RetryPolicy
from kiln.http.sender import Sender
from kiln.http.stats import TransferStats

log = logging.getLogger("kiln.gha.client")

MUTABLE_ATTEMPTS = 100


def mutable_index(prefix: str, key: str) -> int:
    """``n`` of the key ``<prefix>#<n>``."""
    suffix = key[len(prefix) + 1 :] if key.startswith(prefix + "#") else ""
    if not suffix.isdigit():
        raise CacheError(
            f"the cache holds a corrupt index key {key!r}", why=f"expected {prefix}#<number>"
        )
    return int(suffix)


def _checked_url(url: str, name: str) -> str:
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise CacheError(
            f"invalid GitHub Actions cache URL ({name})", why=str(exc), hint=UNREACHABLE_HINT
        ) from exc
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise CacheError(
            f"invalid GitHub Actions cache URL ({name}): {url!r}",
            why="it must be an http:// or https:// URL",
            hint=UNREACHABLE_HINT,
        )
    return url


class GhaClient:
    def __init__(
        self,
        *,
        token: str,
        url: str | None = None,
        url_v2: str | None = None,
        api_version: int = 1,
        timeout: float = 600.0,
        stats: TransferStats | None = None,
        category: str = "cache",
        transport: httpx.BaseTransport | None = None,
        parallel: int = 4,
        chunk_size: int = 32 << 20,
        retry: RetryPolicy | None = None,
    ) -> None:
        """Each request is retried for *timeout* seconds (``retry`` replaces that policy;
        tests inject its sleep and clock). *transport* replaces the network (tests)."""
        if api_version not in (1, 2):
            raise CacheError(
                f"unknown GitHub Actions cache API version {api_version}",
                hint="use version=1 (REST) or version=2 (twirp)",
            )
        self.scopes: list[Scope] = parse_scopes(token)
        self.api_version = api_version
        self.stats = stats
        self.category = category
        base = url if api_version == 1 else (url_v2 or url)
        if not base:
            env = (
                "ACTIONS_CACHE_URL (url=)" if api_version == 1 else "ACTIONS_RESULTS_URL (url_v2=)"
            )
            raise CacheError(
                f"no URL for the v{api_version} GitHub Actions cache API",
                why=f"{env} is not set",
                hint=UNREACHABLE_HINT,
            )
        base = _checked_url(base, "url" if api_version == 1 else "url_v2")
        per_try = max(1.0, min(timeout, 120.0))
        clients = Clients(
            transport=transport,
            timeout=httpx.Timeout(per_try, connect=min(per_try, 30.0)),
            # callers bound concurrency (their threads, `parallel` per upload): no pool
            # limit, so parallel saves never wait on each other for a connection
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=4 + 2 * parallel),
        )
        # as go-actions-cache: a service's Retry-After is honoured whole (within timeout)
        policy = retry or RetryPolicy(
            deadline=max(0.0, timeout),
            attempts=None,
            base_delay=0.25,
            max_delay=10.0,
            max_retry_after=None,
        )
        self._requester = Requester(Sender(clients, policy), secrets=(token,))
        transfer = Transfer(max(1, chunk_size), max(1, parallel), self._sent)
        self._api: CacheApi = (V1Api if api_version == 1 else V2Api)(
            self._requester, base, token, transfer
        )

    # ----------------------------------------------------------------- accounting
    def _sent(self, n: int) -> None:
        if self.stats is not None:
            self.stats.add_pushed(n, self.category)

    def _received(self, n: int) -> None:
        if self.stats is not None:
            self.stats.add_pulled(n, self.category)

    def _received_layer(self, n: int) -> None:
        if self.stats is not None:
            self.stats.add_pulled(n, self.category, layer=True)

    # ----------------------------------------------------------------- lookups
    def lookup(
        self, key: str, restore_keys: Sequence[str] = (), *, version: str = GO_VERSION
    ) -> GhaEntry | None:
        """The entry of *key* (or, failing that, the newest matching a prefix: *key*, then
        each restore key, exact before prefix, scope by scope); None on a miss."""
        return self._api.lookup([key, *restore_keys], version)

    def load_mutable(self, prefix: str, *, version: str = GO_VERSION) -> GhaEntry | None:
        """The newest entry ``<prefix>#<n>``, or None."""
        entry = self.lookup(prefix + "#", version=version)
        if entry is None or not entry.key.startswith(prefix + "#"):
            return None
        return entry

    # ----------------------------------------------------------------- saves
    def save(self, key: str, source: Path | bytes, *, version: str = GO_VERSION) -> bool:
        """Upload *source* (a file is streamed) as *key*; False if the key exists."""
        return self._api.save(key, Source.of(source), version)

    def save_mutable(self, prefix: str, data: bytes, *, version: str = GO_VERSION) -> str:
        """Save *data* as ``<prefix>#<n+1>`` after the newest ``n``; on a conflict with
        another writer, the next free ``n``. Returns the key saved."""
        latest = self.load_mutable(prefix, version=version)
        n = mutable_index(prefix, latest.key) if latest is not None else 0
        for _ in range(MUTABLE_ATTEMPTS):
            n += 1
            key = f"{prefix}#{n}"
            if self.save(key, data, version=version):
                return key
            log.debug("%s is taken; trying the next index", key)
            latest = self.load_mutable(prefix, version=version)
            if latest is not None:
                n = max(n, mutable_index(prefix, latest.key))
        raise CacheError(
            f"cannot save a new index under {prefix}#",
            why=f"{MUTABLE_ATTEMPTS} keys in a row were taken by other writers",
        )

    # ----------------------------------------------------------------- downloads
    @contextmanager
    def open(self, entry: GhaEntry, *, layer: bool = False) -> Iterator[Iterator[bytes]]:
        """The bytes of *entry*, streamed (resuming with ``Range`` after a drop); *layer*
        counts them as layer bytes too."""

        def refresh() -> GhaEntry | None:
            fresh = self.lookup(entry.key, version=entry.version)
            return fresh if fresh is not None and fresh.key == entry.key else None

        received = self._received_layer if layer else self._received
        chunks = stream_entry(self._requester, entry, refresh=refresh, received=received)
        try:
            yield chunks
        finally:
            chunks.close()

    def read_bytes(self, entry: GhaEntry, *, max_size: int) -> bytes:
        """The whole of a small entry (an index); CacheError past *max_size* bytes."""
        data = bytearray()
        with self.open(entry) as chunks:
            for piece in chunks:
                data += piece
                if len(data) > max_size:
                    raise CacheError(f"cache entry {entry.key} is larger than {max_size} bytes")
        return bytes(data)

    # ----------------------------------------------------------------- lifetime
    def close(self) -> None:
        self._requester.close()

    def __enter__(self) -> GhaClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
