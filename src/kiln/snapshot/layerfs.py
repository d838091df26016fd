"""Layer blob → EROFS image, in one pass, computing the diff ID on the way.

The image mounted read-only is what :func:`kiln.snapshot.unpack.unpack_layer` in
``overlay`` mode would have made the directory: the same names, owners, modes, times,
xattrs, hard links and devices, whiteouts as character devices 0/0 and opaque
directories marked ``trusted.overlay.opaque=y`` (a directory that replaces a whiteout of
the same layer included), member names normalised and parents resolved through this
layer's symlinks the same way. It is built in memory as a tree while the file contents go
straight into the image, so a layer of tens of thousands of small files costs a few large
writes instead of four system calls per file. What an image cannot hold (a huge xattr, a
name over a block long) raises :class:`~kiln.snapshot.erofs.UnsupportedImage`: the caller
unpacks that layer into a directory instead.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from pathlib import Path
from typing import BinaryIO

from kiln.archive.tarstream import (
    BLK,
    CHR,
    DIR,
    FIFO,
    LINK,
    REG,
    SYMLINK,
    TarFormatError,
    TarHeader,
    TarReader,
)
from kiln.archive.whiteouts import (
    OVERLAY_OPAQUE_XATTR,
    OVERLAY_XATTR_PREFIX,
    WHITEOUT_META_PREFIX,
    Whiteout,
    classify,
)
from kiln.snapshot.erofs import ImageWriter, Inode, xattr_key
from kiln.snapshot.unpack import COPY_SIZE, MAX_SYMLINK_HOPS, Unsafe, clean_name, read_layer

_TYPES = {CHR: stat.S_IFCHR, BLK: stat.S_IFBLK, FIFO: stat.S_IFIFO}
_OPAQUE = b"y"


def write_layer_image(blob: BinaryIO, compression: str, dest: Path) -> str:
    """Write the (compressed) layer *blob* as an EROFS image at *dest* (a new file);
    returns the layer's diff ID. Errors as :func:`~kiln.snapshot.unpack.read_layer`."""
    with open(dest, "xb", buffering=COPY_SIZE) as out:
        builder = _TreeBuilder(ImageWriter(out))
        return read_layer(blob, compression, builder,
                          what=f"cannot write the layer image {dest}", where=str(dest))  # fmt: skip


def _holds(directory: Inode, inode: Inode) -> bool:
    """Whether *inode* is somewhere below *directory*."""
    pending = [directory]
    while pending:
        for child in (pending.pop().children or {}).values():
            if child is inode:
                return True
            if child.children is not None:
                pending.append(child)
    return False


def _is_whiteout(inode: Inode) -> bool:
    return stat.S_ISCHR(inode.mode) and inode.rdev == 0


