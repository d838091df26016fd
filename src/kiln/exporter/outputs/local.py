"""``type=local``: the final root filesystem written into a directory.

As buildx, the files are merged into ``dest`` (which may be ``.``): existing entries with
the same names are overwritten, nothing else there is touched or removed. Layers are
applied in order into a scratch directory first (whiteouts remove what lower layers
added), which is then copied over with ``cp -a``.

Ownership, modes (setuid/setgid included) and xattrs are written as the image has them,
as BuildKit's local exporter does when it runs as root; device nodes (character and block
devices, FIFOs are kept) are left out unless ``devices=true`` asks for them: a build
output should not put the image's ``/dev`` entries onto the host.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

from kiln.attrs import Attrs
from kiln.content import BlobLocator
from kiln.errors import KilnError, UsageError
from kiln.exporter.base import ExportContext, Exporter
from kiln.oci import Layer
from kiln.snapshot.unpack import unpack_stored


@dataclass(frozen=True, slots=True)
class LocalOutput:
    dest: str
    devices: bool = False


class LocalExporter(Exporter[LocalOutput]):
    """``type=local,dest=DIR`` (or a bare ``DIR``)."""

    name = "local"
    attributes = frozenset({"dest", "devices"})

    def parse(self, attrs: Attrs, tags: tuple[str, ...]) -> LocalOutput:
        return LocalOutput(attrs.required("dest", self.name), attrs.boolean("devices", False))

    def export(self, spec: LocalOutput, ctx: ExportContext) -> list[str]:
        """One root filesystem, or (multi-platform) one per platform in a subdirectory
        named as buildx does: ``linux_amd64``, ``linux_arm_v7``."""
        for platform, images in ctx.images.images:
            dest = Path(spec.dest)
            if ctx.images.multi:
                dest = dest / str(platform).replace("/", "_")
            ctx.message(f"writing root filesystem to {dest}")
            write_rootfs(images.layers, dest, ctx.locator, ctx.scratch("rootfs-"),
                         devices=spec.devices)  # fmt: skip
        return []


def _drop_devices(tree: Path) -> None:
    """Remove character and block devices below *tree* (symlinks are never followed)."""
    for folder, dirs, files in os.walk(tree):
        for name in files + dirs:
            path = os.path.join(folder, name)
            with contextlib.suppress(OSError):
                mode = os.lstat(path).st_mode
                if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                    os.unlink(path)


def write_rootfs(layers: list[Layer], dest: Path, locator: BlobLocator, scratch: Path, *,
                 devices: bool = False) -> None:  # fmt: skip
    """Apply *layers* in *scratch* (an empty directory), then merge the result into *dest*
    (device nodes left out unless *devices*)."""
    dest = dest.absolute()
    if dest.exists() and not dest.is_dir():
        raise UsageError(f"--output type=local: {dest} exists and is not a directory")
    tree = scratch / "rootfs"
    tree.mkdir()
    try:
        for layer in layers:
            locator.fetch(layer.blob, check=False)  # applying it verifies its diff ID
            unpack_stored(locator.store, layer, tree, mode="apply")
        if not devices:
            _drop_devices(tree)
        dest.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(
            ["cp", "-a", "--remove-destination", f"{tree}/.", str(dest)],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise KilnError(f"cannot write the root filesystem to {dest}", why=proc.stderr.strip())
    except OSError as exc:
        raise KilnError(f"cannot write the root filesystem to {dest}: {exc}") from exc
    finally:
        shutil.rmtree(tree, ignore_errors=True)
