"""Filesystem storage under one root directory.

Layout (every name a server-chosen blob name or a hash, never client input)::

    uploads/<blob>/data             upload data, written at offsets (v1 chunks, Put Blob)
    uploads/<blob>/blocks/<sha256>  staged Azure blocks, one file each
    entries/<ab>/<blob>             committed entries

Sealing fsyncs the data, renames it into ``entries/`` and fsyncs the directory, so a
committed entry's bytes are durable before its metadata row says it exists. File I/O runs
in worker threads, one buffer (1 MiB) at a time.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import anyio.to_thread

from kiln.gha.server.storage.base import (
    BLOB_NAME,
    BUFFER,
    BlobReader,
    SizeMismatch,
    Storage,
    StorageError,
    Stored,
    block_name,
    check_blob_name,
)
from kiln.state import fsync_dir


def _pwrite_all(fd: int, data: bytes | bytearray, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n
    view.release()


def _copy_into(dst_fd: int, src: Path, offset: int) -> int:
    """Append file *src* at *offset* of *dst_fd*, in the kernel where it can."""
    copied = 0
    with open(src, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        while copied < size:
            try:
                n = os.copy_file_range(
                    fh.fileno(),
                    dst_fd,
                    size - copied,
                    offset_src=copied,
                    offset_dst=offset + copied,
                )
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                    raise
                n = 0
            if n == 0:  # no kernel copy here: fall back to read/write
                data = os.pread(fh.fileno(), min(BUFFER, size - copied), copied)
                if not data:
                    break
                _pwrite_all(dst_fd, data, offset + copied)
                n = len(data)
            copied += n
    return copied


class _FileReader(BlobReader):
    def __init__(self, fd: int, size: int) -> None:
        self._fd = fd
        self.size = size

    async def chunks(self, start: int, length: int) -> AsyncIterator[bytes]:
        pos, end = start, start + length
        while pos < end:
            data = await anyio.to_thread.run_sync(os.pread, self._fd, min(BUFFER, end - pos), pos)
            if not data:
                raise StorageError("entry shorter than its recorded size")
            pos += len(data)
            yield data

    async def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)


class FilesystemStorage(Storage):
    def __init__(self, root: Path) -> None:
        self.root = root
        self._uploads = root / "uploads"
        self._entries = root / "entries"
        self._uploads.mkdir(parents=True, exist_ok=True)
        self._entries.mkdir(parents=True, exist_ok=True)

    # --- paths -------------------------------------------------------------------------
    def _upload_dir(self, blob: str) -> Path:
        return self._uploads / check_blob_name(blob)

    def _data(self, blob: str) -> Path:
        return self._upload_dir(blob) / "data"

    def _block(self, blob: str, block_id: str) -> Path:
        return self._upload_dir(blob) / "blocks" / block_name(block_id)

    def entry_path(self, blob: str) -> Path:
        check_blob_name(blob)
        return self._entries / blob[:2] / blob

    # --- uploads -----------------------------------------------------------------------
    async def _stream_to(
        self, path: Path, offset: int, body: AsyncIterator[bytes], *, truncate: bool
    ) -> int:
        def open_fd() -> int:
            path.parent.mkdir(parents=True, exist_ok=True)
            flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_TRUNC if truncate else 0)
            return os.open(path, flags, 0o600)

        fd = await anyio.to_thread.run_sync(open_fd)
        written = 0
        buf = bytearray()
        try:
            async for piece in body:
                buf += piece
                if len(buf) >= BUFFER:
                    await anyio.to_thread.run_sync(_pwrite_all, fd, buf, offset + written)
                    written += len(buf)
                    buf = bytearray()
            if buf:
                await anyio.to_thread.run_sync(_pwrite_all, fd, buf, offset + written)
                written += len(buf)
        finally:
            os.close(fd)
        return written

    async def write_at(self, blob: str, offset: int, body: AsyncIterator[bytes]) -> int:
        return await self._stream_to(self._data(blob), offset, body, truncate=False)

    async def write_whole(self, blob: str, body: AsyncIterator[bytes]) -> int:
        return await self._stream_to(self._data(blob), 0, body, truncate=True)

    async def write_block(self, blob: str, block_id: str, body: AsyncIterator[bytes]) -> int:
        return await self._stream_to(self._block(blob, block_id), 0, body, truncate=True)

    async def assemble(self, blob: str, block_ids: Sequence[str]) -> int:
        data = self._data(blob)
        blocks = [self._block(blob, b) for b in block_ids]

        def run() -> int:
            data.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(data, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                size = 0
                for block in blocks:
                    try:
                        size += _copy_into(fd, block, size)
                    except FileNotFoundError as exc:
                        raise StorageError(f"staged block missing: {block.name}") from exc
            finally:
                os.close(fd)
            shutil.rmtree(data.parent / "blocks", ignore_errors=True)
            return size

        return await anyio.to_thread.run_sync(run)

    async def seal(self, blob: str, size: int) -> None:
        data = self._data(blob)
        final = self.entry_path(blob)

        def run() -> None:
            if size == 0 and not data.exists():
                data.parent.mkdir(parents=True, exist_ok=True)
                data.touch(mode=0o600)
            try:
                fd = os.open(data, os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError as exc:
                raise SizeMismatch("no data was uploaded") from exc
            try:
                actual = os.fstat(fd).st_size
                if actual < size:
                    raise SizeMismatch(f"uploaded {actual} bytes, expected {size}")
                if actual > size:  # bytes of a refused, oversized write past the end
                    os.ftruncate(fd, size)
                os.fsync(fd)
            finally:
                os.close(fd)
            created = not final.parent.exists()
            final.parent.mkdir(parents=True, exist_ok=True)
            if created:
                fsync_dir(self._entries)
            os.replace(data, final)
            fsync_dir(final.parent)
            shutil.rmtree(data.parent, ignore_errors=True)

        await anyio.to_thread.run_sync(run)

    # --- committed entries -------------------------------------------------------------
    async def open(self, blob: str) -> BlobReader | None:
        path = self.entry_path(blob)

        def run() -> BlobReader | None:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                return None
            return _FileReader(fd, os.fstat(fd).st_size)

        return await anyio.to_thread.run_sync(run)

    # --- maintenance -------------------------------------------------------------------
    def delete(self, blob: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.entry_path(blob).unlink()
        self.discard_upload(blob)

    def discard_upload(self, blob: str) -> None:
        shutil.rmtree(self._upload_dir(blob), ignore_errors=True)

    def stored(self) -> Iterator[Stored]:
        for shard in sorted(self._entries.iterdir()):
            if not shard.is_dir():
                continue
            for path in shard.iterdir():
                if BLOB_NAME.match(path.name):
                    with contextlib.suppress(FileNotFoundError):
                        yield Stored(path.name, path.stat().st_mtime)

    def uploads(self) -> Iterator[Stored]:
        for path in self._uploads.iterdir():
            if BLOB_NAME.match(path.name):
                with contextlib.suppress(FileNotFoundError):
                    yield Stored(path.name, path.stat().st_mtime)
