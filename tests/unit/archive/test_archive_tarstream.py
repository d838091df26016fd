"""The tar header encoder and the streaming tar reader, cross-checked with stdlib tarfile."""

from __future__ import annotations

import hashlib
import io
import tarfile

import pytest

from kiln.archive.tarstream import (
    DIR,
    END_OF_ARCHIVE,
    LINK,
    REG,
    SYMLINK,
    TarFormatError,
    TarHeader,
    TarReader,
    encode_header,
    padding,
)

LONG = "d" * 90 + "/" + "e" * 90 + "/" + "f" * 120


def _archive(*members: tuple[TarHeader, bytes]) -> bytes:
    out = b""
    for header, data in members:
        out += encode_header(header) + data + padding(len(data))
    return out + END_OF_ARCHIVE


def _read(blob: bytes) -> list[tuple[TarHeader, bytes]]:
    reader = TarReader(io.BytesIO(blob))
    out = []
    while (header := reader.next()) is not None:
        data = b""
        while chunk := reader.read(7):
            data += bytes(chunk)
        out.append((header, data))
    assert reader.finish() == "sha256:" + hashlib.sha256(blob).hexdigest()
    return out


HEADERS = [
    (TarHeader("plain", REG, 0o4755, 0, 0, 5, 1_700_000_000 * 10**9), b"hello"),
    (TarHeader("dir/", DIR, 0o1777, 1000, 1000, mtime_ns=10**9), b""),
    (TarHeader(LONG, REG, 0o600, size=3), b"abc"),
    (TarHeader("naïve-ünïcode", SYMLINK, 0o777, linkname="→" + "x" * 120), b""),
    (TarHeader("hard", LINK, 0o644, linkname=LONG), b""),
    (TarHeader("big-ids", REG, 0o644, uid=3_000_000_000, gid=2**21), b""),
    (TarHeader("frac", REG, 0o644, mtime_ns=1_234_567_890_123_456_789), b""),
    (
        TarHeader(
            "xattrs",
            REG,
            0o755,
            xattrs=(("security.capability", b"\x01\x00\x00\x02" + bytes(16)), ("user.k", b"v")),
        ),
        b"",
    ),
    (TarHeader(b"bad-\xff-utf8".decode("utf-8", "surrogateescape"), REG), b""),
]


def test_encode_then_read_round_trips_every_field() -> None:
    got = _read(_archive(*HEADERS))
    assert got == HEADERS


def test_stdlib_tarfile_reads_what_we_write() -> None:
    blob = _archive(*HEADERS)
    with tarfile.open(fileobj=io.BytesIO(blob), encoding="utf-8") as tf:
        members = tf.getmembers()
        assert [m.name for m in members] == [h.name.rstrip("/") for h, _ in HEADERS]
        plain = members[0]
        assert (plain.mode, plain.mtime, plain.uname, plain.gname) == (
            0o4755,
            1_700_000_000,
            "",
            "",
        )
        assert tf.extractfile(plain).read() == b"hello"  # type: ignore[union-attr]
        assert members[3].linkname == "→" + "x" * 120
        assert members[5].uid == 3_000_000_000
        assert members[5].gid == 2**21
        xattr = members[7].pax_headers["SCHILY.xattr.security.capability"]
        assert xattr.encode("utf-8", "surrogateescape") == b"\x01\x00\x00\x02" + bytes(16)


def test_encoding_is_deterministic_and_minimal() -> None:
    header = TarHeader("a/b", REG, 0o644, 0, 0, 0, 5 * 10**9)
    assert encode_header(header) == encode_header(header)
    assert len(encode_header(header)) == 512  # short ASCII names need no PAX header
    block = encode_header(header)
    assert block[257:265] == b"ustar\x0000"
    assert block[265:329] == bytes(64)  # empty uname/gname


def _stdlib_archive(fmt: int, *infos: tuple[tarfile.TarInfo, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for info, data in infos:
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _info(name: str, type_: bytes = tarfile.REGTYPE, **kw: object) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = type_
    for key, value in kw.items():
        setattr(info, key, value)
    return info


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT])
def test_reads_foreign_formats(fmt: int) -> None:
    long = "p" * 100 + "/" + "q" * 60  # USTAR holds it with the prefix field
    infos = [
        (_info(long, mode=0o640, uid=7, gid=8, mtime=12345), b"data"),
        (_info("lnk", tarfile.SYMTYPE, linkname="t" * 99), b""),
        (_info("sub", tarfile.DIRTYPE, mode=0o755), b""),
    ]
    if fmt != tarfile.USTAR_FORMAT:
        infos.append((_info("x" * 300, uid=2**30), b"long"))
    got = _read(_stdlib_archive(fmt, *infos))
    assert [h.name for h, _ in got][:3] == [long, "lnk", "sub/"]  # stdlib adds the slash
    first, data = got[0]
    assert (first.mode, first.uid, first.gid, first.mtime_ns, data) == (
        0o640,
        7,
        8,
        12345 * 10**9,
        b"data",
    )
    assert got[1][0].linkname == "t" * 99
    assert got[2][0].type == DIR
    if fmt != tarfile.USTAR_FORMAT:
        assert got[3][0].name == "x" * 300
        assert got[3][0].uid == 2**30


