"""EROFS images: the kernel's read-only filesystem, written from a tree of inodes.

Only the core on-disk format is used (no compression, 4 KiB blocks, extended 64-byte
inodes, inline xattrs), so any kernel with EROFS reads it. The layout suits writing while
a layer is read, in one pass:

- block 0: the superblock, at byte 1024;
- from block 1: file contents, each from a block boundary, in the order they arrive
  (:meth:`ImageWriter.add_file`); a replaced file's blocks stay unused;
- then the metadata area: one inode per file, in 32-byte slots, its xattrs and a symlink's
  target right after it and never across a block boundary; the root comes first, at nid 1
  (the superblock holds it in 16 bits; nid 0 would be inode number 0);
- then the directory blocks (and the targets of symlinks too long to sit inline).
"""

from __future__ import annotations

import os
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO

BLOCK = 4096
_BLOCK_BITS = 12
_SUPERBLOCK_OFFSET = 1024
_MAGIC = 0xE0F5E1E2
_SLOT = 32
_INODE = struct.Struct("<HHHHQIIIIqII16x")  # erofs_inode_extended, 64 bytes
_DIRENT = struct.Struct("<QHBB")  # erofs_dirent, 12 bytes
_XATTR_ENTRY = struct.Struct("<BBH")
_XATTR_HEADER = 12
_SUPERBLOCK = struct.Struct("<IIIBBHQQIIII16s16sI")
_EXTENDED = 1
_FLAT_PLAIN = 0
_FLAT_INLINE = 2
_ZEROS = bytes(BLOCK)
_NS = 1_000_000_000

_FILE_TYPES = {stat.S_IFREG: 1, stat.S_IFDIR: 2, stat.S_IFCHR: 3, stat.S_IFBLK: 4,
               stat.S_IFIFO: 5, stat.S_IFSOCK: 6, stat.S_IFLNK: 7}  # fmt: skip
# xattr namespaces EROFS stores by index: (full name or prefix, index, whole name?)
_XATTR_NAMESPACES = (
    ("system.posix_acl_access", 2, True),
    ("system.posix_acl_default", 3, True),
    ("user.", 1, False),
    ("trusted.", 4, False),
    ("security.", 6, False),
)
_MAX_INLINE_XATTRS = 2048  # bytes of xattrs one inode may carry here (one metadata block)


class UnsupportedImage(Exception):
    """The tree holds something this writer does not encode (the message says what)."""


@dataclass(eq=False, slots=True)
class Inode:
    """One file of the image; directories hold their entries by (byte) name."""

    mode: int  # st_mode, type bits included
    uid: int
    gid: int
    mtime_ns: int
    xattrs: dict[str, bytes] = field(default_factory=dict)
    children: dict[bytes, Inode] | None = None
    size: int = 0  # a regular file's
    blkaddr: int = 0  # a regular file's first data block
    rdev: int = 0  # a device's
    target: bytes = b""  # a symlink's
    # set while the image is laid out
    nid: int = -1
    nlink: int = 0


def xattr_key(name: str) -> tuple[int, bytes] | None:
    """EROFS's (namespace index, name suffix) for *name*; ``None`` for a namespace EROFS
    cannot hold (a filesystem that refuses it, as ext4 refuses unknown ones)."""
    for prefix, index, whole in _XATTR_NAMESPACES:
        if name == prefix if whole else name.startswith(prefix) and len(name) > len(prefix):
            return index, os.fsencode(name[len(prefix) :])
    return None