class _TreeBuilder:
    def __init__(self, writer: ImageWriter) -> None:
        self.writer = writer
        self.now = time.time_ns()
        self.creator = (os.geteuid(), os.getegid())
        # the snapshot root of a directory unpack: a fresh private directory
        self.root = Inode(stat.S_IFDIR | 0o700, *self.creator, self.now, children={})

    def finish(self) -> None:
        self.writer.finish(self.root, self.now)

    # --- paths ------------------------------------------------------------------------

    def _resolve_dir(self, parts: list[str], *, create: bool = True) -> Inode:
        """The directory *parts* names, symlinks of this layer followed inside its root
        (an absolute target starts from the root, ``..`` stops there); a missing one is
        created (mode 0755) unless *create* is false (then FileNotFoundError)."""
        path: list[Inode] = [self.root]
        todo = [os.fsencode(p) for p in reversed(parts)]
        hops = 0
        while todo:
            comp = todo.pop()
            if comp in (b"", b"."):
                continue
            if comp == b"..":
                if len(path) > 1:
                    path.pop()
                continue
            here = path[-1]
            assert here.children is not None
            child = here.children.get(comp)
            if child is None:
                if not create:
                    raise FileNotFoundError(os.fsdecode(comp))
                gid = here.gid if here.mode & stat.S_ISGID else self.creator[1]
                child = Inode(stat.S_IFDIR | 0o755, self.creator[0], gid, self.now, children={})
                here.children[comp] = child
            elif stat.S_ISLNK(child.mode):
                hops += 1
                if hops > MAX_SYMLINK_HOPS:
                    raise Unsafe(f"too many levels of symbolic links in {'/'.join(parts)!r}")
                if child.target.startswith(b"/"):
                    del path[1:]
                todo.extend(reversed(child.target.split(b"/")))
                continue
            elif child.children is None:
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), "/".join(parts))
            path.append(child)
        return path[-1]

    # --- members ----------------------------------------------------------------------

    def member(self, h: TarHeader, reader: TarReader) -> None:
        parts = clean_name(h.name)
        if not parts:
            return  # the root itself: its metadata belongs to the snapshot
        if any(comp.startswith(WHITEOUT_META_PREFIX) for comp in parts[:-1]):
            return  # inside AUFS bookkeeping
        kind = classify(parts[-1])
        if kind is not None:
            self._whiteout(kind[0], parts[:-1], kind[1], h)
            return
        parent = self._resolve_dir(parts[:-1])
        assert parent.children is not None
        name = os.fsencode(parts[-1])
        old = parent.children.get(name)
        if h.type == DIR:
            if old is not None and old.children is not None:
                old.uid, old.gid, old.mtime_ns = h.uid, h.gid, h.mtime_ns
                old.mode = stat.S_IFDIR | h.mode
                old.xattrs.update(self._xattrs(h))
                return
            new = self._inode(stat.S_IFDIR | h.mode, h, children={})
            if old is not None and _is_whiteout(old):
                new.xattrs[OVERLAY_OPAQUE_XATTR] = _OPAQUE  # as overlayfs's mkdir does
        elif h.type == REG:
            new = self._inode(stat.S_IFREG | h.mode, h)
            new.blkaddr, new.size = self.writer.add_file(reader.read, COPY_SIZE)
        elif h.type == SYMLINK:
            if "\x00" in h.linkname:
                raise TarFormatError(f"symlink {h.name!r} has a NUL byte in its target")
            new = self._inode(stat.S_IFLNK | 0o777, h, symlink=True)
            new.target = os.fsencode(h.linkname)
        elif h.type == LINK:
            new = self._hardlink_target(h)
            if old is new:
                return
            if old is not None and old.children is not None and _holds(old, new):
                # replacing the directory removes the target first, as unlink then link does
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), h.linkname)
        elif h.type in _TYPES:
            new = self._inode(_TYPES[h.type] | h.mode, h)
            if h.type != FIFO:
                new.rdev = os.makedev(h.devmajor, h.devminor)
        else:
            return  # tar types with no meaning in a filesystem
        parent.children[name] = new

    def _inode(self, mode: int, h: TarHeader, *, symlink: bool = False,
               children: dict[bytes, Inode] | None = None) -> Inode:  # fmt: skip
        return Inode(mode, h.uid, h.gid, h.mtime_ns, self._xattrs(h, symlink=symlink),
                     children=children)  # fmt: skip

    @staticmethod
    def _xattrs(h: TarHeader, *, symlink: bool = False) -> dict[str, bytes]:
        """The xattrs a directory unpack keeps: not ``trusted.overlay.*``, none the
        filesystem refuses, no ``user.*`` on a symlink (Linux forbids it)."""
        return {
            name: value
            for name, value in h.xattrs
            if not name.startswith(OVERLAY_XATTR_PREFIX)
            and "\x00" not in name
            and xattr_key(name) is not None
            and not (symlink and name.startswith("user."))
        }

    def _hardlink_target(self, h: TarHeader) -> Inode:
        target = clean_name(h.linkname)
        if not target:
            raise Unsafe(f"hardlink {h.name!r} points at the layer root")
        try:
            parent = self._resolve_dir(target[:-1], create=False)
        except (FileNotFoundError, NotADirectoryError):
            parent = None
        found = None
        if parent is not None and parent.children is not None:
            found = parent.children.get(os.fsencode(target[-1]))
        if found is None:
            raise Unsafe(
                f"hardlink {h.name!r} points at {h.linkname!r}, which does not exist",
                hint="a hardlink must point at a file earlier in the same layer",
            )
        if found.children is not None:
            raise Unsafe(f"hardlink {h.name!r} points at the directory {h.linkname!r}")
        return found

    # --- whiteouts --------------------------------------------------------------------

    def _whiteout(self, kind: Whiteout, parent_parts: list[str], name: str, h: TarHeader) -> None:
        if kind is Whiteout.META:
            return
        parent = self._resolve_dir(parent_parts)
        assert parent.children is not None
        if kind is Whiteout.OPAQUE:
            parent.xattrs[OVERLAY_OPAQUE_XATTR] = _OPAQUE
            return
        key = os.fsencode(name)
        if key not in parent.children:  # something this layer created wins
            parent.children[key] = Inode(stat.S_IFCHR, h.uid, h.gid, h.mtime_ns)
