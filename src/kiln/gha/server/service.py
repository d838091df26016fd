"""Cache operations, independent of the wire protocol that asks for them.

The v1 REST API, the v2 twirp API and the blob endpoints all call into
:class:`CacheService`; it enforces scopes, immutability, size bounds and the commit
protocol (bytes durable first, then the metadata row flips to ready in one transaction).

A reservation whose upload shows no activity for ``reservation_timeout`` (a server killed
mid-upload, a client that died) is taken over by the next reservation of its key instead
of answering 409: the idle upload's data is discarded and its later requests are refused
as those of any lost reservation (404). Activity is what an upload's requests record (a
chunk, a block, a blob, a block list, a commit) and, while a request's body streams in,
its bytes, noted at least every quarter of the timeout: an upload making progress keeps
its key however long one of its requests takes.
"""

from __future__ import annotations

import base64
import binascii
import functools
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, NoReturn, TypeVar

import anyio
import anyio.to_thread

from kiln.gha.server.errors import Conflict, Forbidden, Invalid, NotFound, TooLarge
from kiln.gha.server.metadata.base import AlreadyExists, Entry, MetadataStore, covered
from kiln.gha.server.settings import ServerSettings
from kiln.gha.server.storage.base import BlobReader, SizeMismatch, Storage, StorageError
from kiln.gha.server.tokens import Grant

log = logging.getLogger("kiln.gha.server")
T = TypeVar("T")

MAX_KEY_LENGTH = 512
MAX_KEYS = 10
MAX_BLOCK_ID_BYTES = 64
MAX_STAGED_BLOCKS = 100_000  # Azure's limit of uncommitted blocks per blob
READ_DENIED = "cache read denied: the token has no readable cache scope"
WRITE_DENIED = "cache write denied: the token has no writable cache scope"


class _Lost(NotFound):
    """The reservation of an upload was lost while one of its request bodies streamed in."""


def check_key(key: object) -> str:
    if not isinstance(key, str) or not key:
        raise Invalid("a cache key must be a non-empty string")
    if len(key) > MAX_KEY_LENGTH:
        raise Invalid(f"a cache key cannot be longer than {MAX_KEY_LENGTH} characters")
    if "," in key:
        raise Invalid("a cache key cannot contain commas")
    return key


def check_version(version: object) -> str:
    if not isinstance(version, str) or not version or len(version) > MAX_KEY_LENGTH:
        raise Invalid("version must be a non-empty string of at most 512 characters")
    return version


