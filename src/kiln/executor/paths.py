"""Paths inside a container root filesystem, resolved as the container would see them.

Symlinks are followed relative to the root (an absolute link target means the rootfs's
own ``/``), and ``..`` never climbs above it, so a hostile image cannot make kiln read or
write host files (the idea of Go's ``securejoin``).
"""

from __future__ import annotations

import os
from pathlib import Path

_MAX_LINKS = 255


def resolve_in_root(root: Path, path: str, *, follow_last: bool = True) -> Path:
    """The host path of container path *path* under *root* (which need not exist)."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    resolved: list[str] = []
    links = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = root.joinpath(*resolved, part)
        is_last = not parts
        if (follow_last or not is_last) and candidate.is_symlink():
            links += 1
            if links > _MAX_LINKS:
                raise OSError(f"too many levels of symbolic links resolving {path}")
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            continue
        resolved.append(part)
    return root.joinpath(*resolved)
