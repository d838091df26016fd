"""BlobStore.ingest: what is stored is exactly the blob, or nothing."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiln.content import BlobStore
from kiln.errors import CorruptBlobError
from kiln.oci import OCI_LAYER_GZIP, Descriptor


def desc_of(data: bytes) -> Descriptor:
    return Descriptor(OCI_LAYER_GZIP, "sha256:" + hashlib.sha256(data).hexdigest(), len(data))


def checking(data: bytes, digest: str) -> Iterator[bytes]:
    """Chunks that check their digest once exhausted, as a registry download does."""
    hasher = hashlib.sha256()
    for start in range(0, len(data), 7):
        chunk = data[start : start + 7]
        hasher.update(chunk)
        yield chunk
    if "sha256:" + hasher.hexdigest() != digest:
        raise CorruptBlobError("the source's bytes do not match", digest=digest)


def test_vouched_chunks_are_stored_under_their_digest(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    data = b"layer bytes " * 100
    desc = desc_of(data)
    assert store.ingest(desc, checking(data, desc.digest), "blob", vouched=True) == len(data)
    assert store.read(desc.digest) == data
    assert store.verify(desc.digest)


def test_a_vouching_source_that_finds_a_mismatch_leaves_nothing(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    desc = desc_of(b"what the manifest says")
    wrong = b"what the server sent!!"  # same length, other bytes
    with pytest.raises(CorruptBlobError):
        store.ingest(desc, checking(wrong, desc.digest), "blob", vouched=True)
    assert not store.has(desc.digest)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".ingest-")] == []


def test_unvouched_chunks_are_hashed_by_the_store(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    desc = desc_of(b"the real blob")
    with pytest.raises(CorruptBlobError):
        store.ingest(desc, iter([b"another blob!"]), "blob")
    assert not store.has(desc.digest)
