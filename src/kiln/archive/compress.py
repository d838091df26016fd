"""Layer compression: streaming compressors and decompressing readers.

Compression decides how long an export takes, so kiln uses the fast implementations:
ISA-L (``isal``) for gzip and ``zstandard`` for zstd; both write standard streams any
consumer reads. Measured on a 300 MB mixed tar (binaries, libraries, docs), one core:

    ============  =====  ========  ==================================
    codec         ratio  MB/s      note
    ============  =====  ========  ==================================
    ISA-L 1       0.398  ~305      kiln's gzip default
    ISA-L 3       0.388  ~240
    zlib 1        0.384  ~58
    zlib 6        0.349  ~22       BuildKit's gzip default (Go level 6)
    zstd 3        0.337  ~175      kiln's and BuildKit's zstd default
    ============  =====  ========  ==================================

gzip levels follow BuildKit's 0-9 scale: with no level, ISA-L level 1 (blobs ~14 % larger
than BuildKit's default, made 10x faster — on a CI runner the upload of those extra bytes
costs far less than zlib's time); 1-3 use ISA-L's levels 1-3; 4-9 ask for smaller blobs
at any price and use zlib at that level; 0 stores without compressing. zstd levels are
zstd's own (1-22, default 3, as BuildKit's default encoder), frames carry a checksum.
"""

from __future__ import annotations

import gzip
import hashlib
import zlib
from pathlib import Path
from typing import IO, Protocol, cast

import zstandard
from isal import igzip, isal_zlib

from kiln.errors import CorruptBlobError, UsageError
from kiln.oci import compression_of

COMPRESSIONS = ("gzip", "zstd", "uncompressed")
DEFAULT_GZIP_LEVEL = 1  # ISA-L level 1; see the module docstring
DEFAULT_ZSTD_LEVEL = 3
READ_SIZE = 1 << 20

_GZIP_WBITS = 31  # deflate with a gzip header and trailer
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


# What reading a corrupt compressed stream raises (gzip.BadGzipFile is an OSError).
DECOMPRESSION_ERRORS: tuple[type[Exception], ...] = (
    EOFError,
    gzip.BadGzipFile,
    cast(type[Exception], isal_zlib.error),
    zstandard.ZstdError,
)


class Compressor(Protocol):
    def compress(self, data: bytes | bytearray | memoryview, /) -> bytes: ...

    def flush(self) -> bytes: ...


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class _Identity:
    """The "compressor" of uncompressed layers."""

    def compress(self, data: bytes | bytearray | memoryview, /) -> bytes:
        return bytes(data)

    def flush(self) -> bytes:
        return b""


class _ZstdCompressor:
    def __init__(self, level: int) -> None:
        self._obj = zstandard.ZstdCompressor(level=level, write_checksum=True).compressobj()

    def compress(self, data: bytes | bytearray | memoryview, /) -> bytes:
        return self._obj.compress(data)

    def flush(self) -> bytes:
        return self._obj.flush()


def check_compression(compression: str, level: int | None = None) -> None:
    """Validate a compression name and level (raises :class:`UsageError`)."""
    if compression not in COMPRESSIONS:
        raise UsageError(
            f"unknown compression {compression!r}",
            hint="use one of: " + ", ".join(COMPRESSIONS),
        )
    if level is None or compression == "uncompressed":
        return
    low, high = (0, 9) if compression == "gzip" else (1, 22)
    if not low <= level <= high:
        raise UsageError(
            f"invalid compression-level {level} for {compression}",
            hint=f"{compression} levels are {low}-{high}",
        )


def compressor(compression: str, level: int | None = None) -> Compressor:
    """A fresh streaming compressor for *compression* (``gzip``, ``zstd``, ``uncompressed``)."""
    check_compression(compression, level)
    if compression == "uncompressed":
        return _Identity()
    if compression == "zstd":
        return _ZstdCompressor(DEFAULT_ZSTD_LEVEL if level is None else level)
    if level is None:
        level = DEFAULT_GZIP_LEVEL
    if 1 <= level <= 3:
        return cast(Compressor, isal_zlib.compressobj(level, isal_zlib.DEFLATED, _GZIP_WBITS))
    return zlib.compressobj(level, zlib.DEFLATED, _GZIP_WBITS)


class _Prefixed:
    """A reader that first returns *head* (bytes already read to sniff) and then *raw*."""

    def __init__(self, head: bytes, raw: Readable) -> None:
        self._head = head
        self._raw = raw

    def read(self, size: int = -1, /) -> bytes:
        if not self._head:
            return self._raw.read(size)
        if size < 0:
            data, self._head = self._head + self._raw.read(), b""
            return data
        data, self._head = self._head[:size], self._head[size:]
        return data

    def readinto(self, buffer: bytearray | memoryview, /) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def detect(head: bytes) -> str:
    """The compression of a stream from its first bytes (as containerd does)."""
    if head.startswith(_GZIP_MAGIC):
        return "gzip"
    if head.startswith(_ZSTD_MAGIC):
        return "zstd"
    return "uncompressed"


def decompressing_reader(fileobj: Readable, compression: str) -> Readable:
    """Stream the uncompressed bytes of *fileobj*.

    *compression* is a compression name or a layer media type; it is only a hint: the
    stream's magic bytes decide (a ``tar+gzip`` blob that is really a plain tar is read
    correctly, like containerd and Docker do). Multi-member gzip and multi-frame zstd
    streams are read to their end.
    """
    if "/" in compression:
        compression = compression_of(compression)
    elif compression not in COMPRESSIONS:
        raise UsageError(f"unknown compression {compression!r}")
    head = b""
    while len(head) < 4:
        more = fileobj.read(4 - len(head))
        if not more:
            break
        head += more
    raw = _Prefixed(head, fileobj)
    actual = detect(head)
    if actual == "gzip":
        return cast(Readable, igzip.GzipFile(fileobj=raw, mode="rb"))  # type: ignore[no-untyped-call]
    if actual == "zstd":
        return cast(
            Readable,
            zstandard.ZstdDecompressor().stream_reader(
                cast(IO[bytes], raw), read_size=READ_SIZE, read_across_frames=True
            ),
        )
    return raw


def diff_id_of(path: Path, media_type: str) -> str:
    """The diff ID of the layer blob at *path*: the SHA-256 of its uncompressed bytes.
    A blob that cannot be decompressed is a :class:`~kiln.errors.CorruptBlobError`."""
    digest = hashlib.sha256()
    try:
        with path.open("rb") as raw:
            reader = decompressing_reader(raw, media_type)
            while chunk := reader.read(1 << 20):
                digest.update(chunk)
    except DECOMPRESSION_ERRORS as exc:
        blob = "sha256:" + path.name
        raise CorruptBlobError(f"layer {blob} cannot be decompressed", digest=blob,
                               why=str(exc)) from exc  # fmt: skip
    return "sha256:" + digest.hexdigest()