class ImageWriter:
    """Writes one image into *out* (a new, empty file opened for writing)."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._out.write(_ZEROS)  # block 0: the superblock, written last
        self._end = BLOCK

    def add_file(self, read: Callable[[int], memoryview], chunk: int) -> tuple[int, int]:
        """Copy a file's contents (``read(chunk)`` until empty) into the data area;
        returns its first block and its size."""
        start, size = self._end, 0
        while view := read(chunk):
            self._out.write(view)
            size += len(view)
        self._out.write(_ZEROS[: -size % BLOCK])
        self._end += size + (-size % BLOCK)
        return start // BLOCK, size

    def finish(self, root: Inode, build_time_ns: int) -> None:
        """Lay out the metadata of the tree under *root* and write it, with the
        superblock: the image is complete when this returns."""
        layout = _Layout(root, self._end // BLOCK)
        self._out.write(layout.metadata())
        _write_superblock(self._out, layout, build_time_ns)
        self._out.flush()


class _Layout:
    def __init__(self, root: Inode, meta_blkaddr: int) -> None:
        self.meta_blkaddr = meta_blkaddr
        self.inodes: list[Inode] = []
        self.parents: dict[int, Inode] = {id(root): root}
        self._walk(root)
        self.xattrs = {id(i): _xattr_region(i) for i in self.inodes if i.xattrs}
        self.offsets: list[int] = []
        offset = _SLOT  # no nid 0: it would be inode number 0, which readdir(3) skips
        for inode in self.inodes:
            size = _INODE.size + len(self.xattrs.get(id(inode), b"")) + self._inline(inode)
            if offset % BLOCK + size > BLOCK:
                offset += -offset % BLOCK
            inode.nid = offset // _SLOT
            self.offsets.append(offset)
            offset += size + (-size % _SLOT)
        self.meta_size = offset + (-offset % BLOCK)
        if root.nid != 1:
            raise AssertionError("the root inode comes first")
        self.dir_blocks = {id(d): _dir_blocks(self._entries(d)) for d in self.inodes
                           if d.children is not None}  # fmt: skip
        # directory blocks, then long symlink targets, after the metadata
        self.blkaddrs: dict[int, int] = {}
        block = meta_blkaddr + self.meta_size // BLOCK
        for inode in self.inodes:
            if inode.children is not None:
                self.blkaddrs[id(inode)] = block
                block += len(self.dir_blocks[id(inode)])
            elif stat.S_ISLNK(inode.mode) and not self._inline(inode):
                self.blkaddrs[id(inode)] = block
                block += 1
        self.blocks = block

    def _walk(self, root: Inode) -> None:
        """Every inode once (hard links share one), parents before children; counts
        links."""
        root.nlink = 2
        root.nid = 0  # seen
        self.inodes.append(root)
        pending = [root]
        while pending:
            directory = pending.pop()
            assert directory.children is not None
            for name in sorted(directory.children):
                child = directory.children[name]
                if child.children is not None:
                    child.nlink = 2
                    directory.nlink += 1
                    self.parents[id(child)] = directory
                    pending.append(child)
                else:
                    child.nlink += 1
                if child.nid == -1:
                    child.nid = 0
                    self.inodes.append(child)

    def _entries(self, directory: Inode) -> list[tuple[bytes, Inode]]:
        assert directory.children is not None
        entries = [(b".", directory), (b"..", self.parents[id(directory)])]
        entries += directory.children.items()
        entries.sort(key=lambda entry: entry[0])
        return entries

    @staticmethod
    def _inline(inode: Inode) -> int:
        """Bytes of a symlink's target kept right after its inode (0: in a block)."""
        if not stat.S_ISLNK(inode.mode):
            return 0
        size = len(inode.target)
        return size if _INODE.size + _MAX_INLINE_XATTRS + size <= BLOCK else 0

    def metadata(self) -> bytes:
        meta = bytearray(self.meta_size)
        tail = bytearray()
        for number, (inode, offset) in enumerate(zip(self.inodes, self.offsets, strict=True)):
            xattrs = self.xattrs.get(id(inode), b"")
            layout, size, i_u = _FLAT_PLAIN, inode.size, inode.blkaddr
            kind = stat.S_IFMT(inode.mode)
            if inode.children is not None:
                blocks = self.dir_blocks[id(inode)]
                size = (len(blocks) - 1) * BLOCK + len(blocks[-1])
                i_u = self.blkaddrs[id(inode)]
                tail += b"".join(block.ljust(BLOCK, b"\0") for block in blocks)
            elif kind == stat.S_IFLNK:
                size = len(inode.target)
                if self._inline(inode):
                    layout, i_u = _FLAT_INLINE, 0
                    end = offset + _INODE.size + len(xattrs)
                    meta[end : end + size] = inode.target
                else:
                    i_u = self.blkaddrs[id(inode)]
                    tail += inode.target.ljust(BLOCK, b"\0")
            elif kind in (stat.S_IFCHR, stat.S_IFBLK):
                i_u = _encode_dev(inode.rdev)
            elif kind != stat.S_IFREG:
                i_u = 0
            seconds, nsec = divmod(inode.mtime_ns, _NS)
            icount = (len(xattrs) - _XATTR_HEADER) // 4 + 1 if xattrs else 0
            _INODE.pack_into(meta, offset, _EXTENDED | layout << 1, icount, inode.mode & 0xFFFF,
                             0, size, i_u, number + 1, inode.uid, inode.gid, seconds, nsec,
                             inode.nlink)  # fmt: skip
            meta[offset + _INODE.size : offset + _INODE.size + len(xattrs)] = xattrs
        return bytes(meta) + bytes(tail)


