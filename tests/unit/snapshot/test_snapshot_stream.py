"""A layer unpacked while it downloads: the snapshot and the stored blob are exactly the
layer, or neither exists; a failing source falls back to the next one."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiln.content import BlobLocator, BlobSink, BlobStore
from kiln.errors import CorruptBlobError, KilnError, MissingBlobError
from kiln.oci import OCI_LAYER_GZIP, Descriptor, Layer
from kiln.snapshot import stream
from kiln.snapshot.snapshots import SnapshotStore
from kiln.snapshot.stream import StreamingUnpack
from kiln.state import KilnRoot

CHUNK = 4096


def layer_tar(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def make_layer(files: dict[str, bytes]) -> tuple[Layer, bytes]:
    raw = layer_tar(files)
    blob = gzip.compress(raw, compresslevel=1)
    desc = Descriptor(OCI_LAYER_GZIP, "sha256:" + hashlib.sha256(blob).hexdigest(), len(blob))
    return Layer(desc, "sha256:" + hashlib.sha256(raw).hexdigest()), blob


# many chunks: more than the queue between download and unpack holds
BIG = {f"d/f{i}.bin": os.urandom(20_000) for i in range(40)}


class Source:
    """A provider that serves *blob* in small chunks, as a registry download does
    (vouched: it checks the digest itself once exhausted), optionally failing."""

    location = ""

    def __init__(self, blob: bytes, *, fail_at: int | None = None, vouched: bool = True,
                 serve: bytes | None = None) -> None:  # fmt: skip
        self.blob = blob
        self.served = serve if serve is not None else blob
        self.fail_at = fail_at
        self.vouched = vouched
        self.calls = 0

    def chunks(self, desc: Descriptor) -> Iterator[bytes]:
        hasher = hashlib.sha256()
        for start in range(0, len(self.served), CHUNK):
            if self.fail_at is not None and start >= self.fail_at:
                raise MissingBlobError("the connection dropped", digest=desc.digest)
            chunk = self.served[start : start + CHUNK]
            hasher.update(chunk)
            yield chunk
        if self.vouched and "sha256:" + hasher.hexdigest() != desc.digest:
            raise CorruptBlobError("served bytes do not match", digest=desc.digest)

    def fetch(self, desc: Descriptor, sink: BlobSink) -> None:
        self.calls += 1
        if not sink.has(desc.digest):
            sink.ingest(desc, self.chunks(desc), "test blob", vouched=self.vouched)


@pytest.fixture
def root(tmp_path: Path) -> KilnRoot:
    return KilnRoot(tmp_path / "root").ensure()


def leftovers(root: KilnRoot) -> list[str]:
    """Temporary unpack directories and partial blobs still on disk."""
    tmp = [p.name for p in root.tmp.rglob("unpack-*")]
    return tmp + [p.name for p in root.blobs.iterdir() if p.name.startswith(".ingest-")]


def test_the_layer_is_unpacked_and_its_blob_stored_in_one_pass(root: KilnRoot) -> None:
    layer, blob = make_layer(BIG)
    store = BlobStore(root.blobs)
    sink = StreamingUnpack(store, layer, lambda: root.tempdir("unpack-"))
    Source(blob).fetch(layer.blob, sink)
    assert sink.result is not None
    for name, data in BIG.items():
        assert (sink.result / name).read_bytes() == data
    assert store.read(layer.digest) == blob
    assert store.diff_id(layer.digest) == layer.diff_id


@pytest.mark.parametrize("vouched", [True, False])
def test_a_corrupt_download_leaves_no_blob_and_no_directory(root: KilnRoot, vouched: bool) -> None:
    layer, blob = make_layer(BIG)
    other = bytearray(blob)
    other[len(other) // 2] ^= 0xFF  # the stream may still unpack: the digest decides
    store = BlobStore(root.blobs)
    sink = StreamingUnpack(store, layer, lambda: root.tempdir("unpack-"))
    with pytest.raises(CorruptBlobError):
        Source(blob, serve=bytes(other), vouched=vouched).fetch(layer.blob, sink)
    assert sink.result is None
    assert not store.has(layer.digest)
    assert leftovers(root) == []


def test_a_blob_that_is_not_the_layer_claimed_is_removed(root: KilnRoot) -> None:
    layer, blob = make_layer({"a": b"one"})
    wrong = Layer(layer.blob, "sha256:" + "0" * 64)  # the image's config says another layer
    store = BlobStore(root.blobs)
    sink = StreamingUnpack(store, wrong, lambda: root.tempdir("unpack-"))
    with pytest.raises(CorruptBlobError, match="not the layer its image says"):
        Source(blob).fetch(layer.blob, sink)
    assert not store.has(layer.digest)
    assert store.diff_id(layer.digest) is None
    assert leftovers(root) == []


@pytest.mark.timeout(60)  # a download blocked by a failed unpack would hang here
def test_an_unsafe_layer_fails_early_without_blocking_the_download(
    root: KilnRoot, monkeypatch: pytest.MonkeyPatch
) -> None:
    # one chunk in flight, chunks as large as the decompressor's reads: the download is
    # waiting to queue the next chunk when the unpack refuses the first member
    monkeypatch.setattr(stream, "QUEUE_CHUNKS", 1)
    monkeypatch.setattr(sys.modules[__name__], "CHUNK", 1 << 17)
    big = {f"f{i}": os.urandom(1 << 17) for i in range(16)}
    layer, blob = make_layer({"../escape": b"x", **big})
    store = BlobStore(root.blobs)
    sink = StreamingUnpack(store, layer, lambda: root.tempdir("unpack-"))
    with pytest.raises(KilnError, match="escape"):
        Source(blob).fetch(layer.blob, sink)
    assert sink.result is None
    assert store.has(layer.digest)  # the blob is sound: kept, the layer itself is refused
    assert leftovers(root) == []
    assert not (root.path / "escape").exists()


def test_ensure_falls_back_to_the_next_source_after_a_dropped_download(root: KilnRoot) -> None:
    layer, blob = make_layer(BIG)
    store = BlobStore(root.blobs)
    locator = BlobLocator(store)
    dropping, good = Source(blob, fail_at=len(blob) // 2), Source(blob)
    locator.add(layer.digest, dropping)
    locator.add(layer.digest, good)
    snapshots = SnapshotStore(root, store)
    path = snapshots.ensure(layer, lambda lay, sink: locator.stream(lay.blob, sink))
    assert (dropping.calls, good.calls) == (1, 1)
    assert {str(p.relative_to(path)) for p in path.rglob("*.bin")} == set(BIG)
    assert store.read(layer.digest) == blob
    assert leftovers(root) == []


def test_ensure_unpacks_a_stored_blob_without_fetching(root: KilnRoot) -> None:
    layer, blob = make_layer({"etc/hostname": b"kiln\n"})
    store = BlobStore(root.blobs)
    store.put(blob, layer.digest)

    def fetch(lay: Layer, sink: BlobSink) -> None:
        raise AssertionError("a stored blob is not fetched")

    path = SnapshotStore(root, store).ensure(layer, fetch)
    assert (path / "etc" / "hostname").read_bytes() == b"kiln\n"
    assert store.diff_id(layer.digest) == layer.diff_id


def test_all_sources_failing_leaves_nothing_behind(root: KilnRoot) -> None:
    layer, blob = make_layer(BIG)
    store = BlobStore(root.blobs)
    locator = BlobLocator(store)
    locator.add(layer.digest, Source(blob, fail_at=CHUNK * 3))
    snapshots = SnapshotStore(root, store)
    with pytest.raises(MissingBlobError):
        snapshots.ensure(layer, lambda lay, sink: locator.stream(lay.blob, sink))
    assert not snapshots.exists(layer.diff_id)
    assert not store.has(layer.digest)
    assert leftovers(root) == []
