"""overlayfs mounts for a step: the parent layers as lowerdirs plus a fresh upperdir;
layer images (EROFS) mounted read-only to serve as lowerdirs.

Lower directories are passed as short relative names (``l/<id>``, ``i/<n>``) from the
directory the mount runs in, so a mount of over a hundred layers fits the kernel's
one-page option limit.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

from kiln.errors import RuntimeFailure

# kernel features that would make the upper dir a non-self-contained diff
_OPTIONS = "index=off,redirect_dir=off,metacopy=off"
_PAGE = 4096
EMPTY = ("empty", "empty2")  # empty directories under the snapshot root, for padding


def mount_overlay(
    cwd: Path,
    lowers: Sequence[str],
    target: Path,
    *,
    upper: Path | None = None,
    work: Path | None = None,
) -> None:
    """Mount *lowers* (names relative to *cwd*, top-most first) at *target*.

    Without *upper* the mount is read-only.
    """
    names = list(lowers)
    # overlay needs two lowers when there is no upper dir, one otherwise (distinct ones:
    # a repeated lowerdir is refused)
    names += EMPTY[: max(0, (1 if upper else 2) - len(names))]
    options = f"lowerdir={':'.join(names)}"
    if upper is not None:
        assert work is not None
        options += f",upperdir={upper},workdir={work}"
    options += "," + _OPTIONS
    if len(options) >= _PAGE:
        raise RuntimeFailure(
            f"too many layers to mount ({len(names)})",
            hint="squash the base image or reduce the number of steps",
        )
    cmd = ["mount", "-t", "overlay", "overlay", "-o", options, str(target)]
    if upper is None:
        cmd[1:1] = ["-r"]
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeFailure(
            f"cannot mount overlayfs at {target}",
            why=proc.stderr.strip(),
            hint="kiln needs root and a kernel with overlayfs; the kernel log (dmesg) says "
            "why overlayfs refused the mount",
        )


_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MNT_DETACH = 1, 2, 4, 2
_libc = ctypes.CDLL(None, use_errno=True)


def mount_image(image: Path, target: Path) -> None:
    """Mount the EROFS *image* (a regular file: the kernel reads it directly, no loop
    device) read-only at *target*."""
    flags = _MS_RDONLY | _MS_NODEV | _MS_NOSUID
    if _libc.mount(os.fsencode(image), os.fsencode(target), b"erofs", flags, None) != 0:
        code = ctypes.get_errno()
        raise RuntimeFailure(
            f"cannot mount the layer image {image}",
            why=os.strerror(code),
            hint="set KILN_LAYER_IMAGES=0 to unpack layers into directories instead; the "
            "kernel log (dmesg) says why EROFS refused the image",
        )


def unmount(target: Path) -> None:
    """Unmount an overlay or an image at *target*, lazily (detached, freed when no longer
    busy) if it is still in use."""
    if _libc.umount2(os.fsencode(target), 0) != 0:
        why = os.strerror(ctypes.get_errno())
        if _libc.umount2(os.fsencode(target), _MNT_DETACH) != 0:
            raise RuntimeFailure(f"cannot unmount {target}", why=why)
