"""File operations of COPY, ADD and WORKDIR, applied to a mounted step root filesystem.

These need no container: kiln writes into the overlay mount directly, resolving every
destination inside the root (symlinks cannot lead out of it). Semantics follow BuildKit:
a directory source copies its contents; a file goes to ``dest/<name>`` when the
destination ends with ``/`` or is a directory; context files become 0:0 unless --chown;
files from another stage keep their owners; modes and mtimes are preserved.
"""

from __future__ import annotations

import bz2
import contextlib
import lzma
import os
import posixpath
import shutil
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

from kiln.archive.compress import decompressing_reader
from kiln.archive.tarstream import TarReader
from kiln.errors import ContextError, KilnError
from kiln.executor.paths import resolve_in_root
from kiln.executor.users import Identity, resolve_user
from kiln.snapshot.unpack import unpack_layer
from kiln.source.context import BuildContext, ContextEntry, SourceMatch


@dataclass(frozen=True, slots=True)
class CopyOptions:
    owner: Identity | None  # --chown; None keeps the source owner (or 0:0 for the context)
    chmod: int | None
    keep_owner: bool  # True for --from sources
    extract_archives: bool  # ADD


def mkdir_p(rootfs: Path, path: str, owner: Identity, mode: int = 0o755) -> Path:
    """Create *path* and missing parents inside *rootfs*; new directories get *owner*."""
    parts = [p for p in path.split("/") if p]
    current = "/"
    for part in parts:
        current = current.rstrip("/") + "/" + part
        host = resolve_in_root(rootfs, current)
        if host.is_dir():
            continue
        if os.path.lexists(host):
            raise KilnError(f"cannot create directory {current}: a file exists there")
        host.mkdir(mode)
        os.chmod(host, mode)
        os.lchown(host, owner.uid, owner.gid)
    return resolve_in_root(rootfs, path)


def copy_sources(
    rootfs: Path,
    source: BuildContext,
    matches: list[SourceMatch],
    dest: str,
    options: CopyOptions,
) -> None:
    """Copy the selected *matches* from *source* to container path *dest*."""
    dest_is_dir_hint = dest.endswith("/") or len(matches) > 1
    created_owner = options.owner or Identity(0, 0)
    created_mode = _created_dir_mode(options)
    for match in matches:
        if options.extract_archives and not match.is_dir and _is_archive(match.abs_path):
            extract_to = mkdir_p(rootfs, dest, created_owner)  # 0755 whatever --chmod says
            _extract(match.abs_path, extract_to, options)
            continue
        if match.is_dir:
            # the directory's contents go into dest; dest itself is made like any missing
            # parent and an existing one is left as it is: the source directory's own mode
            # and owner never reach it
            mkdir_p(rootfs, dest, created_owner, created_mode)
            _copy_entries(source.walk(match), rootfs, dest, options, skip_root=True)
            continue
        target = _file_destination(rootfs, dest, match, dest_is_dir_hint, created_owner,
                                   created_mode)  # fmt: skip
        _copy_entries(source.walk(match), rootfs, target, options, skip_root=False)


def _created_dir_mode(options: CopyOptions) -> int:
    """Directories a copy creates get the --chmod permission bits (BuildKit since v0.21,
    fsutil "copy: fix custom chmod for parent directories"; never setuid/setgid/sticky),
    else 0755; they get the --chown owner either way."""
    return options.chmod & 0o777 if options.chmod is not None else 0o755


def _file_destination(
    rootfs: Path, dest: str, match: SourceMatch, dir_hint: bool, owner: Identity, mode: int
) -> str:
    """The container path a single file is copied to (its parent is created)."""
    if dir_hint or resolve_in_root(rootfs, dest).is_dir():
        mkdir_p(rootfs, dest, owner, mode)
        return dest.rstrip("/") + "/" + os.path.basename(match.rel_path.rstrip("/"))
    parent, _, name = dest.rstrip("/").rpartition("/")
    mkdir_p(rootfs, parent or "/", owner, mode)
    return f"{parent}/{name}"