def _dir_blocks(entries: list[tuple[bytes, Inode]]) -> list[bytes]:
    """The directory blocks for *entries* (sorted by name): each holds its dirents, then
    their names; the last one is not padded."""
    blocks: list[bytes] = []
    start = 0
    while start < len(entries):
        end, used = start, 0
        while end < len(entries) and used + _DIRENT.size + len(entries[end][0]) <= BLOCK:
            used += _DIRENT.size + len(entries[end][0])
            end += 1
        if end == start:
            raise UnsupportedImage(f"a file name of {len(entries[start][0])} bytes")
        chunk = entries[start:end]
        nameoff = _DIRENT.size * len(chunk)
        heads, names = bytearray(), bytearray()
        for name, inode in chunk:
            heads += _DIRENT.pack(inode.nid, nameoff + len(names),
                                  _FILE_TYPES.get(stat.S_IFMT(inode.mode), 0), 0)  # fmt: skip
            names += name
        blocks.append(bytes(heads + names))
        start = end
    return blocks


def _xattr_region(inode: Inode) -> bytes:
    region = bytearray(_XATTR_HEADER)
    for name, value in sorted(inode.xattrs.items()):
        key = xattr_key(name)
        if key is None:
            continue
        index, suffix = key
        if len(suffix) > 255 or len(value) > 0xFFFF:
            raise UnsupportedImage(f"the xattr {name!r} is too large")
        entry = _XATTR_ENTRY.pack(len(suffix), index, len(value)) + suffix + value
        region += entry + bytes(-len(entry) % 4)
    if len(region) == _XATTR_HEADER:
        return b""
    if len(region) > _MAX_INLINE_XATTRS:
        raise UnsupportedImage(f"{len(region)} bytes of xattrs on one file")
    return bytes(region)


def _encode_dev(dev: int) -> int:
    """The kernel's ``new_encode_dev``: 12 bits of major, 20 of minor, in 32."""
    major, minor = os.major(dev), os.minor(dev)
    return ((minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12)) & 0xFFFFFFFF


def _write_superblock(out: BinaryIO, layout: _Layout, build_time_ns: int) -> None:
    seconds, nsec = divmod(build_time_ns, _NS)
    root_nid = layout.inodes[0].nid
    block = _SUPERBLOCK.pack(_MAGIC, 0, 0, _BLOCK_BITS, 0, root_nid, len(layout.inodes), seconds,
                             nsec, layout.blocks, layout.meta_blkaddr, 0, bytes(16), bytes(16),
                             0)  # fmt: skip
    out.seek(_SUPERBLOCK_OFFSET)
    out.write(block.ljust(128, b"\0"))
