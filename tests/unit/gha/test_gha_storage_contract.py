"""Contract of every storage backend of the cache server (filesystem)."""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import AsyncIterator, Iterable

import anyio
import pytest

from kiln.gha.server.storage.base import SizeMismatch, Storage, StorageError, Stored, block_name


async def feed(*pieces: bytes) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece


async def read_all(storage: Storage, blob: str, start: int = 0, length: int | None = None) -> bytes:
    reader = await storage.open(blob)
    assert reader is not None
    try:
        n = reader.size - start if length is None else length
        return b"".join([piece async for piece in reader.chunks(start, n)])
    finally:
        await reader.close()


def names(items: Iterable[Stored]) -> set[str]:
    return {i.blob for i in items}


def test_chunks_out_of_order_then_seal(storage_backend: Storage) -> None:
    blob = secrets.token_hex(16)
    data = secrets.token_bytes(3 * 1024 * 1024 + 17)  # more than one write buffer

    async def go() -> None:
        third = len(data) // 3
        # the last chunk first, and split into odd pieces as a network would deliver it
        assert (
            await storage_backend.write_at(blob, 2 * third, feed(data[2 * third :]))
            == len(data) - 2 * third
        )
        assert await storage_backend.write_at(blob, 0, feed(data[:100], data[100:third])) == third
        assert await storage_backend.write_at(blob, third, feed(data[third : 2 * third])) == third
        assert await storage_backend.open(blob) is None  # not committed yet
        await storage_backend.seal(blob, len(data))
        assert await read_all(storage_backend, blob) == data
        assert await read_all(storage_backend, blob, 1000, 5) == data[1000:1005]
        assert await read_all(storage_backend, blob, len(data) - 3) == data[-3:]

    anyio.run(go)
    assert names(storage_backend.stored()) == {blob}
    assert names(storage_backend.uploads()) == set()


def test_blocks_assembled_in_list_order(storage_backend: Storage) -> None:
    blob = secrets.token_hex(16)
    blocks = {f"id-{i}": secrets.token_bytes(1000 + i) for i in range(4)}

    async def go() -> None:
        for bid in ["id-2", "id-0", "id-3", "id-1"]:  # staged in any order
            await storage_backend.write_block(blob, bid, feed(blocks[bid]))
        await storage_backend.write_block(blob, "id-1", feed(blocks["id-1"]))  # a retry
        order = ["id-3", "id-1", "id-0", "id-2"]
        size = await storage_backend.assemble(blob, order)
        expected = b"".join(blocks[b] for b in order)
        assert size == len(expected)
        await storage_backend.seal(blob, size)
        assert await read_all(storage_backend, blob) == expected

    anyio.run(go)


def test_assemble_missing_block_fails(storage_backend: Storage) -> None:
    blob = secrets.token_hex(16)

    async def go() -> None:
        await storage_backend.write_block(blob, "a", feed(b"x"))
        with pytest.raises(StorageError, match="staged block missing"):
            await storage_backend.assemble(blob, ["a", "never-staged"])

    anyio.run(go)


def test_write_whole_replaces_and_seal_checks_size(storage_backend: Storage) -> None:
    blob = secrets.token_hex(16)

    async def go() -> None:
        await storage_backend.write_whole(blob, feed(b"first attempt, longer"))
        await storage_backend.write_whole(blob, feed(b"second"))
        with pytest.raises(SizeMismatch):
            await storage_backend.seal(blob, 100)
        await storage_backend.seal(blob, 6)
        assert await read_all(storage_backend, blob) == b"second"

    anyio.run(go)


def test_seal_truncates_bytes_past_the_size(storage_backend: Storage) -> None:
    blob = secrets.token_hex(16)

    async def go() -> None:
        await storage_backend.write_at(blob, 0, feed(b"abcdef"))
        await storage_backend.seal(blob, 4)
        assert await read_all(storage_backend, blob) == b"abcd"

    anyio.run(go)


def test_empty_entry(storage_backend: Storage) -> None:
    blob = secrets.token_hex(16)

    async def go() -> None:
        await storage_backend.seal(blob, 0)
        reader = await storage_backend.open(blob)
        assert reader is not None and reader.size == 0
        await reader.close()

    anyio.run(go)


def test_delete_and_discard(storage_backend: Storage) -> None:
    kept, dropped, upload = (secrets.token_hex(16) for _ in range(3))

    async def go() -> None:
        for blob in (kept, dropped):
            await storage_backend.write_at(blob, 0, feed(b"data"))
            await storage_backend.seal(blob, 4)
        await storage_backend.write_at(upload, 0, feed(b"partial"))

    anyio.run(go)
    assert names(storage_backend.uploads()) == {upload}
    storage_backend.delete(dropped)
    storage_backend.delete(dropped)  # idempotent
    storage_backend.discard_upload(upload)
    assert names(storage_backend.stored()) == {kept}
    assert names(storage_backend.uploads()) == set()


def test_delete_does_not_disturb_an_open_reader(storage_backend: Storage) -> None:
    blob = secrets.token_hex(16)
    data = secrets.token_bytes(2 * 1024 * 1024 + 1)

    async def go() -> None:
        await storage_backend.write_at(blob, 0, feed(data))
        await storage_backend.seal(blob, len(data))
        reader = await storage_backend.open(blob)
        assert reader is not None
        storage_backend.delete(blob)
        got = b"".join([p async for p in reader.chunks(0, reader.size)])
        await reader.close()
        assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
        assert await storage_backend.open(blob) is None

    anyio.run(go)


@pytest.mark.parametrize(
    "name", ["../../etc/passwd", "ABCDEF0123456789ABCDEF0123456789", "short", "a" * 32 + "/x", ""]
)
def test_names_that_are_not_blob_names_are_refused(storage_backend: Storage, name: str) -> None:
    refused = f"invalid blob name {name!r}"

    async def go() -> None:
        with pytest.raises(StorageError, match=re.escape(refused)):
            await storage_backend.write_at(name, 0, feed(b"x"))
        with pytest.raises(StorageError, match=re.escape(refused)):
            await storage_backend.open(name)

    anyio.run(go)
    with pytest.raises(StorageError, match=re.escape(refused)):
        storage_backend.delete(name)


def test_block_names_are_hashes() -> None:
    assert block_name("../../x") == hashlib.sha256(b"../../x").hexdigest()