def _host_path(rootfs: Path, path: str, *, is_dir: bool) -> Path:
    """Where container path *path* lives on the host: parents resolved inside *rootfs*
    (a symlink in the image can never lead a copy outside it); the last component is
    followed only for directories (copying into a symlinked directory, as BuildKit)."""
    if is_dir:
        return resolve_in_root(rootfs, path)
    head, _, name = path.rstrip("/").rpartition("/")
    return resolve_in_root(rootfs, head or "/") / name


def _copy_entries(
    entries: Iterable[ContextEntry],
    rootfs: Path,
    target_root: str,
    options: CopyOptions,
    *,
    skip_root: bool,
) -> None:
    """Copy *entries* (relative to their source) to container path *target_root*."""
    dirs: list[tuple[Path, ContextEntry]] = []
    # files hard-linked to each other in the source stay linked in the copy (BuildKit)
    linked: dict[tuple[int, int], Path] = {}
    # directories this copy placed (real directories inside the root, never symlinks):
    # an entry below one goes straight into it, without resolving its whole path again
    # from the root (which made deep trees cost the cube of their depth)
    placed: dict[str, Path] = {}
    base = target_root.rstrip("/")
    for entry in entries:
        if skip_root and not entry.rel:
            continue
        target = _target(rootfs, base, entry, placed)
        st = os.lstat(entry.abs_path)
        if entry.kind == "dir":
            if os.path.lexists(target) and not (target.is_dir() and not target.is_symlink()):
                target.unlink()
            target.mkdir(exist_ok=True)
            placed[entry.rel] = target
            dirs.append((target, entry))
        else:
            _replace(target)
            inode = (st.st_dev, st.st_ino)
            if entry.kind == "symlink":
                os.symlink(os.readlink(entry.abs_path), target)
            elif st.st_nlink > 1 and inode in linked:
                os.link(linked[inode], target)
            else:
                shutil.copyfile(entry.abs_path, target, follow_symlinks=True)
                if st.st_nlink > 1:
                    linked[inode] = target
        _set_owner_mode(target, st, entry.kind, options)
        if entry.kind != "dir":
            os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
    for target, entry in reversed(dirs):
        st = os.stat(entry.abs_path)
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))


def _target(rootfs: Path, base: str, entry: ContextEntry, placed: dict[str, Path]) -> Path:
    parent_rel, _, name = entry.rel.rpartition("/")
    parent = placed.get(parent_rel) if entry.rel else None
    if parent is not None:
        candidate = parent / name
        if entry.kind != "dir" or not candidate.is_symlink():
            return candidate  # a symlinked directory is followed, inside the root, below
    container_path = f"{base}/{entry.rel}" if entry.rel else (base or "/")
    return _host_path(rootfs, container_path, is_dir=entry.kind == "dir")


def _replace(target: Path) -> None:
    if target.is_dir() and not target.is_symlink():
        raise ContextError(f"cannot copy to {target.name}: a directory is in the way")
    with contextlib.suppress(FileNotFoundError):
        target.unlink()


def _set_owner_mode(target: Path, st: os.stat_result, kind: str, options: CopyOptions) -> None:
    if options.owner is not None:
        uid, gid = options.owner.uid, options.owner.gid
    elif options.keep_owner:
        uid, gid = st.st_uid, st.st_gid
    else:
        uid, gid = 0, 0
    os.lchown(target, uid, gid)
    if kind == "symlink":
        return
    mode = options.chmod if options.chmod is not None else stat.S_IMODE(st.st_mode)
    os.chmod(target, mode)


def _new_file(rootfs: Path, dest: str, name: str, options: CopyOptions, *, into: bool) -> Path:
    """The host path of a file a COPY/ADD creates: ``dest/<name>`` when *into* or when
    dest ends with ``/`` or is a directory, else dest itself; parents are created."""
    owner = options.owner or Identity(0, 0)
    dir_mode = _created_dir_mode(options)
    if into or dest.endswith("/") or resolve_in_root(rootfs, dest).is_dir():
        parent = dest
    else:
        head, _, name = dest.rstrip("/").rpartition("/")
        parent = head or "/"
    mkdir_p(rootfs, parent, owner, dir_mode)
    target = _host_path(rootfs, f"{parent.rstrip('/')}/{name}", is_dir=False)
    _replace(target)
    return target


