"""``type=gha``: the build cache in the GitHub Actions cache service (or ``kiln cache serve``).

Layout as BuildKit's gha backend: each layer blob is an entry ``buildkit-blob-1-<digest>``
(saved only when missing); the cache config, its layers annotated with media type, diff
ID, size and creation time, is saved under ``index-<scope>-1-<8 hex of sha256(token
scope)>#<n>`` — a new ``n`` per export, since entries are immutable. Import reads the
newest index of every scope the token can read (this branch, then the base branch, then
the default branch) and merges them in that order.

Where BuildKit defaults ``scope`` to ``buildkit`` for every build (so the jobs of a
matrix overwrite each other's index, moby/buildkit#2299), kiln derives the default scope
from the build context, Dockerfile, target and platform; ``scope=buildkit`` restores
BuildKit's behaviour.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kiln.attrs import Attrs
from kiln.cache.records import CacheEntry, MountRecord, StepRecord
from kiln.cache.remote.base import (
    COMMON_EXPORT_ATTRS,
    MOUNT_EXPORT_ATTRS,
    CacheBackend,
    CacheContext,
    CacheSession,
    ExportOptions,
    ImportedCache,
    export_options,
)
from kiln.cache.remote.convert import convert_layers
from kiln.cache.remote.format import (
    MAX_CONFIG_SIZE,
    CacheFormatError,
    build_config,
    parse_config,
    parse_json,
    parse_mounts,
    parse_trees,
)
from kiln.content import BlobStore
from kiln.errors import CacheError, KilnError, MissingBlobError
from kiln.oci import Descriptor, Layer, Platform, canonical_json

if TYPE_CHECKING:
    from kiln.gha.client import GhaClient

VERSION = "1"
CATEGORY = "cache"
_TRUE = ("1", "true", "yes", "on")
_CONNECTION_ATTRS = frozenset({"scope", "url", "url_v2", "token", "version", "timeout"})
# accepted for buildx compatibility (docker/build-push-action passes them); kiln lists
# entries through the cache API itself and does not need a GitHub API token
_IGNORED_ATTRS = frozenset({"repository", "ghtoken"})


@dataclass(frozen=True, slots=True)
class GhaConnection:
    token: str
    url: str | None
    url_v2: str | None
    api_version: int
    timeout: float
    scope: str | None  # None: derived from the build (see module docstring)

    def client(self, ctx: CacheContext) -> GhaClient:
        from kiln.gha.client import GhaClient  # only builds that use gha pay for it

        return GhaClient(
            token=self.token,
            url=self.url,
            url_v2=self.url_v2,
            api_version=self.api_version,
            timeout=self.timeout,
            stats=ctx.stats,
            category=CATEGORY,
        )


@dataclass(frozen=True, slots=True)
class GhaImport:
    connection: GhaConnection


@dataclass(frozen=True, slots=True)
class GhaExport:
    connection: GhaConnection
    options: ExportOptions


def blob_key(digest: str) -> str:
    return f"buildkit-blob-{VERSION}-{digest}"


def index_prefix(scope: str, token_scope: str) -> str:
    suffix = hashlib.sha256(token_scope.encode()).hexdigest()[:8]
    return f"index-{scope}-{VERSION}-{suffix}"


def _connection(attrs: Attrs) -> GhaConnection:
    env = os.environ
    # as buildx: ACTIONS_CACHE_SERVICE_V2 (set by the runner) picks v2 unless version= says
    v2 = env.get("ACTIONS_CACHE_SERVICE_V2", "").lower() in _TRUE
    version_text = attrs.choice("version", ("1", "2"), "2" if v2 else "1")
    url = attrs.get("url") or env.get("ACTIONS_CACHE_URL") or env.get("ACTIONS_RESULTS_URL")
    url_v2 = attrs.get("url_v2") or env.get("ACTIONS_RESULTS_URL")
    token = attrs.get("token") or env.get("ACTIONS_RUNTIME_TOKEN", "")
    api_version = int(version_text)
    missing = []
    if api_version == 1 and not url:
        missing.append("ACTIONS_CACHE_URL (or url=)")
    if api_version == 2 and not url_v2:
        missing.append("ACTIONS_RESULTS_URL (or url_v2=)")
    if not token:
        missing.append("ACTIONS_RUNTIME_TOKEN (or token=)")
    if missing:
        raise attrs.error(
            f"type=gha needs {' and '.join(missing)}",
            hint="inside a GitHub workflow expose the runtime variables (e.g. with "
            "crazy-max/ghaction-github-runtime); elsewhere run `kiln cache serve`, get a "
            "token with `kiln cache token`, and pass url=http://HOST:PORT/,token=...",
        )
    scope = attrs.get("scope") or None
    if scope is not None and ("," in scope or len(scope) > 200):
        raise attrs.error("scope must be at most 200 characters and contain no comma")
    return GhaConnection(token, url, url_v2, api_version, attrs.duration("timeout", 600.0),
                         scope)  # fmt: skip


class GhaBlobSource:
    """Blobs of the gha cache: looked up by key, streamed, verified while stored."""

    location = ""

    def __init__(self, client: GhaClient) -> None:
        self.client = client

    def fetch(self, desc: Descriptor, store: BlobStore) -> None:
        key = blob_key(desc.digest)
        entry = self.client.lookup(key)
        if entry is None or entry.key != key:
            raise MissingBlobError(f"gha cache blob {desc.digest} is gone", digest=desc.digest)
        with self.client.open(entry, layer=True) as chunks:
            store.ingest(desc, chunks, f"gha cache blob {desc.digest}")


class GhaBackend(CacheBackend[GhaImport, GhaExport]):
    name = "gha"
    import_attributes = _CONNECTION_ATTRS | _IGNORED_ATTRS
    export_attributes = (_CONNECTION_ATTRS | _IGNORED_ATTRS | COMMON_EXPORT_ATTRS
                         | MOUNT_EXPORT_ATTRS)  # fmt: skip

    def parse_import(self, attrs: Attrs) -> GhaImport:
        return GhaImport(_connection(attrs))

    def parse_export(self, attrs: Attrs) -> GhaExport:
        return GhaExport(_connection(attrs), export_options(attrs, self.name))

    def open(self, ctx: CacheContext) -> GhaSession:
        return GhaSession(ctx)


ClientFactory = Callable[[GhaConnection, CacheContext], "GhaClient"]


class GhaSession(CacheSession[GhaImport, GhaExport]):
    """*client_factory* makes the client of a connection (default: the real one)."""

    def __init__(self, ctx: CacheContext, client_factory: ClientFactory | None = None) -> None:
        super().__init__(ctx)
        self._factory = client_factory or GhaConnection.client
        self._clients: dict[GhaConnection, GhaClient] = {}
        # what this build imported: blobs the service holds, index bytes by index prefix
        self._known_blobs: set[str] = set()
        self._indexes: dict[str, bytes] = {}

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()

    def _client(self, connection: GhaConnection) -> GhaClient:
        """One client per connection for the whole build (import, lazy fetches, export)."""
        if connection not in self._clients:
            self._clients[connection] = self._factory(connection, self.ctx)
        return self._clients[connection]

    def scope(self, connection: GhaConnection) -> str:
        return connection.scope or self.ctx.build_scope

    # ------------------------------------------------------------------ import
    def load(self, spec: GhaImport) -> ImportedCache | None:
        ctx = self.ctx
        client: GhaClient | None = None
        records: dict[str, StepRecord] = {}
        mounts: dict[str, MountRecord] = {}
        trees: dict[str, str] = {}
        try:
            client = self._client(spec.connection)
            # token scopes in lookup order: earlier ones win on a key present in several
            for token_scope in (s for s in client.scopes if s.readable):
                prefix = index_prefix(self.scope(spec.connection), token_scope.name)
                entry = client.load_mutable(prefix)
                if entry is None:
                    continue
                data = client.read_bytes(entry, max_size=MAX_CONFIG_SIZE)
                self._indexes[prefix] = data
                config = parse_json(data, entry.key)
                for key, record in parse_config(config).items():
                    records.setdefault(key, record)
                    if record.layer is not None:
                        self._known_blobs.add(record.layer.digest)
                trees = parse_trees(config) | trees
                for mount in parse_mounts(config):
                    mounts.setdefault(mount.identity.name, mount)
                    self._known_blobs.update(m.layer.digest for m in mount.layers)
        except (KilnError, CacheFormatError) as exc:
            ctx.warn(f"cannot import gha cache: {str(exc).splitlines()[0]}")
        else:
            if not records and not mounts:
                scope = self.scope(spec.connection)
                ctx.warn(f"gha cache scope {scope!r} is empty: building without it")
        if not (records or mounts) or client is None:
            return None
        return ImportedCache(f"gha {self.scope(spec.connection)}", records, GhaBlobSource(client),
                             ctx.locator, ctx.warn, list(mounts.values()), trees)  # fmt: skip

    # ------------------------------------------------------------------ export
    def export(self, spec: GhaExport, entries: list[CacheEntry],
               mounts: list[MountRecord]) -> None:  # fmt: skip
        ctx = self.ctx
        client = self._client(spec.connection)
        writable = [s for s in client.scopes if s.writable]
        if not writable:
            raise CacheError(
                "the gha token cannot write to any cache scope",
                hint="a read-only token (e.g. a pull request's) can only import",
            )
        entries = convert_layers(entries, spec.options, ctx)
        config, layers = build_config(entries, annotate=True, mounts=mounts)

        def upload(layer: Layer) -> None:
            if layer.digest in self._known_blobs:
                return  # named by an index this build just read: the service has it
            key = blob_key(layer.digest)
            if client.lookup(key) is not None:
                return  # already there: entries are immutable
            ctx.locator.fetch(layer.blob)
            client.save(key, ctx.store.path(layer.digest))

        with ThreadPoolExecutor(max_workers=4) as pool:
            for _ in pool.map(upload, layers):
                pass
        prefix = index_prefix(self.scope(spec.connection), writable[0].name)
        data = canonical_json(config)
        if self._indexes.get(prefix) != data:  # an unchanged index is not saved again
            client.save_mutable(prefix, data)


def default_scope(context: Path, dockerfile: Path, target: str | None,
                  platforms: Sequence[Platform]) -> str:  # fmt: skip
    """A readable scope unique to one build of a matrix: context (relative to the working
    directory), Dockerfile (relative to the context), target, platforms (``.`` and
    ``Dockerfile`` left out when they are the defaults)."""
    cwd = Path.cwd()
    where = str(context.relative_to(cwd) if context.is_relative_to(cwd) else context.name)
    file = str(dockerfile.relative_to(context) if dockerfile.is_relative_to(context)
               else dockerfile.name)  # fmt: skip
    parts = [p for p in (where.strip("./"), file if file != "Dockerfile" else "",
                         target or "", "-".join(str(x).replace("/", "-") for x in platforms))
             if p]  # fmt: skip
    text = "-".join(parts)
    clean = "".join(c if c.isalnum() or c in "._-" else "-" for c in text).strip("-")
    if len(clean) > 100:
        clean = clean[:80] + "-" + hashlib.sha256(text.encode()).hexdigest()[:12]
    return f"kiln-{clean}" if clean else "kiln"
