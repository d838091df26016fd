"""Layer blob → directory, streaming, computing the diff ID on the way.

Three targets:

- ``overlay``: *dest* is an empty directory that becomes an overlayfs lowerdir. A tar
  whiteout ``.wh.<name>`` becomes the character device 0/0 ``<name>``; the marker
  ``.wh..wh..opq`` sets ``trusted.overlay.opaque=y`` on its directory. A directory that
  replaces a whiteout of the same layer is made opaque, as the kernel does on mkdir.
- ``apply``: *dest* is a plain root filesystem holding the layers below; a whiteout
  deletes the named path and an opaque marker deletes everything in its directory that
  this layer did not itself create (OCI image-spec "applying changesets").
- ``extract``: a plain archive (``ADD app.tar.gz /opt/``): ``.wh.*`` names are ordinary
  files, as BuildKit extracts them.

Member names are untrusted. They are normalised (``./``, empty and ``.`` components
dropped, a leading ``/`` meaning *dest*); a ``..`` that climbs above *dest* is refused. The
parent directories of a member are resolved inside *dest* as if *dest* were ``/`` —
symlinks are followed but absolute targets and ``..`` stay within it (containerd's
``RootPath``) — and the member itself is never followed: an existing entry is replaced, and
files are opened with ``O_CREAT|O_EXCL|O_NOFOLLOW``. Hardlink targets are resolved the
same way and must already exist in *dest*. ``trusted.overlay.*`` xattrs in a layer are
ignored: they would steer the overlay mount.

Ownership, xattrs, then mode (chown clears setuid bits and capabilities), then times;
directory times are set last, after everything inside them exists. A file or symlink that
would be created with its owner anyway (this process's user and group, outside a
set-group-ID directory) is not chowned, and a file whose mode the umask leaves alone is
created with it: four system calls per small file instead of six, and file creation is
most of an unpack's time.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, Literal, Protocol

from kiln.archive.compress import DECOMPRESSION_ERRORS, decompressing_reader
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
    OVERLAY_XATTR_PREFIX,
    WHITEOUT_META_PREFIX,
    Whiteout,
    classify,
    is_overlay_whiteout,
    make_overlay_whiteout,
    mark_opaque,
)
from kiln.content import BlobStore
from kiln.errors import CorruptBlobError, KilnError, RuntimeFailure
from kiln.oci import Layer, compression_of
from kiln.timing import timed

Mode = Literal["overlay", "apply", "extract"]

COPY_SIZE = 1 << 20
MAX_SYMLINK_HOPS = 40  # Linux's limit for a path lookup
_DEVICE_TYPES = {CHR: stat.S_IFCHR, BLK: stat.S_IFBLK, FIFO: stat.S_IFIFO}
_IGNORED_XATTR_ERRNOS = frozenset({errno.ENOTSUP, errno.EOPNOTSUPP})


_CRAFTED = "the layer was crafted to write outside its root; do not use this image"


class Unsafe(Exception):
    """A member that would escape *dest* or cannot be placed; the message names it."""

    def __init__(self, why: str, hint: str = _CRAFTED) -> None:
        super().__init__(why)
        self.hint = hint


@timed("unpack")
def unpack_stored(store: BlobStore, layer: Layer, dest: Path, *, mode: Mode = "overlay") -> None:
    """Extract *layer*'s blob from *store* into *dest*, verifying it is the layer it is
    said to be (:func:`read_stored`)."""
    read_stored(store, layer, lambda blob, compression: unpack_layer(blob, compression, dest,
                                                                      mode=mode))  # fmt: skip


def read_stored(store: BlobStore, layer: Layer, read: Callable[[BinaryIO, str], str]) -> None:
    """Run ``read(blob, compression)`` (which returns the diff ID it computed) on
    *layer*'s blob from *store*: the diff ID is remembered by the store; a blob whose diff
    ID differs is removed and a :class:`CorruptBlobError` (a miss for a cached step, never
    a wrong result)."""
    with store.path(layer.digest).open("rb") as fh:
        diff_id = read(fh, compression_of(layer.blob.media_type))
    if diff_id != layer.diff_id:
        store.remove(layer.digest)  # fetched again next time
        raise CorruptBlobError(
            f"layer {layer.digest} is not the layer its image says",
            digest=layer.digest,
            why=f"its diff ID is {diff_id}, not {layer.diff_id}",
        )
    store.record_diff_id(layer.digest, diff_id)


class MemberSink(Protocol):
    """Takes a layer's members one by one (:func:`read_layer`)."""

    def member(self, h: TarHeader, reader: TarReader) -> None: ...
    def finish(self) -> None: ...


