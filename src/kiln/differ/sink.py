"""Where layer tar bytes go: SHA-256 (the diff ID), then compressor, then the blob writer.

The caller's thread walks the tree, reads files and hashes; a worker thread compresses
and writes the blob (ISA-L, zstandard and file writes release the GIL), so the two halves
overlap. The queue between them is bounded: memory stays a few MiB whatever the layer's
size. Small writes (tar headers, small files) are batched into ~1 MiB chunks first, so the
compressor is not called per header.
"""

from __future__ import annotations

import hashlib
import queue
import threading
import time
from types import TracebackType

from kiln import timing
from kiln.archive.compress import Compressor
from kiln.content import BlobWriter

FLUSH_AT = 1 << 20  # batch small writes up to this size
DIRECT = 1 << 16  # writes at least this big are passed on as they are
QUEUE_CHUNKS = 8  # chunks in flight between the threads (≈ 8 MiB at most)

Chunk = bytes | bytearray


class LayerSink:
    """Use as a context manager; :meth:`close` returns the diff ID."""

    def __init__(self, comp: Compressor, out: BlobWriter) -> None:
        self._comp = comp
        self._out = out
        self._hash = hashlib.sha256()
        self._buf = bytearray()
        self._queue: queue.Queue[Chunk | None] = queue.Queue(maxsize=QUEUE_CHUNKS)
        self._error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._work, name="kiln-layer-compress")
        self._thread.start()

    def __enter__(self) -> LayerSink:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop()

    def _work(self) -> None:
        busy = 0.0  # compressing and writing, not waiting for chunks
        try:
            while (chunk := self._queue.get()) is not None:
                started = time.perf_counter()
                out = self._comp.compress(chunk)
                if out:
                    self._out.write(out)
                busy += time.perf_counter() - started
            started = time.perf_counter()
            tail = self._comp.flush()
            if tail:
                self._out.write(tail)
            busy += time.perf_counter() - started
            timing.add("compress", busy)
        except BaseException as exc:  # handed to the caller's thread
            self._error = exc
            while self._queue.get() is not None:  # keep the producer from blocking
                pass

    def _put(self, chunk: Chunk) -> None:
        if self._error is not None:
            raise self._error
        self._hash.update(chunk)
        self._queue.put(chunk)

    def write(self, data: bytes | bytearray) -> None:
        """Add tar bytes. *data* must not be modified afterwards (it may be queued)."""
        if len(data) >= DIRECT:
            self._flush()
            self._put(data)
            return
        self._buf += data
        if len(self._buf) >= FLUSH_AT:
            self._flush()

    def _flush(self) -> None:
        if self._buf:
            chunk, self._buf = self._buf, bytearray()
            self._put(chunk)

    def _stop(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            self._thread.join()

    def close(self) -> str:
        """Finish the compressed stream and wait for it to be written; returns the diff ID."""
        self._flush()
        self._stop()
        if self._error is not None:
            raise self._error
        return "sha256:" + self._hash.hexdigest()