def check_block_id(block_id: str) -> str:
    """A base64 block id of 1 to 64 bytes (npm sends 48, Go's Azure SDK 64)."""
    try:
        raw = base64.b64decode(block_id, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise Invalid("the block id is not valid base64") from exc
    if not 0 < len(raw) <= MAX_BLOCK_ID_BYTES:
        raise Invalid(f"a block id must be 1 to {MAX_BLOCK_ID_BYTES} bytes before encoding")
    return block_id


async def limited(body: AsyncIterator[bytes], limit: int, what: str) -> AsyncIterator[bytes]:
    """Pass *body* through, refusing it once it goes past *limit* bytes."""
    seen = 0
    async for piece in body:
        seen += len(piece)
        if seen > limit:
            raise TooLarge(f"{what} is larger than the {limit} bytes allowed")
        yield piece


class CacheService:
    def __init__(
        self,
        settings: ServerSettings,
        storage: Storage,
        metadata: MetadataStore,
        *,
        clock: Callable[[], float] = time.time,
        on_commit: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.storage = storage
        self.metadata = metadata
        self.clock = clock
        self.on_commit = on_commit
        self._commit_locks: dict[int, anyio.Lock] = {}

    async def db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a (blocking) metadata call in a worker thread."""
        return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))

    # --- lookups -----------------------------------------------------------------------
    async def lookup(self, grant: Grant, keys: Sequence[str], version: str) -> Entry | None:
        """GitHub's matching: per readable scope in order, each key exact then as a prefix
        (the primary key first, then each restore key); the newest entry wins."""
        scopes = grant.read_scopes
        if not scopes:
            raise Forbidden(READ_DENIED)
        wanted = list(dict.fromkeys(check_key(k) for k in keys))
        if not wanted:
            raise Invalid("at least one key is required")
        if len(wanted) > MAX_KEYS:
            raise Invalid(f"at most {MAX_KEYS} keys can be looked up at once")
        check_version(version)
        found = await self.db(self._match, scopes, wanted, version)
        if found is None:
            await self.db(self.metadata.bump, "misses")
            return None
        await self.db(self.metadata.touch, found.id, self.clock(), hit=True)
        await self.db(self.metadata.bump, "hits")
        return found

    def _match(self, scopes: Sequence[str], keys: Sequence[str], version: str) -> Entry | None:
        for scope in scopes:
            for key in keys:
                for prefix in (False, True):
                    hit = self.metadata.match(scope, version, key, prefix=prefix)
                    if hit is not None:
                        return hit
        return None

    # --- reservations ------------------------------------------------------------------
    async def reserve(
        self, grant: Grant, key: str, version: str, declared_size: int | None = None
    ) -> Entry:
        scope = grant.write_scope
        if scope is None:
            raise Forbidden(WRITE_DENIED)
        check_key(key)
        check_version(version)
        cap = self.settings.entry_cap
        if declared_size is not None and (declared_size < 0 or declared_size > cap):
            raise TooLarge(
                f"Cache size of {declared_size} bytes is over the {cap} bytes an entry may have"
            )
        blob = secrets.token_hex(16)
        now = self.clock()
        try:
            entry = await self.db(
                self.metadata.reserve, scope, key, version, blob, declared_size, now
            )
        except AlreadyExists:
            entry = await self._take_over(scope, key, version, blob, declared_size, now)
        else:
            log.info("reserved entry %d in scope %s (key %s)", entry.id, scope, key)
        return entry

    async def _take_over(
        self, scope: str, key: str, version: str, blob: str, declared_size: int | None, now: float
    ) -> Entry:
        """Reserve the key in place of an idle reservation; 409 if it is not idle."""
        idle_before = now - self.settings.reservation_timeout
        try:
            entry, replaced = await self.db(
                self.metadata.take_over, scope, key, version, blob, declared_size, now, idle_before
            )
        except AlreadyExists as exc:
            raise Conflict(
                f"Cache already exists. Scope: {scope}, Key: {key}, Version: {version}"
            ) from exc
        if replaced is None:  # the holder went away between the two attempts
            log.info("reserved entry %d in scope %s (key %s)", entry.id, scope, key)
            return entry
        await anyio.to_thread.run_sync(self.storage.delete, replaced.blob)
        await self.db(self.metadata.bump, "taken_over")
        log.info(
            "reserved entry %d in scope %s (key %s), taking over upload %d idle for %.0fs",
            entry.id,
            scope,
            key,
            replaced.id,
            now - replaced.last_access,
        )
        return entry

    async def pending_for(self, grant: Grant, entry_id: int) -> Entry:
        """The pending upload *entry_id*, if this token may write to its scope."""
        entry = await self.db(self.metadata.get, entry_id)
        if entry is None or entry.ready:
            raise NotFound(f"no upload in progress with id {entry_id}")
        if not grant.can_write(entry.scope):
            raise Forbidden(WRITE_DENIED)
        return entry

    async def pending_blob(self, blob: str) -> Entry:
        """The pending upload behind a signed upload URL."""
        entry = await self.db(self.metadata.get_by_blob, blob)
        if entry is None or entry.ready:
            raise NotFound("no upload in progress for this blob")
        return entry

    # --- uploads -----------------------------------------------------------------------
    async def _lost(self, entry: Entry) -> NoReturn:
        """The upload's reservation is gone (taken over, abandoned, removed): drop what
        this request wrote and refuse it as a request for an unknown upload."""
        await anyio.to_thread.run_sync(self.storage.discard_upload, entry.blob)
        raise NotFound(f"no upload in progress with id {entry.id}")

    async def _record(self, entry: Entry, fn: Callable[..., bool], *args: Any) -> None:
        """Record upload progress with *fn* (a ``record_*`` of the metadata store)."""
        if not await self.db(fn, entry.id, *args, self.clock()):
            await self._lost(entry)

    async def _alive(self, entry: Entry, body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """Pass *body* through, noting activity on the reservation as its bytes arrive (at
        most every quarter of the reservation timeout); stop once the reservation is lost."""
        interval = self.settings.reservation_timeout / 4
        noted = entry.last_access
        async for piece in body:
            now = self.clock()
            if now - noted >= interval:
                if not await self.db(self.metadata.note_activity, entry.id, now):
                    raise _Lost(f"no upload in progress with id {entry.id}")
                noted = now
            yield piece

    async def _write(self, entry: Entry, write: Callable[[], Awaitable[T]]) -> T:
        """Run a storage write of a body passed through :meth:`_alive`."""
        try:
            return await write()
        except _Lost:
            await self._lost(entry)

    async def write_chunk(
        self, entry: Entry, start: int, end: int, body: AsyncIterator[bytes]
    ) -> None:
        """v1 PATCH: bytes [start, end] (inclusive), in any order, possibly in parallel."""
        if start < 0 or end < start:
            raise Invalid(f"invalid chunk range {start}-{end}")
        limit = self.settings.entry_cap
        if entry.declared_size is not None:
            limit = min(limit, entry.declared_size)
        if end >= limit:
            raise TooLarge(f"chunk {start}-{end} goes past the {limit} bytes of this entry")
        length = end - start + 1
        stream = limited(self._alive(entry, body), length, "the chunk")
        written = await self._write(entry, lambda: self.storage.write_at(entry.blob, start, stream))
        if written != length:
            raise Invalid(f"the chunk has {written} bytes, its Content-Range says {length}")
        await self._record(entry, self.metadata.record_chunk, start, length)

    async def put_blob(self, entry: Entry, body: AsyncIterator[bytes]) -> int:
        """Azure Put Blob: the whole entry in one request."""
        stream = limited(self._alive(entry, body), self.settings.entry_cap, "the blob")
        size = await self._write(entry, lambda: self.storage.write_whole(entry.blob, stream))
        await self._record(entry, self.metadata.replace_chunks, size)
        return size

    async def put_block(self, entry: Entry, block_id: str, body: AsyncIterator[bytes]) -> int:
        """Azure Put Block: one staged block; the block list orders them later."""
        check_block_id(block_id)
        staged = await self.db(self.metadata.blocks, entry.id)
        if block_id not in staged and len(staged) >= MAX_STAGED_BLOCKS:
            raise Invalid(f"an upload may stage at most {MAX_STAGED_BLOCKS} blocks")
        room = self.settings.entry_cap - sum(n for b, n in staged.items() if b != block_id)
        stream = limited(self._alive(entry, body), max(room, 0), "the staged blocks")
        size = await self._write(
            entry, lambda: self.storage.write_block(entry.blob, block_id, stream)
        )
        await self._record(entry, self.metadata.record_block, block_id, size)
        return size

    async def put_block_list(self, entry: Entry, block_ids: Sequence[str]) -> int:
        """Azure Put Block List: the blob is the staged blocks in list order."""
        staged = await self.db(self.metadata.blocks, entry.id)
        missing = [b for b in block_ids if b not in staged]
        if missing:
            raise Invalid(f"{len(missing)} block(s) of the list were never staged")
        total = sum(staged[b] for b in block_ids)
        if total > self.settings.entry_cap:
            raise TooLarge(f"the blob would have {total} bytes, over the entry cap")
        try:
            size = await self.storage.assemble(entry.blob, block_ids)
        except StorageError as exc:
            raise Invalid(str(exc)) from exc
        if size != total:
            raise Invalid(f"assembled {size} bytes, the staged blocks add up to {total}")
        await self._record(entry, self.metadata.replace_chunks, size)
        return size

    # --- commit ------------------------------------------------------------------------
    async def commit(self, entry: Entry, size: int) -> Entry:
        """Seal the upload of *entry* at *size* bytes and make it visible.

        The bytes are made durable and moved into place before the metadata row flips to
        ready; a crash in between leaves an invisible pending row that the abandoned-upload
        sweep removes. Repeating a successful commit with the same size returns the entry.
        """
        lock = self._commit_locks.setdefault(entry.id, anyio.Lock())
        try:
            async with lock:
                return await self._commit_locked(entry, size)
        finally:
            if not lock.locked():
                self._commit_locks.pop(entry.id, None)

    async def _commit_locked(self, entry: Entry, size: int) -> Entry:
        current = await self.db(self.metadata.get, entry.id)
        if current is None:
            raise NotFound(f"no upload in progress with id {entry.id}")
        if current.ready:
            if current.size == size:
                return current
            raise Conflict(f"entry {entry.id} was already committed with another size")
        if size < 0:
            raise Invalid("size must not be negative")
        if size > self.settings.entry_cap:
            raise TooLarge(f"{size} bytes is over the {self.settings.entry_cap} an entry may have")
        if current.declared_size is not None and size != current.declared_size:
            log.info("entry %d: committed size differs from the reserved size", entry.id)
        chunks = await self.db(self.metadata.chunks, entry.id)
        if not covered(chunks, size):
            got = sum(n for _, n in chunks)
            raise Invalid(f"the uploaded data ({got} bytes in chunks) does not make {size} bytes")
        # A commit is activity: it keeps the reservation (from a take-over, the abandoned
        # upload sweep) while the bytes are sealed.
        if not await self.db(self.metadata.note_activity, entry.id, self.clock()):
            raise NotFound(f"no upload in progress with id {entry.id}")
        try:
            await self.storage.seal(entry.blob, size)
        except SizeMismatch as exc:
            raise Invalid(str(exc)) from exc
        committed = await self.db(self.metadata.commit, entry.id, size, self.clock())
        if committed is None:
            # The row was removed (abandoned-upload sweep, rm) while we sealed.
            await anyio.to_thread.run_sync(self.storage.delete, entry.blob)
            raise NotFound(f"upload {entry.id} was removed before it could be committed")
        log.info(
            "committed entry %d in scope %s: %d bytes (key %s)",
            committed.id,
            committed.scope,
            committed.size,
            committed.key,
        )
        if self.on_commit is not None:
            self.on_commit()
        return committed

    async def finalize(self, grant: Grant, key: str, version: str, size: int) -> Entry:
        """v2 FinalizeCacheEntryUpload: commit the upload this token reserved."""
        scope = grant.write_scope
        if scope is None:
            raise Forbidden(WRITE_DENIED)
        entry = await self.db(self.metadata.find, scope, check_key(key), check_version(version))
        if entry is None:
            raise NotFound(f"no upload in progress for key {key} in scope {scope}")
        return await self.commit(entry, size)

    # --- downloads and removal ---------------------------------------------------------
    async def open_download(self, blob: str) -> tuple[Entry, BlobReader]:
        entry = await self.db(self.metadata.get_by_blob, blob)
        if entry is None or not entry.ready:
            raise NotFound("no such cache entry")
        reader = await self.storage.open(blob)
        if reader is None:
            log.error("entry %d is committed but its data is missing from storage", entry.id)
            raise NotFound("the cache entry's data is missing")
        await self.db(self.metadata.touch, entry.id, self.clock(), hit=False)
        return entry, reader

    async def remove(self, entry_id: int) -> Entry | None:
        gone = await self.db(self.metadata.delete, entry_id)
        if gone is not None:
            await anyio.to_thread.run_sync(self.storage.delete, gone.blob)
            log.info("removed entry %d in scope %s (key %s)", gone.id, gone.scope, gone.key)
        return gone
