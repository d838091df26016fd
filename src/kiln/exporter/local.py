"""``type=local``: the final root filesystem written to a directory.

Layers are applied in order into a fresh directory next to the destination (whiteouts
remove what lower layers added), which then replaces the destination's content.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from kiln.content import BlobLocator
from kiln.errors import KilnError
from kiln.oci import Layer, compression_of
from kiln.snapshot.unpack import unpack_layer


def write_rootfs(layers: list[Layer], dest: Path, locator: BlobLocator) -> None:
    dest = dest.absolute()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.kiln-tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        for layer in layers:
            locator.fetch(layer.blob)
            with locator.store.path(layer.digest).open("rb") as fh:
                unpack_layer(fh, compression_of(layer.blob.media_type), tmp, mode="apply")
        if dest.is_dir() and not dest.is_symlink():
            old = dest.with_name(f".{dest.name}.kiln-old")
            shutil.rmtree(old, ignore_errors=True)
            os.rename(dest, old)
            os.rename(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        elif os.path.lexists(dest):
            raise KilnError(f"--output type=local: {dest} exists and is not a directory")
        else:
            os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
