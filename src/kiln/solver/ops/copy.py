"""COPY and ADD: sources from the context, another stage or image, a heredoc or a URL.

What is copied from the build context must be what the step's key was computed from: the
context is digested again afterwards and a change is an error, never a wrong hit.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

from kiln.errors import ContextError
from kiln.frontend.base import (
    ContextSource,
    CopyOp,
    ImageSource,
    InlineSource,
    StageSource,
    UrlSource,
)
from kiln.solver.ops import file as fileops
from kiln.source.context import BuildContext
from kiln.source.dockerignore import IgnoreMatcher
from kiln.source.http import downloaded
from kiln.state import KilnRoot

Mounted = Callable[[ImageSource | int], AbstractContextManager[Path]]
"""Mounts an image's or another stage's (by index) filesystem for the copy."""


def run_copy(op: CopyOp, rootfs: Path, *, context: BuildContext, mounted: Mounted,
             root: KilnRoot) -> None:  # fmt: skip
    options = fileops.CopyOptions(
        owner=fileops.file_owner(rootfs, op.chown) if op.chown else None,
        chmod=int(op.chmod, 8) if op.chmod else None,
        keep_owner=isinstance(op.source, (StageSource, ImageSource)),
        extract_archives=op.add,
    )
    source = op.source
    if isinstance(source, ContextSource):
        matches = context.select(list(op.srcs))
        fileops.copy_sources(rootfs, context, matches, op.dest, options)
        # what was copied must be what the key was computed from (never a wrong hit)
        if context.digest(list(op.srcs), chown=op.chown, chmod=op.chmod) != source.digest:
            raise ContextError(
                "the build context changed while the build was running",
                hint="run the build again once the files stop changing",
            )
    elif isinstance(source, (StageSource, ImageSource)):
        origin = source if isinstance(source, ImageSource) else source.stage
        with mounted(origin) as src_root:
            src = BuildContext(src_root, IgnoreMatcher([]))
            fileops.copy_sources(rootfs, src, src.select(list(op.srcs)), op.dest, options)
    elif isinstance(source, InlineSource):
        fileops.write_inline(rootfs, op.dest, source.files, options, many=len(source.files) > 1)
    else:
        assert isinstance(source, UrlSource)
        download = downloaded(root, source.url, source.digest)
        fileops.place_download(
            rootfs, op.dest, download.path, download.filename, download.mtime, options
        )