def read_layer(blob: BinaryIO, compression: str, sink: MemberSink, *, what: str, where: str) -> str:
    """Feed every member of the (compressed) layer *blob* to *sink*, then finish it;
    returns the layer's diff ID. A corrupt or unsafe layer is a :class:`KilnError` (*what*
    says what was being done), an operation the filesystem refuses a
    :class:`RuntimeFailure` (naming the file, else *where*)."""
    try:
        reader = TarReader(decompressing_reader(blob, compression))
        while (header := reader.next()) is not None:
            sink.member(header, reader)
        diff_id = reader.finish()
        sink.finish()
    except TarFormatError as exc:
        raise KilnError(
            what, why=f"the layer is not a valid tar archive: {exc}", hint=_CORRUPT_HINT
        ) from exc
    except DECOMPRESSION_ERRORS as exc:
        raise KilnError(what, why=f"the layer cannot be decompressed: {exc}") from exc
    except Unsafe as exc:
        raise KilnError(what, why=str(exc), hint=exc.hint) from exc
    except OSError as exc:
        raise RuntimeFailure(what, why=f"{exc.strerror or exc}: {exc.filename or where}") from exc
    return diff_id


def unpack_layer(blob: BinaryIO, compression: str, dest: Path, *, mode: Mode = "overlay") -> str:
    """Extract the (compressed) layer *blob* into *dest*; returns its diff ID.

    *compression* is ``gzip``, ``zstd``, ``uncompressed`` or a layer media type. The diff
    ID is the SHA-256 of the whole uncompressed stream; the caller compares it with the
    one it expects. Raises :class:`KilnError` for a corrupt or unsafe layer and
    :class:`RuntimeFailure` when the filesystem refuses an operation.
    """
    if mode not in ("overlay", "apply", "extract"):
        raise ValueError(f"unknown unpack mode {mode!r}")
    root = os.path.abspath(dest)
    return read_layer(blob, compression, _Unpacker(root, mode),
                      what=f"cannot unpack layer into {root}", where=root)  # fmt: skip


_CORRUPT_HINT = "the blob is corrupt or not a layer; remove it from the cache and pull it again"


