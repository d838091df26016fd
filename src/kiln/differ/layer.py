"""Overlay upper dir → OCI layer blob, in one streaming pass.

The upper dir of a finished step holds exactly what the step changed: new and modified
entries, deletions as character devices 0/0, and directories that replaced a lower one
marked ``trusted.overlay.opaque=y``. It is walked in a fixed order (names compared as
bytes, a directory before its contents) and written as a deterministic tar:

- PAX/ustar headers, numeric uid/gid with empty user and group names, mode bits with
  setuid/setgid/sticky, whole-second mtimes (clamped to SOURCE_DATE_EPOCH when given),
  no atime/ctime;
- a deleted name becomes the empty file ``.wh.<name>``; an opaque directory is followed by
  ``<dir>/.wh..wh..opq``; the same inode met twice becomes a hardlink to the first path;
- xattrs as ``SCHILY.xattr.*``: file capabilities, ``user.*`` and POSIX ACLs are kept;
  host-specific ones (``trusted.*`` — overlay's own included — ``security.selinux``,
  IMA/EVM) are not part of an image.

The tar bytes go through a SHA-256 (the diff ID), the compressor and the blob store's
writer (which hashes the compressed bytes) in bounded chunks: memory does not grow with the
size of the layer.

:func:`write_tree` writes a plain directory the same way (a cache mount's content, or the
changes to it: the entries a filter accepts, whiteouts for deleted paths); there a device
0/0 is a device and no overlay attribute means anything.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from kiln.archive.compress import check_compression, compressor
from kiln.archive.tarstream import (
    BLK,
    CHR,
    DIR,
    END_OF_ARCHIVE,
    FIFO,
    LINK,
    REG,
    SYMLINK,
    TarHeader,
    encode_header,
    padding,
)
from kiln.archive.whiteouts import (
    OPAQUE_MARKER,
    OVERLAY_METACOPY_XATTR,
    OVERLAY_OPAQUE_XATTR,
    OVERLAY_REDIRECT_XATTR,
    is_opaque_value,
    is_overlay_whiteout,
    whiteout_name,
)
from kiln.content import BlobStore
from kiln.differ.sink import LayerSink
from kiln.errors import RuntimeFailure
from kiln.oci import Descriptor, Layer, layer_media_type
from kiln.timing import timed

COPY_SIZE = 1 << 20  # read size for file contents

_KEEP_XATTRS = ("security.capability", "system.posix_acl_access", "system.posix_acl_default")


_TYPES = {
    stat.S_IFREG: REG,
    stat.S_IFDIR: DIR,
    stat.S_IFLNK: SYMLINK,
    stat.S_IFCHR: CHR,
    stat.S_IFBLK: BLK,
    stat.S_IFIFO: FIFO,
}


def keep_xattr(name: str) -> bool:
    """Whether an xattr belongs in a layer (see the module docstring)."""
    return name.startswith("user.") or name in _KEEP_XATTRS


def write_layer(
    upper: Path,
    store: BlobStore,
    *,
    compression: str = "gzip",
    level: int | None = None,
    source_date_epoch: int | None = None,
    oci_media_types: bool = True,
) -> Layer | None:
    """Turn the overlay upper dir *upper* into a layer blob stored in *store*.

    Returns ``None`` when *upper* is empty (the step changed nothing, so there is no
    layer). Raises :class:`kiln.errors.UsageError` for a bad compression or level and
    :class:`kiln.errors.RuntimeFailure` when the upper dir cannot be read.
    """
    check_compression(compression, level)
    root = os.fspath(upper)
    try:
        with os.scandir(root) as it:
            if next(it, None) is None:
                return None
    except OSError as exc:
        why = f"{exc.strerror or exc}: {exc.filename or root}"
        raise RuntimeFailure(f"cannot turn {root} into a layer", why=why) from exc
    written = _write(_TreeWriter(root, source_date_epoch), store, compression, level,
                     oci_media_types)  # fmt: skip
    return written[0]


def write_tree(
    root: Path,
    store: BlobStore,
    *,
    include: Callable[[str], bool] | None = None,
    deleted: Sequence[str] = (),
    compression: str = "zstd",
    level: int | None = None,
) -> tuple[Layer, int]:
    """The plain directory *root* as a layer: the entries whose relative path *include*
    accepts (all by default; a directory left out still has its accepted entries
    written) after whiteouts for the *deleted* relative paths. Returns the layer and the
    bytes of file content in it."""
    writer = _TreeWriter(os.fspath(root), None, include=include, deleted=deleted, plain=True)
    return _write(writer, store, compression, level, True)


@timed("diff")
def _write(writer: _TreeWriter, store: BlobStore, compression: str, level: int | None,
           oci_media_types: bool) -> tuple[Layer, int]:  # fmt: skip
    check_compression(compression, level)
    media_type = layer_media_type(compression, oci=oci_media_types)
    try:
        with store.writer() as blob, LayerSink(compressor(compression, level), blob) as sink:
            writer.run(sink)
            sink.write(END_OF_ARCHIVE)
            diff_id = sink.close()
    except OSError as exc:
        raise RuntimeFailure(
            f"cannot turn {writer.root} into a layer",
            why=f"{exc.strerror or exc}: {exc.filename or writer.root}",
        ) from exc
    store.record_diff_id(blob.digest, diff_id)  # made here: known for certain
    layer = Layer(blob=Descriptor(media_type, blob.digest, blob.size), diff_id=diff_id)
    return layer, writer.content


class _TreeWriter:
    def __init__(self, root: str, epoch: int | None, *,
                 include: Callable[[str], bool] | None = None, deleted: Sequence[str] = (),
                 plain: bool = False) -> None:  # fmt: skip
        self.root = root
        self._epoch = epoch
        self._include = include
        self._deleted = deleted
        self._plain = plain
        self._links: dict[tuple[int, int], str] = {}
        self.content = 0  # bytes of file content written

    def run(self, sink: LayerSink) -> None:
        self._sink = sink
        for rel in sorted(self._deleted, key=os.fsencode):
            parent, _, base = rel.rpartition("/")
            name = f"{parent}/{whiteout_name(base)}" if parent else whiteout_name(base)
            self._put(TarHeader(name, REG, mode=0o600, mtime_ns=0))
        for rel, path, st in _walk(self.root):
            if self._include is None or self._include(rel):
                self._entry(rel, path, st)

    def _mtime(self, st: os.stat_result) -> int:
        sec = st.st_mtime_ns // 10**9
        if self._epoch is not None and sec > self._epoch:
            sec = self._epoch
        return sec * 10**9

    def _put(self, header: TarHeader) -> None:
        self._sink.write(encode_header(header))

    def _entry(self, rel: str, path: str, st: os.stat_result) -> None:
        mode = st.st_mode
        perm, uid, gid, mtime = stat.S_IMODE(mode), st.st_uid, st.st_gid, self._mtime(st)
        if not self._plain and is_overlay_whiteout(st):
            parent, _, base = rel.rpartition("/")
            name = f"{parent}/{whiteout_name(base)}" if parent else whiteout_name(base)
            self._put(TarHeader(name, REG, mode=0o600, uid=uid, gid=gid, mtime_ns=mtime))
            return
        type_ = _TYPES.get(stat.S_IFMT(mode))
        if type_ is None:
            return  # a socket: tar cannot hold one, and a socket file means nothing in an image

        names = os.listxattr(path, follow_symlinks=False)
        if OVERLAY_REDIRECT_XATTR in names or OVERLAY_METACOPY_XATTR in names:
            raise RuntimeFailure(
                f"cannot turn the overlay upper dir into a layer: {rel} is a "
                + ("redirect" if OVERLAY_REDIRECT_XATTR in names else "metacopy")
                + " entry whose content lives in a lower layer",
                hint="mount the overlay with redirect_dir=off,metacopy=off",
            )
        xattrs = tuple(
            (name, os.getxattr(path, name, follow_symlinks=False))
            for name in sorted(names, key=os.fsencode)
            if keep_xattr(name)
        )

        if type_ != DIR and st.st_nlink > 1:
            key = (st.st_dev, st.st_ino)
            first = self._links.get(key)
            if first is not None:
                self._put(TarHeader(rel, LINK, perm, uid, gid, mtime_ns=mtime, linkname=first))
                return
            self._links[key] = rel

        size = st.st_size if type_ == REG else 0
        link = os.readlink(path) if type_ == SYMLINK else ""
        major = os.major(st.st_rdev) if type_ in (CHR, BLK) else 0
        minor = os.minor(st.st_rdev) if type_ in (CHR, BLK) else 0
        name = rel + "/" if type_ == DIR else rel
        self._put(TarHeader(name, type_, perm, uid, gid, size, mtime, link, major, minor, xattrs))
        if type_ == REG:
            self._copy(rel, path, size)
        elif type_ == DIR and OVERLAY_OPAQUE_XATTR in names and not self._plain:
            value = os.getxattr(path, OVERLAY_OPAQUE_XATTR, follow_symlinks=False)
            if is_opaque_value(value):
                marker = f"{rel}/{OPAQUE_MARKER}"
                self._put(TarHeader(marker, REG, perm & 0o777, uid, gid, mtime_ns=mtime))

    def _copy(self, rel: str, path: str, size: int) -> None:
        if size == 0:
            return
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            left = size
            while left:
                # A fresh bytes object per read: the sink may queue it, no copy needed.
                chunk = os.read(fd, min(left, COPY_SIZE))
                if not chunk:
                    raise RuntimeFailure(
                        f"{rel} shrank while it was being written into a layer",
                        hint="nothing may change the upper dir while its layer is made",
                    )
                self._sink.write(chunk)
                left -= len(chunk)
                self.content += len(chunk)
        finally:
            os.close(fd)
        self._sink.write(padding(size))


def _walk(root: str) -> Iterator[tuple[str, str, os.stat_result]]:
    """Every entry below *root* as (relative path, path, lstat), directories first,
    siblings in byte order of their names. Iterative: depth is not limited by recursion."""
    stack: list[Iterator[tuple[str, str]]] = [_children("", root)]
    while stack:
        item = next(stack[-1], None)
        if item is None:
            stack.pop()
            continue
        rel, path = item
        st = os.lstat(path)
        yield rel, path, st
        if stat.S_ISDIR(st.st_mode):
            stack.append(_children(rel + "/", path))


def _children(prefix: str, path: str) -> Iterator[tuple[str, str]]:
    with os.scandir(path) as it:
        names = sorted((entry.name for entry in it), key=os.fsencode)
    for name in names:
        yield prefix + name, os.path.join(path, name)