def test_base256_numbers_and_global_pax_headers() -> None:
    buf = io.BytesIO()
    with tarfile.open(
        fileobj=buf, mode="w", format=tarfile.PAX_FORMAT, pax_headers={"comment": "git"}
    ) as tf:
        tf.addfile(_info("f", size=0))
    blob = bytearray(buf.getvalue())
    got = _read(bytes(blob))
    assert [h.name for h, _ in got] == ["f"]

    gnu = bytearray(_stdlib_archive(tarfile.GNU_FORMAT, (_info("big", uid=2**40), b"")))
    assert gnu[108] & 0x80  # stdlib wrote the uid in base-256
    assert _read(bytes(gnu))[0][0].uid == 2**40


def test_v7_directory_by_trailing_slash() -> None:
    header = bytearray(encode_header(TarHeader("olddir/", REG)))
    header[156] = 0  # old type flag NUL
    header[148:156] = b"        "
    header[148:156] = b"%06o\x00 " % sum(header)
    got = _read(bytes(header) + END_OF_ARCHIVE)
    assert got[0][0].type == DIR


def test_header_only_types_carry_no_data_even_with_a_size() -> None:
    blob = _archive(
        (TarHeader("d/", DIR, size=0), b""),
        (TarHeader("after", REG, size=2), b"ok"),
    )
    got = _read(blob)
    assert got == [(TarHeader("d/", DIR, size=0), b""), (TarHeader("after", REG, size=2), b"ok")]


def test_unread_data_is_skipped() -> None:
    blob = _archive(
        (TarHeader("a", REG, size=1000), b"a" * 1000),
        (TarHeader("b", REG, size=1), b"b"),
    )
    reader = TarReader(io.BytesIO(blob))
    first = reader.next()
    assert first is not None and first.name == "a"
    header = reader.next()
    assert header is not None
    assert header.name == "b"
    assert bytes(reader.read(10)) == b"b"


def test_diff_id_covers_padding_after_the_end_marker() -> None:
    # stdlib pads archives to 10 KiB records; all of it is part of the diff ID.
    blob = _stdlib_archive(tarfile.PAX_FORMAT, (_info("f"), b"x"))
    assert len(blob) == 10240
    reader = TarReader(io.BytesIO(blob))
    while reader.next() is not None:
        pass
    assert reader.finish() == "sha256:" + hashlib.sha256(blob).hexdigest()


def test_bad_checksum_is_an_error() -> None:
    blob = bytearray(_archive((TarHeader("f", REG, size=1), b"x")))
    blob[0] ^= 0x01
    with pytest.raises(TarFormatError, match="checksum"):
        _read(bytes(blob))


def test_random_bytes_are_not_a_tar() -> None:
    with pytest.raises(TarFormatError):
        _read(bytes(range(256)) * 8)


@pytest.mark.parametrize("cut", [100, 600, 700])
def test_truncation_is_an_error(cut: int) -> None:
    blob = _archive((TarHeader("f", REG, size=300), b"y" * 300))
    with pytest.raises(TarFormatError):
        _read(blob[:cut])


def test_archive_without_end_marker_is_accepted() -> None:
    # Go's reader and ours accept a stream that stops at a member boundary.
    blob = _archive((TarHeader("f", REG, size=1), b"x"))[: -len(END_OF_ARCHIVE)]
    assert [h.name for h, _ in _read(blob)] == ["f"]


def test_zero_block_followed_by_data_is_an_error() -> None:
    member = encode_header(TarHeader("f", REG))
    with pytest.raises(TarFormatError):
        _read(bytes(512) + member + END_OF_ARCHIVE)


def test_malformed_pax_record_is_an_error() -> None:
    records = b"99 path=x\n"
    ext = bytearray(encode_header(TarHeader("PaxHeader", "x", size=len(records))))
    blob = bytes(ext) + records + padding(len(records)) + encode_header(TarHeader("f", REG))
    with pytest.raises(TarFormatError, match="PAX"):
        _read(blob + END_OF_ARCHIVE)


def test_sparse_members_are_refused() -> None:
    records = b"22 GNU.sparse.major=1\n"
    ext = encode_header(TarHeader("PaxHeader", "x", size=len(records)))
    blob = ext + records + padding(len(records)) + encode_header(TarHeader("f", REG))
    with pytest.raises(TarFormatError, match="sparse"):
        _read(blob + END_OF_ARCHIVE)