def _umask() -> int:
    """This process's umask, read without changing it (``os.umask`` sets it for every
    thread); all bits when it cannot be read, so every mode is set explicitly."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o777


def clean_name(name: str) -> list[str]:
    """Normalised components of a member name; ``[]`` is *dest* itself."""
    if "\x00" in name:
        raise TarFormatError(f"member name {name!r} contains a NUL byte")
    parts: list[str] = []
    for comp in name.split("/"):
        if comp in ("", "."):
            continue
        if comp == "..":
            if not parts:
                raise Unsafe(f"member {name!r} points outside the layer root")
            parts.pop()
        else:
            parts.append(comp)
    return parts


def _join(rel: str, name: str) -> str:
    return f"{rel}/{name}" if rel else name


class _Unpacker:
    def __init__(self, root: str, mode: Mode) -> None:
        self.root = root
        self.overlay = mode == "overlay"
        self.whiteouts = mode != "extract"  # ADD of a plain archive: .wh.* are just names
        self.dir_times: dict[str, int] = {}
        # apply mode: every path (resolved, relative) this layer created, which whiteouts
        # and opaque markers must leave alone
        self.created: set[str] = set()
        self._parents: dict[str, str] = {}  # member parent → resolved relative dir
        # resolved directories whose new entries take the directory's group (set-group-ID):
        # there a new entry's owner is not simply this process's
        self._setgid: set[str] = set()
        if os.lstat(root).st_mode & stat.S_ISGID:
            self._setgid.add("")
        self._creator = (os.geteuid(), os.getegid())
        self._umask = _umask()

    def _abs(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    # --- paths ------------------------------------------------------------------------

    def _resolve_dir(self, parts: list[str], *, create: bool = True) -> str:
        """The relative path of directory *parts* after resolving symlinks inside root.

        Missing directories are created (mode 0755) unless *create* is false, in which
        case a missing one raises FileNotFoundError; a file in the way raises
        NotADirectoryError.
        """
        key = "/".join(parts)
        hit = self._parents.get(key)
        if hit is not None:
            return hit
        cur: list[str] = []
        todo = list(reversed(parts))
        hops = 0
        while todo:
            comp = todo.pop()
            if comp in ("", "."):
                continue
            if comp == "..":
                if cur:
                    cur.pop()
                continue
            rel = "/".join([*cur, comp])
            path = self._abs(rel)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                if not create:
                    raise
                os.mkdir(path)
                os.chmod(path, 0o755)  # whatever the umask: layers must not depend on it
                if not self.overlay:
                    self.created.add(rel)
                cur.append(comp)
                continue
            if stat.S_ISLNK(st.st_mode):
                hops += 1
                if hops > MAX_SYMLINK_HOPS:
                    raise Unsafe(f"too many levels of symbolic links in {key!r}")
                target = os.readlink(path)
                if target.startswith("/"):
                    cur = []
                todo.extend(reversed(target.split("/")))
                continue
            if not stat.S_ISDIR(st.st_mode):
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
            if st.st_mode & stat.S_ISGID:
                self._setgid.add(rel)
            cur.append(comp)
        resolved = "/".join(cur)
        self._parents[key] = resolved
        return resolved

    def _remove(self, path: str, st: os.stat_result) -> None:
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(path)
        else:
            os.unlink(path)
        self._parents.clear()  # a resolved directory may be gone now

    # --- members ----------------------------------------------------------------------

    def member(self, h: TarHeader, reader: TarReader) -> None:
        parts = clean_name(h.name)
        if not parts:
            return  # the root itself: its metadata belongs to the snapshot, not the layer
        if self.whiteouts and any(comp.startswith(WHITEOUT_META_PREFIX) for comp in parts[:-1]):
            return  # inside AUFS bookkeeping (".wh..wh.plnk/…"): not part of the tree
        kind = classify(parts[-1]) if self.whiteouts else None
        if kind is not None:
            self._whiteout(kind[0], parts[:-1], kind[1], h)
            return
        parent = self._resolve_dir(parts[:-1])
        rel = _join(parent, parts[-1])
        path = self._abs(rel)
        if h.type == DIR:
            self._dir(rel, path, h)
        elif h.type == REG:
            self._file(path, h, reader, self._owner_is_creator(parent, h))
        elif h.type == SYMLINK:
            if "\x00" in h.linkname:
                raise TarFormatError(f"symlink {h.name!r} has a NUL byte in its target")
            self._create(path, lambda: os.symlink(h.linkname, path))
            self._meta(path, h, symlink=True, owned=self._owner_is_creator(parent, h))
        elif h.type == LINK:
            self._hardlink(path, h)
        elif h.type in _DEVICE_TYPES:
            dev = os.makedev(h.devmajor, h.devminor)
            self._create(path, lambda: os.mknod(path, _DEVICE_TYPES[h.type] | 0o600, dev))
            self._meta(path, h)
        else:
            return  # tar types with no meaning in a filesystem (volume labels, …)
        if not self.overlay:
            self.created.add(rel)

    def _create(self, path: str, make: Callable[[], object], *, is_dir: bool = False) -> bool:
        """Run *make*; if the name is taken, replace what is there (a directory is kept
        for a directory entry). Returns whether the taken name was an overlay whiteout."""
        try:
            make()
            return False
        except FileExistsError:
            pass
        st = os.lstat(path)
        if is_dir and stat.S_ISDIR(st.st_mode):
            return False
        self._remove(path, st)
        make()
        return is_overlay_whiteout(st)

    def _owner_is_creator(self, parent: str, h: TarHeader) -> bool:
        """Whether an entry created in *parent* already has *h*'s owner (this process's
        user and group, in a directory that does not hand down its group): then it needs
        no chown, which would change nothing (the common case: root-owned files unpacked
        by root)."""
        return (h.uid, h.gid) == self._creator and parent not in self._setgid

    def _dir(self, rel: str, path: str, h: TarHeader) -> None:
        replaced_whiteout = self._create(path, lambda: os.mkdir(path, 0o700), is_dir=True)
        if self.overlay and replaced_whiteout:
            mark_opaque(path)  # like overlayfs's mkdir over a whiteout
        os.chown(path, h.uid, h.gid, follow_symlinks=False)
        self._xattrs(path, h)
        os.chmod(path, h.mode)
        if h.mode & stat.S_ISGID:
            self._setgid.add(rel)
        else:
            self._setgid.discard(rel)
        self.dir_times[path] = h.mtime_ns

    def _file(self, path: str, h: TarHeader, reader: TarReader, owned: bool) -> None:
        """Create, fill, own, mark and time a regular file. Four system calls when it is
        owned by this process and its mode survives the umask (created with that mode),
        else the full order: chown, xattrs, then mode (chown clears set-ID bits)."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        direct = owned and not h.mode & (0o7000 | self._umask)  # no set-ID or sticky bits
        fd = -1

        def make() -> None:
            nonlocal fd
            fd = os.open(path, flags, h.mode if direct else 0o600)

        self._create(path, make)
        try:
            while view := reader.read(COPY_SIZE):
                while view:
                    view = view[os.write(fd, view) :]
            if not owned:
                os.fchown(fd, h.uid, h.gid)
            self._xattrs(fd, h)
            if not direct:
                os.fchmod(fd, h.mode)
            os.utime(fd, ns=(h.mtime_ns, h.mtime_ns))
        finally:
            os.close(fd)

    def _hardlink(self, path: str, h: TarHeader) -> None:
        target_parts = clean_name(h.linkname)
        if not target_parts:
            raise Unsafe(f"hardlink {h.name!r} points at the layer root")
        try:
            parent = self._resolve_dir(target_parts[:-1], create=False)
            target = self._abs(_join(parent, target_parts[-1]))
            st = os.lstat(target)
        except (FileNotFoundError, NotADirectoryError):
            raise Unsafe(
                f"hardlink {h.name!r} points at {h.linkname!r}, which does not exist",
                hint="a hardlink must point at a file earlier in the same layer"
                + ("" if self.overlay else " or in a layer below"),
            ) from None
        if stat.S_ISDIR(st.st_mode):
            raise Unsafe(f"hardlink {h.name!r} points at the directory {h.linkname!r}")
        try:
            if os.path.samestat(os.lstat(path), st):
                return  # already that file (a link to itself, or a repeated member)
        except FileNotFoundError:
            pass
        self._create(path, lambda: os.link(target, path, follow_symlinks=False))

    def _meta(self, path: str, h: TarHeader, *, symlink: bool = False, owned: bool = False
              ) -> None:  # fmt: skip
        if not owned:
            os.chown(path, h.uid, h.gid, follow_symlinks=False)
        self._xattrs(path, h, symlink=symlink)
        if not symlink:
            os.chmod(path, h.mode)
        os.utime(path, ns=(h.mtime_ns, h.mtime_ns), follow_symlinks=False)

    def _xattrs(self, target: str | int, h: TarHeader, *, symlink: bool = False) -> None:
        for name, value in h.xattrs:
            if name.startswith(OVERLAY_XATTR_PREFIX) or "\x00" in name:
                continue
            try:
                if isinstance(target, int):
                    os.setxattr(target, name, value)
                else:
                    os.setxattr(target, name, value, follow_symlinks=False)
            except OSError as exc:
                # A filesystem without xattrs, or user.* on a symlink (Linux forbids it).
                if exc.errno in _IGNORED_XATTR_ERRNOS or (symlink and exc.errno == errno.EPERM):
                    continue
                raise

    # --- whiteouts --------------------------------------------------------------------

    def _whiteout(self, kind: Whiteout, parent_parts: list[str], name: str, h: TarHeader) -> None:
        if kind is Whiteout.META:
            return
        try:
            # In apply mode a whiteout below a missing directory has nothing to hide.
            parent = self._resolve_dir(parent_parts, create=self.overlay)
        except (FileNotFoundError, NotADirectoryError):
            if self.overlay:
                raise
            return
        if kind is Whiteout.OPAQUE:
            if self.overlay:
                mark_opaque(self._abs(parent))
            else:
                self._empty_lower(parent)
            return
        rel = _join(parent, name)
        path = self._abs(rel)
        try:
            st: os.stat_result | None = os.lstat(path)
        except FileNotFoundError:
            st = None
        if self.overlay:
            # Something this layer created wins: a whiteout only hides lower layers.
            if st is None:
                make_overlay_whiteout(path, uid=h.uid, gid=h.gid)
                os.utime(path, ns=(h.mtime_ns, h.mtime_ns), follow_symlinks=False)
        elif st is not None and rel not in self.created:
            self._remove(path, st)

    def _empty_lower(self, top: str) -> None:
        """Apply mode: remove everything below *top* that this layer did not create."""
        stack = [top]
        while stack:
            rel_dir = stack.pop()
            with os.scandir(self._abs(rel_dir)) as it:
                entries = list(it)
            for entry in entries:
                rel = _join(rel_dir, entry.name)
                if rel in self.created:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(rel)
                    continue
                self._remove(entry.path, entry.stat(follow_symlinks=False))

    def finish(self) -> None:
        """Set directory times now that nothing more is created inside them."""
        for path, ns in self.dir_times.items():
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue  # removed by a later member
            if stat.S_ISDIR(st.st_mode):
                os.utime(path, ns=(ns, ns), follow_symlinks=False)
