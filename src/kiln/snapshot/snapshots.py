"""Unpacked layers, shared by every build: ``$KILN_ROOT/snapshots/<diff id hex>`` (a
directory) or ``<diff id hex>.erofs`` (an image).

A pulled layer is written once as an EROFS image (:mod:`kiln.snapshot.layerfs`: a few
large writes instead of a file per member) where the kernel can mount one, else unpacked
into a directory; either is made in a temporary place, its diff ID verified, then renamed
into place, and used read-only as an overlay lowerdir from then on: an image is mounted
for the time of each overlay mount, below that mount's own scratch directory, so nothing
stays mounted when kiln exits (a killed kiln's mounts go with its session:
:func:`kiln.state.sweep_stale_sessions`). ``KILN_LAYER_IMAGES=0`` unpacks into
directories always, ``=1`` writes images always. A step's upper dir becomes the snapshot
of the layer it produced, so a freshly built layer is never unpacked.

Each snapshot has a lock file, ``.<diff id hex>.lock``: held exclusively while the
snapshot is made, shared while it is mounted (:meth:`SnapshotStore.mounted`), and its
mtime is the snapshot's last use. ``kiln prune`` (:mod:`kiln.gc`) removes a snapshot only
when it can take that lock at once, so a mounted snapshot is never removed; one removed
between two steps is unpacked again from its blob.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from kiln.archive.whiteouts import OVERLAY_OPAQUE_XATTR, is_opaque_value
from kiln.content import BlobStore
from kiln.errors import KilnError
from kiln.oci import Layer, digest_hex
from kiln.snapshot.erofs import ImageWriter, Inode, UnsupportedImage
from kiln.snapshot.layerfs import write_layer_image
from kiln.snapshot.overlay import EMPTY, mount_image, mount_overlay, unmount
from kiln.snapshot.unpack import read_stored, unpack_stored
from kiln.state import KilnRoot
from kiln.timing import timed

# fetches a layer's blob into the blob store (from a registry or a remote cache); the
# unpacking that follows verifies its diff ID
BlobFetcher = Callable[[Layer], None]

log = logging.getLogger(__name__)

_SHORT = 16  # hex digits of a snapshot's short link name


class SnapshotStore:
    def __init__(self, root: KilnRoot, blobs: BlobStore) -> None:
        self.kiln_root = root
        self.root = root.snapshots
        self.blobs = blobs
        (self.root / "l").mkdir(parents=True, exist_ok=True)
        for name in EMPTY:
            (self.root / name).mkdir(exist_ok=True)
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._images: bool | None = None  # whether pulled layers become images

    def path(self, diff_id: str) -> Path:
        return self.root / digest_hex(diff_id)

    def image_path(self, diff_id: str) -> Path:
        return self.root / f"{digest_hex(diff_id)}.erofs"

    def link_name(self, diff_id: str) -> str:
        return "l/" + digest_hex(diff_id)[:_SHORT]

    def exists(self, diff_id: str) -> bool:
        return self.path(diff_id).is_dir() or self.image_path(diff_id).is_file()

    def _use_images(self) -> bool:
        if self._images is None:
            choice = os.environ.get("KILN_LAYER_IMAGES", "")
            self._images = choice == "1" or (choice != "0" and image_mounts_work(
                self.kiln_root.tempdir("probe-")))  # fmt: skip
        return self._images

    def lock_path(self, diff_id: str) -> Path:
        return self.root / f".{digest_hex(diff_id)}.lock"

    def _touch(self, diff_id: str) -> None:
        """Mark the snapshot used now (its lock file's mtime)."""
        with contextlib.suppress(OSError), open(self.lock_path(diff_id), "a"):
            os.utime(self.lock_path(diff_id))

    @contextlib.contextmanager
    def _locked(self, diff_id: str) -> Iterator[None]:
        with self._locks_guard:
            lock = self._locks.setdefault(diff_id, threading.Lock())
        lock_file = self.lock_path(diff_id)
        with lock, open(lock_file, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _link(self, diff_id: str) -> None:
        link = self.root / self.link_name(diff_id)
        if not link.is_symlink():
            tmp = link.with_name(f"{link.name}.{os.getpid()}.{threading.get_ident()}.tmp")
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            tmp.symlink_to("../" + digest_hex(diff_id))
            os.replace(tmp, link)  # atomic; a concurrent caller's identical link is fine

    def ensure(self, layer: Layer, fetch: BlobFetcher) -> None:
        """Make *layer*'s snapshot (fetching its blob) unless it exists."""
        if self.exists(layer.diff_id):
            return
        with self._locked(layer.diff_id):
            if self.exists(layer.diff_id):
                return
            started = time.monotonic()
            if not self.blobs.touch(layer.digest):
                fetch(layer)
            fetched = time.monotonic()
            if not (self._use_images() and self._write_image(layer)):
                self._unpack(layer)
            log.debug("layer %s (%d bytes): fetched in %.3f s, unpacked in %.3f s",
                      layer.digest[:19], layer.blob.size, fetched - started,
                      time.monotonic() - fetched)  # fmt: skip
            self._touch(layer.diff_id)

    def _unpack(self, layer: Layer) -> None:
        tmp = self.kiln_root.tempdir("unpack-")
        try:
            unpack_stored(self.blobs, layer, tmp)
            os.rename(tmp, self.path(layer.diff_id))
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._link(layer.diff_id)

    @timed("unpack")
    def _write_image(self, layer: Layer) -> bool:
        """Write *layer* as an image; False when it holds what an image cannot."""
        tmp = self.kiln_root.tempdir("image-") / "layer.erofs"
        try:
            read_stored(self.blobs, layer, lambda blob, compression: write_layer_image(
                blob, compression, tmp))  # fmt: skip
            os.rename(tmp, self.image_path(layer.diff_id))
        except UnsupportedImage as exc:
            log.debug("layer %s unpacked into a directory: %s", layer.digest[:19], exc)
            return False
        finally:
            shutil.rmtree(tmp.parent, ignore_errors=True)
        return True

    def adopt(self, upper: Path, diff_id: str) -> None:
        """Make a step's upper dir the snapshot of the layer it produced."""
        if self.exists(diff_id):  # no exclusive lock: another step may have it mounted
            shutil.rmtree(upper, ignore_errors=True)
        else:
            with self._locked(diff_id):
                if self.exists(diff_id):
                    shutil.rmtree(upper, ignore_errors=True)
                else:
                    os.rename(upper, self.path(diff_id))
                    self._link(diff_id)
        self._touch(diff_id)

    def _hold(self, layer: Layer, fetch: BlobFetcher, stack: contextlib.ExitStack) -> None:
        """Hold *layer*'s snapshot shared until *stack* closes (``kiln prune`` leaves it),
        making it again if it was pruned since it was ensured."""
        while True:
            fh = stack.enter_context(open(self.lock_path(layer.diff_id), "a"))  # noqa: SIM115
            fcntl.flock(fh, fcntl.LOCK_SH)
            if self.exists(layer.diff_id):
                with contextlib.suppress(OSError):
                    os.utime(self.lock_path(layer.diff_id))
                if self.path(layer.diff_id).is_dir():
                    self._link(layer.diff_id)
                return
            fh.close()  # pruned meanwhile: unpack it again (exclusively), then hold it
            self.ensure(layer, fetch)

    def lowers(self, chain: Sequence[Layer], fetch: BlobFetcher, hold: contextlib.ExitStack,
               scratch: Path) -> list[str]:  # fmt: skip
        """Overlay lowerdir names for *chain* (bottom layer first), top-most first, relative
        to *scratch*: ``l/<id>`` for a directory (*scratch*/``l`` links to the store's
        links), ``i/<n>`` for an image, mounted there until *hold* closes. Missing layers
        are fetched and made in parallel, and every snapshot is held shared until *hold*
        closes.

        A layer that occurs more than once (two steps that made byte-identical layers, an
        image whose manifest repeats one) is listed once, at its top-most place: overlayfs
        refuses a repeated lowerdir, and the lower copy cannot show through the upper one,
        which holds the same entries (whiteouts and opaque markers included). A layer whose
        root is opaque ends the list: what lies below it is hidden, as when the layers are
        applied one by one."""
        missing = {layer.diff_id: layer for layer in chain if not self.exists(layer.diff_id)}
        if len(missing) > 1:
            with ThreadPoolExecutor(max_workers=min(4, len(missing))) as pool:
                list(pool.map(lambda layer: self.ensure(layer, fetch), missing.values()))
        for layer in chain:
            self.ensure(layer, fetch)
        for layer in {layer.diff_id: layer for layer in chain}.values():
            self._hold(layer, fetch, hold)
        (scratch / "l").symlink_to(self.root / "l")
        for name in EMPTY:
            (scratch / name).mkdir()
        names: list[str] = []
        listed: set[str] = set()
        for layer in reversed(chain):
            if layer.diff_id in listed:
                continue
            listed.add(layer.diff_id)
            if self.path(layer.diff_id).is_dir():
                names.append(self.link_name(layer.diff_id))
                root = self.path(layer.diff_id)
            else:
                name = f"i/{len(names)}"
                root = scratch / name
                root.mkdir(parents=True)
                mount_image(self.image_path(layer.diff_id), root)
                hold.callback(unmount, root)
                names.append(name)
            if _opaque_root(root):
                break  # it hides every layer below (overlayfs ignores a lowerdir root's mark)
        return names

    @contextlib.contextmanager
    def mounted(
        self, chain: Sequence[Layer], fetch: BlobFetcher, *, upper: Path | None = None
    ) -> Iterator[Path]:
        """Mount *chain* (read-only, or with *upper* as the writable layer); its snapshots
        are held shared while it is mounted."""
        scratch = self.kiln_root.tempdir("mnt-")
        work = None
        try:
            with contextlib.ExitStack() as held:
                lowers = self.lowers(chain, fetch, held, scratch)
                target = scratch / "root"
                target.mkdir()
                if upper is not None:
                    work = upper.parent / (upper.name + ".work")
                    work.mkdir(exist_ok=True)
                mount_overlay(scratch, lowers, target, upper=upper, work=work)
                try:
                    yield target
                finally:
                    unmount(target)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
            if work is not None:
                shutil.rmtree(work, ignore_errors=True)


def _opaque_root(root: Path) -> bool:
    """Whether a layer's root carries the opaque mark (``/.wh..wh..opq``)."""
    try:
        value = os.getxattr(root, OVERLAY_OPAQUE_XATTR, follow_symlinks=False)
    except OSError:
        return False
    return is_opaque_value(value)


def image_mounts_work(scratch: Path) -> bool:
    """Whether this kernel mounts an EROFS image straight from a file (Linux 6.12+ with
    EROFS): tried once with an empty image in *scratch*, which is removed."""
    image, target = scratch / "probe.erofs", scratch / "mnt"
    try:
        with open(image, "xb") as out:
            ImageWriter(out).finish(Inode(0o040755, 0, 0, 0, children={}), 0)
        target.mkdir()
        mount_image(image, target)
        unmount(target)
        return True
    except (OSError, KilnError) as exc:
        log.debug("layers are unpacked into directories: %s", exc)
        return False
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
