"""The snapshot store with layer images: pulled layers become images mounted only for the
time of an overlay mount, built layers stay directories, and what an image cannot hold,
a kernel without EROFS or ``KILN_LAYER_IMAGES=0`` falls back to directories."""

from __future__ import annotations

import gzip
import hashlib
import os
from pathlib import Path

import pytest
from tests.unit.snapshot.tars import Member, reg, tar
from tests.unit.snapshot.test_snapshot_layerfs import needs_erofs, with_xattrs

from kiln.content import BlobStore
from kiln.errors import CorruptBlobError
from kiln.oci import OCI_LAYER_GZIP, Descriptor, Layer, digest_hex
from kiln.snapshot.snapshots import SnapshotStore
from kiln.state import KilnRoot

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="needs root: mounts"), needs_erofs]


def no_fetch(layer: Layer) -> None:
    raise AssertionError(f"{layer.digest} should be in the store")


def stored(blobs: BlobStore, *members: Member, diff_id: str | None = None) -> Layer:
    raw = tar(*members)
    blob = gzip.compress(raw)
    digest = blobs.put(blob)
    return Layer(Descriptor(OCI_LAYER_GZIP, digest, len(blob)),
                 diff_id or "sha256:" + hashlib.sha256(raw).hexdigest())  # fmt: skip


def mounts_below(path: Path) -> list[str]:
    prefix = str(path) + "/"
    return [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()
            if line.split()[1].startswith(prefix)]  # fmt: skip


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SnapshotStore:
    monkeypatch.delenv("KILN_LAYER_IMAGES", raising=False)
    root = KilnRoot(tmp_path / "root").ensure()
    return SnapshotStore(root, BlobStore(root.blobs))


def test_pulled_layers_are_images_mounted_only_while_used(store: SnapshotStore) -> None:
    bottom = stored(store.blobs, reg("etc/base", b"base"), reg("etc/gone", b"old"))
    top = stored(store.blobs, reg("etc/.wh.gone"), reg("app", b"app"))
    with store.mounted([bottom, top], no_fetch) as root:
        assert (root / "etc" / "base").read_bytes() == b"base"
        assert (root / "app").read_bytes() == b"app"
        assert not (root / "etc" / "gone").exists()  # the top image's whiteout hides it
        assert len(mounts_below(store.kiln_root.path)) == 3  # two images and the overlay
    for layer in (bottom, top):
        assert store.image_path(layer.diff_id).is_file()
        assert not store.path(layer.diff_id).exists()
    assert mounts_below(store.kiln_root.path) == []


def test_a_step_writes_over_images_and_its_layer_stays_a_directory(
    store: SnapshotStore, tmp_path: Path
) -> None:
    base = stored(store.blobs, reg("usr/lib/x", b"x"))
    upper = tmp_path / "upper"
    upper.mkdir()
    with store.mounted([base], no_fetch, upper=upper) as root:
        (root / "usr" / "lib" / "x").write_bytes(b"changed")
    assert (upper / "usr" / "lib" / "x").read_bytes() == b"changed"
    built = "sha256:" + "d" * 64
    store.adopt(upper, built)
    assert store.path(built).is_dir() and store.exists(built)
    with store.mounted([base, Layer(base.blob, built)], no_fetch) as root:
        assert (root / "usr" / "lib" / "x").read_bytes() == b"changed"


def test_an_opaque_image_root_hides_the_layers_below(store: SnapshotStore) -> None:
    bottom = stored(store.blobs, reg("old", b"o"))
    top = stored(store.blobs, reg(".wh..wh..opq"), reg("new", b"n"))
    with store.mounted([bottom, top], no_fetch) as root:
        assert sorted(p.name for p in root.iterdir()) == ["new"]


def test_a_layer_an_image_cannot_hold_is_unpacked_into_a_directory(store: SnapshotStore) -> None:
    layer = stored(store.blobs, with_xattrs(reg("f", b"f"), user__big="v" * 4000))
    with store.mounted([layer], no_fetch) as root:
        assert os.getxattr(root / "f", "user.big") == b"v" * 4000
    assert store.path(layer.diff_id).is_dir()
    assert not store.image_path(layer.diff_id).exists()


def test_images_can_be_turned_off(store: SnapshotStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KILN_LAYER_IMAGES", "0")
    layer = stored(store.blobs, reg("f", b"f"))
    with store.mounted([layer], no_fetch) as root:
        assert (root / "f").read_bytes() == b"f"
    assert store.path(layer.diff_id).is_dir()


def test_a_blob_that_is_not_its_layer_leaves_no_image(store: SnapshotStore) -> None:
    layer = stored(store.blobs, reg("f", b"f"), diff_id="sha256:" + "e" * 64)
    with pytest.raises(CorruptBlobError), store.mounted([layer], no_fetch):
        pass
    assert not store.exists(layer.diff_id)
    assert not store.blobs.has(layer.digest)  # fetched again next time
    leftovers = [p.name for p in store.root.iterdir() if digest_hex(layer.diff_id) in p.name]
    assert leftovers == [f".{'e' * 64}.lock"]
    assert mounts_below(store.kiln_root.path) == []
