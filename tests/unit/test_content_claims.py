"""BlobLocator: what a source claims a blob is (its diff ID) is checked before it is used."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import pytest

from kiln.archive.compress import diff_id_of
from kiln.cache.records import StepRecord
from kiln.cache.remote.base import ImportedCache
from kiln.content import BlobLocator, BlobStore
from kiln.errors import CorruptBlobError
from kiln.oci import OCI_LAYER_GZIP, Descriptor, Layer


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Source:
    location = ""

    def __init__(self, blobs: dict[str, bytes]) -> None:
        self.blobs = blobs
        self.fetched: list[str] = []

    def fetch(self, desc: Descriptor, store: BlobStore) -> None:
        self.fetched.append(desc.digest)
        store.ingest(desc, [self.blobs[desc.digest]], desc.digest)


TAR_ONE, TAR_TWO = b"one" * 100, b"two" * 100
BLOB_ONE = gzip.compress(TAR_ONE, mtime=0)
ONE = Descriptor(OCI_LAYER_GZIP, digest(BLOB_ONE), len(BLOB_ONE))


def test_a_true_claim_is_checked_once_and_remembered(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs" / "sha256")
    locator = BlobLocator(store, diff_id_of)
    source = Source({ONE.digest: BLOB_ONE})
    locator.add(ONE.digest, source, diff_id=digest(TAR_ONE))
    locator.fetch(ONE)
    assert store.diff_id(ONE.digest) == digest(TAR_ONE)  # known for certain from now on
    locator.fetch(ONE)
    assert source.fetched == [ONE.digest]


def test_a_false_claim_is_refused_even_for_a_blob_already_here(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs" / "sha256")
    locator = BlobLocator(store, diff_id_of)
    source = Source({ONE.digest: BLOB_ONE})
    locator.add(ONE.digest, source, diff_id=digest(TAR_TWO))  # "this blob is layer two"
    with pytest.raises(CorruptBlobError, match="is not the layer its source says") as info:
        locator.fetch(ONE)
    assert info.value.digest == ONE.digest and digest(TAR_ONE) in str(info.value)
    locator.forget(ONE.digest, source)  # the lying records are dropped: the blob is usable
    locator.fetch(ONE)
    # a blob this machine knows: the recorded diff ID decides, without decompressing again
    other = BlobLocator(store, lambda path, media: pytest.fail("recomputed"))
    other.add(ONE.digest, source, diff_id=digest(TAR_TWO))
    with pytest.raises(CorruptBlobError):
        other.fetch(ONE)


def test_unpacking_callers_may_skip_the_check(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs" / "sha256")
    locator = BlobLocator(store, lambda path, media: pytest.fail("checked twice"))
    locator.add(ONE.digest, Source({ONE.digest: BLOB_ONE}), diff_id=digest(TAR_TWO))
    locator.fetch(ONE, check=False)  # the unpacking that follows verifies the diff ID itself
    assert store.has(ONE.digest)


def test_a_cache_naming_one_blob_as_two_layers_loses_those_records(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs" / "sha256")
    locator = BlobLocator(store, diff_id_of)
    warnings: list[str] = []
    other = Descriptor(OCI_LAYER_GZIP, "sha256:" + "e" * 64, 10)
    records = {
        "k1": StepRecord(Layer(ONE, digest(TAR_ONE)), "t"),
        "k2": StepRecord(Layer(ONE, digest(TAR_TWO)), "t"),  # the same blob, another layer
        "k3": StepRecord(Layer(other, "sha256:" + "f" * 64), "t"),
        "k4": StepRecord(None, "t"),
    }
    cache = ImportedCache("test", records, Source({}), locator, warnings.append)
    assert sorted(cache.records) == ["k3", "k4"]
    assert warnings == [f"cache test names blob {ONE.digest} as 2 different layers: "
                        "the steps it records are run instead"]  # fmt: skip
