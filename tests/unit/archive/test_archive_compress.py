"""Layer compressors and decompressing readers, checked against stdlib/zstd decoders."""

from __future__ import annotations

import gzip
import io
import os

import pytest
import zstandard

from kiln.archive.compress import (
    DECOMPRESSION_ERRORS,
    READ_SIZE,
    check_compression,
    compressor,
    decompressing_reader,
)
from kiln.errors import UsageError
from kiln.oci import OCI_LAYER_GZIP, OCI_LAYER_TAR, OCI_LAYER_ZSTD

# Compressible text plus an incompressible tail, fed in uneven chunks.
DATA = b"".join(b"line %d of a layer\n" % i for i in range(50_000)) + os.urandom(300_000)


def _compress(compression: str, level: int | None = None, data: bytes = DATA) -> bytes:
    comp = compressor(compression, level)
    out = []
    for start in range(0, len(data), 77_777):
        out.append(comp.compress(data[start : start + 77_777]))
    out.append(comp.flush())
    return b"".join(out)


def _read_all(reader: object) -> bytes:
    chunks = []
    while chunk := reader.read(65_536):  # type: ignore[attr-defined]
        chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize("level", [None, 0, 1, 3, 4, 9])
def test_gzip_output_is_standard_gzip_at_every_level(level: int | None) -> None:
    blob = _compress("gzip", level)
    assert gzip.decompress(blob) == DATA
    assert _read_all(decompressing_reader(io.BytesIO(blob), "gzip")) == DATA


def test_gzip_levels_trade_speed_for_size() -> None:
    stored = len(_compress("gzip", 0))
    default = len(_compress("gzip"))
    best = len(_compress("gzip", 9))
    assert stored > len(DATA)  # level 0 stores
    assert best < default < stored


def test_default_gzip_header_has_no_timestamp() -> None:
    blob = _compress("gzip")
    assert blob[:2] == b"\x1f\x8b"
    assert blob[4:8] == b"\x00\x00\x00\x00"  # MTIME: reproducible output
    assert _compress("gzip") == blob


@pytest.mark.parametrize("level", [None, 1, 9])
def test_zstd_round_trip_with_checksum(level: int | None) -> None:
    blob = _compress("zstd", level)
    params = zstandard.get_frame_parameters(blob)
    assert params.has_checksum
    assert zstandard.ZstdDecompressor().decompressobj().decompress(blob) == DATA
    assert _read_all(decompressing_reader(io.BytesIO(blob), "zstd")) == DATA


def test_uncompressed_passes_bytes_through() -> None:
    assert _compress("uncompressed") == DATA
    assert _read_all(decompressing_reader(io.BytesIO(DATA), "uncompressed")) == DATA


@pytest.mark.parametrize(
    ("media_type", "compression"),
    [(OCI_LAYER_GZIP, "gzip"), (OCI_LAYER_ZSTD, "zstd"), (OCI_LAYER_TAR, "uncompressed")],
)
def test_reader_accepts_media_types(media_type: str, compression: str) -> None:
    blob = _compress(compression)
    assert _read_all(decompressing_reader(io.BytesIO(blob), media_type)) == DATA


def test_reader_trusts_magic_bytes_over_the_hint() -> None:
    # A "tar+gzip" blob that is really plain, and a gzip blob labelled uncompressed.
    assert _read_all(decompressing_reader(io.BytesIO(DATA), "gzip")) == DATA
    blob = _compress("gzip")
    assert _read_all(decompressing_reader(io.BytesIO(blob), "uncompressed")) == DATA


def test_reader_reads_every_gzip_member_and_zstd_frame() -> None:
    half = len(DATA) // 2
    gz = gzip.compress(DATA[:half]) + _compress("gzip", data=DATA[half:])
    assert _read_all(decompressing_reader(io.BytesIO(gz), "gzip")) == DATA
    zc = zstandard.ZstdCompressor()
    zst = zc.compress(DATA[:half]) + zc.compress(DATA[half:])
    assert _read_all(decompressing_reader(io.BytesIO(zst), "zstd")) == DATA


