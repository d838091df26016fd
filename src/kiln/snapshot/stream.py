"""Unpack a layer while it downloads: one pass from the network to the snapshot.

:class:`StreamingUnpack` is a :class:`~kiln.content.BlobSink`: a provider hands it the
blob's chunks, and it writes them to the blob store (the blob is kept: a later push,
export or unpack uses it) while a thread decompresses and unpacks the same chunks into a
fresh directory. Nothing of the two is trusted before the end: the blob becomes visible
in the store only with its digest verified (:meth:`BlobStore.ingest`), and the directory
is handed out only when the layer's diff ID, computed on the way, is the one expected.
A provider that fails part-way (the locator then tries the next one) leaves neither.
"""

from __future__ import annotations

import queue
import shutil
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from kiln import timing
from kiln.content import BlobStore
from kiln.errors import CorruptBlobError
from kiln.oci import Descriptor, Layer, compression_of
from kiln.snapshot.unpack import unpack_layer

QUEUE_CHUNKS = 16  # chunks in flight between download and unpack (≈ 16 MiB at 1 MiB)


class _Aborted(Exception):
    """The download stopped before its end: the unpack thread gives up."""


_END = b""  # queued after the last chunk


class _ChunkReader:
    """A file-like ``read(n)`` over chunks arriving in a queue (an empty chunk ends
    them, ``None`` aborts)."""

    def __init__(self, chunks: queue.Queue[bytes | None]) -> None:
        self._chunks = chunks
        self._head = b""
        self._at = 0
        self.ended = False

    def read(self, n: int = -1) -> bytes:
        if self._at == len(self._head) and not self.ended:
            item = self._chunks.get()
            if item is None:
                raise _Aborted
            self.ended = not item
            self._head, self._at = item, 0
        if n < 0:
            rest = [self._head[self._at :]]
            self._at = len(self._head)
            while more := self.read(1 << 20):
                rest.append(more)
            return b"".join(rest)
        if self._at == 0 and n >= len(self._head):
            self._at = len(self._head)
            return self._head  # the whole chunk, not a copy
        out = self._head[self._at : self._at + n]
        self._at += len(out)
        return out

    def drain(self) -> None:
        """Take what is still queued, up to the end or the abort."""
        while not self.ended and self._chunks.get() not in (None, _END):
            pass
        self.ended = True


class StreamingUnpack:
    """Unpack *layer* into a directory from *make_dir* while its blob is stored.

    After a delivery (:meth:`ingest`) succeeds, :attr:`result` is the unpacked
    directory and the blob is in *store* with its diff ID recorded. ``has`` is always
    false: this sink wants the bytes even when another process stored the blob
    meanwhile."""

    def __init__(self, store: BlobStore, layer: Layer, make_dir: Callable[[], Path]) -> None:
        self._store = store
        self._layer = layer
        self._make_dir = make_dir
        self.result: Path | None = None

    def has(self, digest: str) -> bool:
        return False

    def ingest(self, desc: Descriptor, chunks: Iterable[bytes], what: str, *,
               vouched: bool = False) -> int:  # fmt: skip
        dest = self._make_dir()
        feed: queue.Queue[bytes | None] = queue.Queue(maxsize=QUEUE_CHUNKS)
        unpacked: list[str] = []
        failed: list[BaseException] = []

        def unpack() -> None:
            reader = _ChunkReader(feed)
            try:
                with timing.phase("unpack"):
                    comp = compression_of(self._layer.blob.media_type)
                    unpacked.append(unpack_layer(reader, comp, dest))
            except _Aborted:
                return
            except BaseException as exc:  # reported after the download: see _tee
                failed.append(exc)
            reader.drain()  # whatever is still queued: the download never blocks

        worker = threading.Thread(target=unpack, name="kiln-unpack-stream")
        worker.start()
        ended = False
        try:
            size = self._store.ingest(desc, _tee(chunks, feed, failed), what, vouched=vouched)
            feed.put(_END)
            ended = True
            worker.join()
        except BaseException:
            if not ended:
                feed.put(None)  # the unpack thread stops at the next read
            worker.join()
            shutil.rmtree(dest, ignore_errors=True)
            raise
        if failed:  # the blob is sound (stored, digest checked): the layer itself is bad
            shutil.rmtree(dest, ignore_errors=True)
            raise failed[0]
        diff_id = unpacked[0]
        if diff_id != self._layer.diff_id:
            shutil.rmtree(dest, ignore_errors=True)
            self._store.remove(desc.digest)  # fetched again next time
            raise CorruptBlobError(
                f"layer {desc.digest} is not the layer its image says",
                digest=desc.digest,
                why=f"its diff ID is {diff_id}, not {self._layer.diff_id}",
            )
        self._store.record_diff_id(desc.digest, diff_id)
        self.result = dest
        return size


def _tee(chunks: Iterable[bytes], feed: queue.Queue[bytes | None],
         failed: list[BaseException]) -> Iterator[bytes]:  # fmt: skip
    """*chunks* as they are, each also queued for the unpack thread while it is working
    (a failed unpack still lets the download finish, so a corrupt download is reported
    as such and a sound blob is kept)."""
    for chunk in chunks:
        if chunk and not failed:
            feed.put(chunk)
        yield chunk
