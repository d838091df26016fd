"""What an upload reads from — a file (streamed, never read whole) or bytes — and the
pool that sends its chunks in parallel."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from kiln.errors import CacheError

PIECE = 1 << 20  # what one read (and one write to the socket) handles


@dataclass(frozen=True, slots=True)
class Source:
    size: int
    path: Path | None = None
    data: bytes | None = None

    @classmethod
    def of(cls, source: Path | bytes) -> Source:
        if isinstance(source, bytes | bytearray | memoryview):
            data = bytes(source)
            return cls(len(data), data=data)
        path = Path(source)
        try:
            st = path.stat()
        except OSError as exc:
            raise CacheError(f"cannot read {path} to upload it", why=str(exc)) from exc
        if not path.is_file():
            raise CacheError(f"cannot upload {path}: not a regular file")
        return cls(st.st_size, path=path)

    def ranges(self, chunk_size: int) -> list[tuple[int, int]]:
        """``(start, length)`` of each chunk, in order (none for an empty source)."""
        step = max(1, chunk_size)
        return [(s, min(step, self.size - s)) for s in range(0, self.size, step)]

    def reader(
        self, start: int, length: int, counted: Callable[[int], None]
    ) -> Callable[[], Iterator[bytes]]:
        """A factory of iterators over bytes ``[start, start + length)``, reporting each
        piece to *counted* (bytes sent); each call starts afresh, so retries can resend."""

        def from_bytes() -> Iterator[bytes]:
            assert self.data is not None
            view = memoryview(self.data)
            for at in range(start, start + length, PIECE):
                piece = bytes(view[at : min(at + PIECE, start + length)])
                counted(len(piece))
                yield piece

        def from_file() -> Iterator[bytes]:
            assert self.path is not None
            try:
                fh = open(self.path, "rb")  # noqa: SIM115 - closed below, across yields
            except OSError as exc:
                raise CacheError(f"cannot read {self.path} to upload it", why=str(exc)) from exc
            with fh:
                fh.seek(start, os.SEEK_SET)
                left = length
                while left:
                    piece = fh.read(min(PIECE, left))
                    if not piece:
                        raise CacheError(f"{self.path} shrank while it was being uploaded")
                    left -= len(piece)
                    counted(len(piece))
                    yield piece

        return from_bytes if self.data is not None else from_file


def run_parallel(tasks: Sequence[Callable[[], None]], parallel: int) -> None:
    """Run *tasks*, up to *parallel* at once; the first failure cancels the ones not yet
    started and is raised once the running ones have finished."""
    if parallel <= 1 or len(tasks) <= 1:
        for task in tasks:
            task()
        return
    failed = threading.Event()

    def guarded(task: Callable[[], None]) -> None:
        if not failed.is_set():
            try:
                task()
            except BaseException:
                failed.set()
                raise

    with ThreadPoolExecutor(
        max_workers=min(parallel, len(tasks)), thread_name_prefix="kiln-gha-upload"
    ) as pool:
        futures: list[Future[None]] = [pool.submit(guarded, t) for t in tasks]
        wait(futures, return_when=FIRST_EXCEPTION)
        for future in futures:
            future.cancel()
    for future in futures:
        if not future.cancelled():
            exc = future.exception()
            if exc is not None:
                raise exc