def _finish_file(target: Path, options: CopyOptions, default_mode: int) -> None:
    owner = options.owner or Identity(0, 0)
    os.lchown(target, owner.uid, owner.gid)
    os.chmod(target, options.chmod if options.chmod is not None else default_mode)


def write_inline(
    rootfs: Path, dest: str, files: Iterable[tuple[str, str]], options: CopyOptions, *, many: bool
) -> None:
    """Heredoc sources: each becomes a file (0644 unless --chmod)."""
    for name, content in files:
        target = _new_file(rootfs, dest, name, options, into=many)
        target.write_text(content)
        _finish_file(target, options, 0o644)


def place_download(
    rootfs: Path, dest: str, downloaded: Path, filename: str, mtime: float | None,
    options: CopyOptions,
) -> None:  # fmt: skip
    """ADD <url>: the file lands at dest (or dest/<filename>), mode 0600 unless --chmod."""
    target = _new_file(rootfs, dest, filename, options, into=False)
    shutil.copyfile(downloaded, target)
    _finish_file(target, options, 0o600)
    when = mtime if mtime is not None else time.time()
    os.utime(target, (when, when))


# ---------------------------------------------------------------------------- archives

_MAGIC = {
    b"\x1f\x8b": "gzip",
    b"BZh": "bzip2",
    b"\xfd7zXZ\x00": "xz",
    b"\x28\xb5\x2f\xfd": "zstd",
}


def _compression(path: Path) -> str | None:
    with path.open("rb") as fh:
        head = fh.read(6)
    for magic, name in _MAGIC.items():
        if head.startswith(magic):
            return name
    return None


def _tar_stream(raw: BinaryIO, kind: str | None) -> BinaryIO:
    if kind == "bzip2":
        return cast(BinaryIO, bz2.BZ2File(raw))
    if kind == "xz":
        return cast(BinaryIO, lzma.LZMAFile(raw))
    if kind in ("gzip", "zstd"):
        return cast(BinaryIO, decompressing_reader(raw, kind))
    return raw


def _is_archive(path: Path) -> bool:
    """A tar, plain or compressed (gzip, bzip2, xz, zstd), as ADD recognises them."""
    try:
        with path.open("rb") as raw:
            block = _tar_stream(raw, _compression(path)).read(512)
    except (OSError, EOFError, ValueError, lzma.LZMAError):
        return False
    return len(block) == 512 and block[257:262] == b"ustar"


def _extract(archive: Path, target: Path, options: CopyOptions) -> None:
    with archive.open("rb") as raw:
        unpack_layer(
            _tar_stream(raw, _compression(archive)), "uncompressed", target, mode="extract"
        )
    if options.owner is not None:
        _chown_members(archive, target, options.owner)


def _chown_members(archive: Path, target: Path, owner: Identity) -> None:
    """ADD --chown of an archive: its members take the owner (BuildKit 0.23 and later);
    what the destination already held, and parents the archive only implies, keep theirs."""
    names: dict[str, None] = {}
    with archive.open("rb") as raw:
        reader = TarReader(_tar_stream(raw, _compression(archive)))
        while (header := reader.next()) is not None:
            names[posixpath.normpath("/" + header.name)] = None
    for path in names:
        if path == "/":
            continue  # a "./" entry: extraction leaves the destination itself alone
        head, _, base = path.rpartition("/")
        host = resolve_in_root(target, head or "/") / base
        try:
            st = os.lstat(host)
        except FileNotFoundError:
            continue  # a whiteout marker: nothing was created under this name
        os.lchown(host, owner.uid, owner.gid)
        if not stat.S_ISLNK(st.st_mode):
            os.chmod(host, stat.S_IMODE(st.st_mode))  # chown cleared setuid and setgid


def file_owner(rootfs: Path, spec: str) -> Identity:
    """The owner BuildKit's file operations give for ``--chown=SPEC`` (and for WORKDIR
    under ``USER SPEC``): a name without a group takes its passwd group, but a numeric
    user without a group takes the same number as group, passwd entry or not (unlike a
    RUN step's user, whose group comes from passwd)."""
    if not spec:
        return Identity(0, 0)
    user, _, group = spec.partition(":")
    if user.isdigit() and not group:
        return Identity(int(user), int(user))
    found = resolve_user(rootfs, spec, what="user")
    return Identity(found.uid, found.gid)
