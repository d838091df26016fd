"""Whiteouts: how a layer says "this path was deleted" in each of its two forms.

In a layer tar (OCI image-spec, inherited from AUFS) a deleted ``<name>`` is an empty file
``.wh.<name>`` in the same directory, and a directory whose lower contents are hidden
holds the marker ``.wh..wh..opq``. On disk, in an overlayfs upper or lower dir, a deleted
name is a character device 0/0 and an opaque directory carries the xattr
``trusted.overlay.opaque=y``. The differ converts disk → tar, the unpacker tar → disk.
"""

from __future__ import annotations

import os
import stat
from enum import Enum

WHITEOUT_PREFIX = ".wh."
# Names starting with this are AUFS metadata (".wh..wh.plnk", ".wh..wh.aufs"), never files.
WHITEOUT_META_PREFIX = ".wh..wh."
OPAQUE_MARKER = ".wh..wh..opq"

OVERLAY_XATTR_PREFIX = "trusted.overlay."
OVERLAY_OPAQUE_XATTR = "trusted.overlay.opaque"
# Present only when the overlay was mounted with redirect_dir / metacopy: the upper dir
# then does not hold a directory's (or file's) full content, so it cannot become a layer.
OVERLAY_REDIRECT_XATTR = "trusted.overlay.redirect"
OVERLAY_METACOPY_XATTR = "trusted.overlay.metacopy"


class Whiteout(Enum):
    """What a tar member's base name means for the layer."""

    FILE = "file"  # ``.wh.<name>``: <name> is deleted
    OPAQUE = "opaque"  # ``.wh..wh..opq``: the directory hides everything below it
    META = "meta"  # other ``.wh..wh.*``: AUFS bookkeeping, ignored


def classify(base: str) -> tuple[Whiteout, str] | None:
    """Classify a tar member's base name; for :attr:`Whiteout.FILE` also the hidden name.

    Returns ``None`` for an ordinary name. A ``.wh.`` name whose target is empty, ``.`` or
    ``..`` cannot name a sibling and is reported as :attr:`Whiteout.META` (ignored).
    """
    if not base.startswith(WHITEOUT_PREFIX):
        return None
    if base == OPAQUE_MARKER:
        return Whiteout.OPAQUE, ""
    if base.startswith(WHITEOUT_META_PREFIX):
        return Whiteout.META, ""
    target = base[len(WHITEOUT_PREFIX) :]
    if target in ("", ".", "..") or "/" in target:
        return Whiteout.META, ""
    return Whiteout.FILE, target


def whiteout_name(name: str) -> str:
    """The tar base name that deletes *name*."""
    return WHITEOUT_PREFIX + name


def is_overlay_whiteout(st: os.stat_result) -> bool:
    """True for overlayfs's deleted-file marker: a character device with number 0/0."""
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def is_opaque_value(value: bytes | None) -> bool:
    """True for the value of ``trusted.overlay.opaque`` that makes a directory opaque."""
    return value == b"y"


def make_overlay_whiteout(path: str, *, uid: int = 0, gid: int = 0) -> None:
    """Create overlayfs's deleted-file marker at *path* (mode 0, like the kernel's)."""
    os.mknod(path, stat.S_IFCHR, os.makedev(0, 0))
    if uid or gid:
        os.chown(path, uid, gid, follow_symlinks=False)


def mark_opaque(path: str) -> None:
    """Make the directory at *path* opaque for overlayfs."""
    os.setxattr(path, OVERLAY_OPAQUE_XATTR, b"y", follow_symlinks=False)
