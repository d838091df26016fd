"""The tar format, both ways: header encoding for the differ, a streaming reader for unpack.

Writing: POSIX ustar headers with PAX extended headers where ustar cannot hold a value
(long or non-ASCII names, large numbers, sub-second times) and for xattrs
(``SCHILY.xattr.<name>``, the key Go's archive/tar, GNU tar and BuildKit use). The bytes
depend only on the header values, never on the Python version: layer digests are stable.

Reading: ustar, GNU (``L``/``K`` long names, base-256 numbers), PAX local and global
headers, old v7 headers; sparse members are refused. Everything read is hashed, so the
caller gets the diff ID of the whole uncompressed stream, end-of-archive padding included.
A truncated stream, a bad checksum or a malformed PAX record is a :class:`TarFormatError`.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

from kiln.archive.compress import Readable

BLOCK = 512
READ_SIZE = 1 << 20
END_OF_ARCHIVE = bytes(2 * BLOCK)
_ZERO_BLOCK = bytes(BLOCK)

REG = "0"
LINK = "1"
SYMLINK = "2"
CHR = "3"
BLK = "4"
DIR = "5"
FIFO = "6"
CONTIG = "7"
PAX_LOCAL = "x"
PAX_GLOBAL = "g"
GNU_LONGNAME = "L"
GNU_LONGLINK = "K"
GNU_SPARSE = "S"

# Members that never carry data, whatever their size field says (Go and Python agree).
HEADER_ONLY = frozenset({LINK, SYMLINK, CHR, BLK, DIR, FIFO})

_USTAR_MAGIC = b"ustar\x0000"
_GNU_MAGIC = b"ustar  \x00"
_XATTR_KEY = "SCHILY.xattr."
_MAX_META = 1 << 20  # refuse PAX/GNU long-name data bigger than this


class TarFormatError(Exception):
    """The stream is not a well-formed tar archive (or uses an unsupported feature)."""


@dataclass(frozen=True, slots=True)
class TarHeader:
    name: str
    type: str
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    size: int = 0
    mtime_ns: int = 0
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0
    xattrs: tuple[tuple[str, bytes], ...] = ()


def padding(size: int) -> bytes:
    return bytes(-size % BLOCK)


# --- writing ---------------------------------------------------------------------------


def _octal(value: int, width: int) -> bytes:
    return b"%0*o\x00" % (width - 1, value)


def _fits(value: int, width: int) -> bool:
    return 0 <= value < 1 << (3 * (width - 1))


def _pax_record(key: bytes, value: bytes) -> bytes:
    body = b" " + key + b"=" + value + b"\n"
    size = len(body) + 1
    while len(str(size)) + len(body) != size:
        size = len(str(size)) + len(body)
    return str(size).encode() + body


def _format_time(ns: int) -> bytes:
    sec, frac = divmod(ns, 10**9)
    if not frac:
        return str(sec).encode()
    return f"{sec}.{frac:09d}".rstrip("0").encode()


def _ustar(
    name: bytes, type_: str, mode: int, uid: int, gid: int, size: int, mtime: int, link: bytes
) -> bytearray:
    return bytearray(
        name[:100].ljust(100, b"\x00")
        + _octal(mode, 8)
        + _octal(uid, 8)
        + _octal(gid, 8)
        + _octal(size, 12)
        + _octal(mtime, 12)
        + b"        "
        + type_.encode()
        + link[:100].ljust(100, b"\x00")
        + _USTAR_MAGIC
        + bytes(64)  # uname, gname: empty (numeric ids only)
    )


def _finish(block: bytearray, devmajor: int, devminor: int) -> bytes:
    block += _octal(devmajor, 8) + _octal(devminor, 8)
    block += bytes(BLOCK - len(block))  # prefix (unused: long names go to PAX) and pad
    block[148:156] = b"%06o\x00 " % sum(block)
    return bytes(block)


def encode_header(h: TarHeader) -> bytes:
    """The header block(s) for *h*: a PAX extended header first when one is needed."""
    name = os.fsencode(h.name)
    link = os.fsencode(h.linkname)
    pax: list[bytes] = []
    if len(name) > 100 or not name.isascii():
        pax.append(_pax_record(b"path", name))
    if len(link) > 100 or not link.isascii():
        pax.append(_pax_record(b"linkpath", link))
    uid, gid, size = h.uid, h.gid, h.size
    for key, value, width in ((b"uid", uid, 8), (b"gid", gid, 8), (b"size", size, 12)):
        if not _fits(value, width):
            pax.append(_pax_record(key, str(value).encode()))
    sec = h.mtime_ns // 10**9
    if h.mtime_ns % 10**9 or not _fits(sec, 12):
        pax.append(_pax_record(b"mtime", _format_time(h.mtime_ns)))
    for key_s, value_b in h.xattrs:
        pax.append(_pax_record(os.fsencode(_XATTR_KEY + key_s), value_b))

    out = b""
    if pax:
        records = b"".join(pax)
        ext = _ustar(b"PaxHeader", PAX_LOCAL, 0o644, 0, 0, len(records), 0, b"")
        out = _finish(ext, 0, 0) + records + padding(len(records))
    block = _ustar(
        name,
        h.type,
        h.mode & 0o7777,
        uid if _fits(uid, 8) else 0,
        gid if _fits(gid, 8) else 0,
        size if _fits(size, 12) else 0,
        sec if _fits(sec, 12) else 0,
        link,
    )
    return out + _finish(block, h.devmajor, h.devminor)


# --- reading ---------------------------------------------------------------------------


class _Input:
    """Buffered, hashing reader over the uncompressed stream."""

    def __init__(self, raw: Readable) -> None:
        self._raw = raw
        self._hash = hashlib.sha256()
        self._buf = b""
        self._pos = 0

    def _more(self) -> bool:
        chunk = self._raw.read(READ_SIZE)
        if not chunk:
            return False
        self._hash.update(chunk)
        self._buf = self._buf[self._pos :] + chunk if self._pos < len(self._buf) else chunk
        self._pos = 0
        return True

    def take(self, n: int) -> bytes:
        """Exactly *n* bytes (fewer only at the end of the stream)."""
        while len(self._buf) - self._pos < n and self._more():
            pass
        data = self._buf[self._pos : self._pos + n]
        self._pos += len(data)
        return data

    def take_upto(self, n: int) -> memoryview:
        """Between 1 and *n* bytes, without copying; empty only at the end of the stream."""
        if self._pos >= len(self._buf) and not self._more():
            return memoryview(b"")
        view = memoryview(self._buf)[self._pos : self._pos + n]
        self._pos += len(view)
        return view

    def drain(self) -> None:
        """Read (and hash) everything up to the end of the stream."""
        self._pos = len(self._buf)
        while self._more():
            self._pos = len(self._buf)

    @property
    def digest(self) -> str:
        return "sha256:" + self._hash.hexdigest()


def _cstr(field: bytes) -> bytes:
    end = field.find(b"\x00")
    return field if end < 0 else field[:end]


def _number(field: bytes) -> int:
    if field and field[0] & 0x80:  # GNU base-256
        raw = bytearray(field)
        negative = bool(raw[0] & 0x40)
        raw[0] &= 0x7F
        value = int.from_bytes(raw, "big")
        if negative:
            value -= 1 << (8 * len(raw) - 1)
        return value
    text = _cstr(field).strip(b" ")
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise TarFormatError(f"invalid number field {field!r}") from None


def _parse_pax(data: bytes) -> dict[str, bytes]:
    records: dict[str, bytes] = {}
    pos = 0
    while pos < len(data):
        if data[pos] == 0:  # trailing NULs (some writers pad the record area)
            break
        space = data.find(b" ", pos)
        try:
            length = int(data[pos:space])
        except ValueError:
            raise TarFormatError("malformed PAX record length") from None
        record = data[space + 1 : pos + length]
        if space < 0 or length <= 0 or pos + length > len(data) or not record.endswith(b"\n"):
            raise TarFormatError("malformed PAX record")
        key, eq, value = record[:-1].partition(b"=")
        if not eq:
            raise TarFormatError("malformed PAX record (no '=')")
        records[key.decode("utf-8", "surrogateescape")] = value
        pos += length
    return records


def _pax_time(value: bytes) -> int:
    text = value.decode("ascii", "replace")
    sec, _, frac = text.partition(".")
    try:
        ns = int(sec) * 10**9
        digits = (frac + "000000000")[:9]
        ns += (-1 if sec.startswith("-") else 1) * int(digits or "0")
    except ValueError:
        raise TarFormatError(f"invalid PAX time {text!r}") from None
    return ns


class TarReader:
    """Iterate the members of a tar stream; read each member's data as it comes."""

    def __init__(self, raw: Readable) -> None:
        self._in = _Input(raw)
        self._left = 0  # unread data of the current member
        self._pad = 0
        self._globals: dict[str, bytes] = {}

    def _skip(self, n: int) -> None:
        while n > 0:
            got = len(self._in.take_upto(n))
            if not got:
                raise TarFormatError("unexpected end of archive inside a member")
            n -= got

    def _meta_data(self, size: int) -> bytes:
        if size > _MAX_META:
            raise TarFormatError(f"extended header of {size} bytes is too large")
        data = self._in.take(size)
        if len(data) != size:
            raise TarFormatError("unexpected end of archive inside an extended header")
        self._skip(-size % BLOCK)
        return data

    def read(self, n: int) -> memoryview:
        """Up to *n* bytes of the current member's data; empty once it is all read."""
        if self._left <= 0:
            return memoryview(b"")
        view = self._in.take_upto(min(n, self._left))
        if not view:
            raise TarFormatError("unexpected end of archive inside a member")
        self._left -= len(view)
        return view

    def next(self) -> TarHeader | None:
        """The next member's header (skipping unread data), or ``None`` at the end."""
        self._skip(self._left + self._pad)
        self._left = self._pad = 0
        local: dict[str, bytes] = {}
        long_name: bytes | None = None
        long_link: bytes | None = None
        while True:
            block = self._in.take(BLOCK)
            if not block or block == _ZERO_BLOCK:
                if local or long_name is not None or long_link is not None:
                    raise TarFormatError("archive ends after an extended header")
                second = self._in.take(BLOCK) if block else b""
                if second and second != _ZERO_BLOCK:
                    raise TarFormatError("a zero block followed by data (corrupt archive)")
                return None
            if len(block) < BLOCK:
                raise TarFormatError("unexpected end of archive inside a header")
            _verify_checksum(block)
            type_ = chr(block[156]) if block[156] else REG
            size = _number(block[124:136])
            if type_ == PAX_LOCAL:
                local.update(_parse_pax(self._meta_data(size)))
            elif type_ == PAX_GLOBAL:
                self._globals.update(_parse_pax(self._meta_data(size)))
            elif type_ == GNU_LONGNAME:
                long_name = _cstr(self._meta_data(size))
            elif type_ == GNU_LONGLINK:
                long_link = _cstr(self._meta_data(size))
            elif type_ == GNU_SPARSE:
                raise TarFormatError("sparse tar members are not supported")
            else:
                break
        pax = {**self._globals, **local}
        if any(key.startswith("GNU.sparse.") for key in pax):
            raise TarFormatError("sparse tar members are not supported")

        name = _cstr(block[0:100])
        if block[257:265] == _USTAR_MAGIC and block[345]:
            name = _cstr(block[345:500]) + b"/" + name
        if long_name is not None:
            name = long_name
        name = pax.get("path", name) or name
        link = long_link if long_link is not None else _cstr(block[157:257])
        link = pax.get("linkpath", link) or link
        if block[156] == 0 and name.endswith(b"/"):
            type_ = DIR  # a v7 directory
        if type_ == CONTIG:
            type_ = REG
        size = _int_pax(pax, "size", size)
        mtime_ns = _pax_time(pax["mtime"]) if "mtime" in pax else _number(block[136:148]) * 10**9
        xattrs = tuple(
            (key[len(_XATTR_KEY) :], value)
            for key, value in pax.items()
            if key.startswith(_XATTR_KEY)
        )
        header = TarHeader(
            name=os.fsdecode(name),
            type=type_,
            mode=_number(block[100:108]) & 0o7777,
            uid=_int_pax(pax, "uid", _number(block[108:116])),
            gid=_int_pax(pax, "gid", _number(block[116:124])),
            size=0 if type_ in HEADER_ONLY else size,
            mtime_ns=mtime_ns,
            linkname=os.fsdecode(link),
            devmajor=_number(block[329:337]) if type_ in (CHR, BLK) else 0,
            devminor=_number(block[337:345]) if type_ in (CHR, BLK) else 0,
            xattrs=xattrs,
        )
        if header.size < 0 or header.uid < 0 or header.gid < 0:
            raise TarFormatError(f"negative size or owner in the header of {header.name!r}")
        self._left = header.size
        self._pad = -header.size % BLOCK
        return header

    def finish(self) -> str:
        """Read the rest of the stream (padding after the end marker) and return its digest.

        Like Go's archive/tar, bytes after the two zero blocks are not interpreted; they
        are part of the diff ID all the same.
        """
        self._skip(self._left + self._pad)
        self._left = self._pad = 0
        self._in.drain()
        return self._in.digest


def _int_pax(pax: dict[str, bytes], key: str, default: int) -> int:
    if key not in pax:
        return default
    try:
        return int(pax[key])
    except ValueError:
        raise TarFormatError(f"invalid PAX {key} {pax[key]!r}") from None


def _verify_checksum(block: bytes) -> None:
    stored = _number(block[148:156])
    unsigned = sum(block[:148]) + 8 * 0x20 + sum(block[156:])
    if stored == unsigned:
        return
    signed = unsigned - 256 * sum(1 for b in block[:148] + block[156:] if b >= 0x80)
    if stored != signed:
        raise TarFormatError("tar header checksum mismatch (corrupt or not a tar archive)")