class _RecordingSource:
    """A blob source that records every read asked of it and what it returned."""

    def __init__(self, data: bytes) -> None:
        self._raw = io.BytesIO(data)
        self.asked: list[int | None] = []
        self.returned: list[int] = []

    def read(self, size: int | None = -1, /) -> bytes:
        data = self._raw.read(size)
        self.asked.append(size)
        self.returned.append(len(data))
        return data

    def readinto(self, buffer: bytearray | memoryview, /) -> int:
        n = self._raw.readinto(buffer)
        self.asked.append(len(buffer))
        self.returned.append(n)
        return n


# Far larger than any one read may be: a reader that slurps the blob cannot pass.
BIG = os.urandom(4 * READ_SIZE)


@pytest.mark.parametrize("compression", ["gzip", "zstd", "uncompressed"])
def test_reader_streams_in_bounded_reads(compression: str) -> None:
    blob = _compress(compression, data=BIG)
    assert len(blob) > 3 * READ_SIZE  # random data does not compress
    source = _RecordingSource(blob)
    reader = decompressing_reader(source, compression)
    first = reader.read(1000)
    assert 0 < len(first) <= 1000 and BIG.startswith(first)
    # the first bytes out need at most one bounded read after the 4 sniffed bytes
    assert sum(source.returned) <= 4 + READ_SIZE
    out = [first]
    while chunk := reader.read(65_536):
        assert len(chunk) <= 65_536
        out.append(chunk)
    assert b"".join(out) == BIG
    # never "read everything" (-1/None), never more than READ_SIZE at once
    assert all(size is not None and 0 < size <= READ_SIZE for size in source.asked), source.asked
    assert max(source.returned) <= READ_SIZE
    assert sum(source.returned) == len(blob)  # and the whole blob, exactly once


def test_reader_handles_tiny_streams() -> None:
    assert _read_all(decompressing_reader(io.BytesIO(b""), "gzip")) == b""
    assert _read_all(decompressing_reader(io.BytesIO(b"ab"), "uncompressed")) == b"ab"


def test_truncated_gzip_raises() -> None:
    blob = _compress("gzip")
    with pytest.raises(DECOMPRESSION_ERRORS):
        _read_all(decompressing_reader(io.BytesIO(blob[: len(blob) // 2]), "gzip"))


def test_truncated_zstd_reads_short() -> None:
    # zstandard's stream reader ends quietly at a cut; the tar reader and the diff ID
    # catch it (see the unpack tests), here it must at least not invent data.
    blob = _compress("zstd")
    got = _read_all(decompressing_reader(io.BytesIO(blob[: len(blob) // 2]), "zstd"))
    assert len(got) < len(DATA)
    assert DATA.startswith(got)


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_corrupt_streams_raise_decompression_errors(compression: str) -> None:
    blob = bytearray(_compress(compression))
    blob[40:60] = bytes(20)
    with pytest.raises(DECOMPRESSION_ERRORS):
        _read_all(decompressing_reader(io.BytesIO(bytes(blob)), compression))


def test_gzip_crc_mismatch_is_detected() -> None:
    blob = bytearray(gzip.compress(b"hello world"))
    blob[-8] ^= 0xFF  # CRC32 in the trailer
    with pytest.raises(DECOMPRESSION_ERRORS):
        _read_all(decompressing_reader(io.BytesIO(bytes(blob)), "gzip"))


@pytest.mark.parametrize(
    ("compression", "level", "needle"),
    [
        ("brotli", None, "unknown compression 'brotli'"),
        ("gzip", 10, "invalid compression-level 10 for gzip"),
        ("gzip", -1, "invalid compression-level -1 for gzip"),
        ("zstd", 0, "invalid compression-level 0 for zstd"),
        ("zstd", 23, "invalid compression-level 23 for zstd"),
    ],
)
def test_bad_compression_or_level_is_a_usage_error(
    compression: str, level: int | None, needle: str
) -> None:
    with pytest.raises(UsageError, match=needle) as info:
        check_compression(compression, level)
    assert info.value.hint  # the valid names or levels
    with pytest.raises(UsageError, match=needle):
        compressor(compression, level)


def test_unknown_compression_hint_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="unknown compression 'lz4'"):
        decompressing_reader(io.BytesIO(DATA), "lz4")
