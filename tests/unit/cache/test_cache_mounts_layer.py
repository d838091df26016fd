"""kiln.differ.layer.write_tree (a plain directory as a layer blob: all of it, the entries a
filter accepts, whiteouts for deleted paths) and its inverse, unpack_stored(mode="apply")."""

from __future__ import annotations

import hashlib
import os
import stat
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest
import zstandard

from kiln.cache.mounts.tree import changes, scan
from kiln.content import BlobStore
from kiln.differ.layer import write_tree
from kiln.oci import OCI_LAYER_GZIP, OCI_LAYER_ZSTD, Layer
from kiln.snapshot.unpack import unpack_stored


@pytest.fixture
def store(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "blobs" / "sha256")


def snapshot(root: Path) -> dict[str, tuple[Any, ...]]:
    """Every entry below *root*: type and mode bits, owner, whole-second mtime, and the
    content (bytes digest), link target or device; hardlinks as the group of their names."""
    out: dict[str, tuple[Any, ...]] = {}
    groups: dict[int, list[str]] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        st = os.lstat(path)
        what: Any = None
        if stat.S_ISREG(st.st_mode):
            what = hashlib.sha256(path.read_bytes()).hexdigest(), st.st_size
            groups.setdefault(st.st_ino, []).append(rel)
        elif stat.S_ISLNK(st.st_mode):
            what = os.readlink(path)
        mtime = None if stat.S_ISLNK(st.st_mode) else st.st_mtime_ns // 10**9
        out[rel] = (stat.filemode(st.st_mode), st.st_uid, st.st_gid, mtime, what)
    out["<hardlinks>"] = tuple(sorted(tuple(g) for g in groups.values() if len(g) > 1))
    return out


def members(store: BlobStore, layer: Layer) -> list[str]:
    """The member names of a zstd layer blob, in order."""
    assert layer.blob.media_type == OCI_LAYER_ZSTD
    with store.path(layer.digest).open("rb") as fh:
        reader = zstandard.ZstdDecompressor().stream_reader(fh)
        with tarfile.open(fileobj=reader, mode="r|") as tar:
            return [m.name for m in tar]


def make_tree(root: Path) -> Path:
    root.mkdir()
    (root / "bin").mkdir()
    (root / "bin" / "tool").write_bytes(b"#!/bin/sh\necho hi\n")
    os.chmod(root / "bin" / "tool", 0o4755)  # setuid survives the chown on unpack
    (root / "data.bin").write_bytes(os.urandom(70_000))
    os.chmod(root / "data.bin", 0o600)
    os.chown(root / "data.bin", 1234, 5678)
    (root / "owned").mkdir()
    os.chown(root / "owned", 1234, 5678)
    os.chmod(root / "owned", 0o2750)
    (root / "shared").mkdir()
    os.chmod(root / "shared", 0o1777)
    (root / "empty" / "nested").mkdir(parents=True)
    (root / "zero").write_bytes(b"")
    os.link(root / "data.bin", root / "owned" / "hard")
    (root / "rel-link").symlink_to("bin/tool")
    (root / "abs-link").symlink_to("/etc/passwd")
    (root / "dangling").symlink_to("does/not/exist")
    os.lchown(root / "rel-link", 1234, 5678)
    os.mkfifo(root / "owned" / "fifo", 0o640)
    os.utime(root / "bin" / "tool", (1_600_000_000, 1_600_000_000))
    os.utime(root / "owned", (1_500_000_000, 1_500_000_000))  # after its contents
    return root


def test_a_tree_written_and_applied_to_an_empty_directory_is_the_same_tree(
    tmp_path: Path, store: BlobStore
) -> None:
    source = make_tree(tmp_path / "source")
    layer, content = write_tree(source, store)
    assert layer.blob.media_type == OCI_LAYER_ZSTD
    assert store.size(layer.digest) == layer.blob.size
    assert content == 70_000 + len(b"#!/bin/sh\necho hi\n")  # a hardlink holds no more bytes

    dest = tmp_path / "dest"
    dest.mkdir()
    unpack_stored(store, layer, dest, mode="apply")
    expected = snapshot(source)
    assert expected["<hardlinks>"] == (("data.bin", "owned/hard"),)
    assert snapshot(dest) == expected
    assert stat.S_ISFIFO(os.lstat(dest / "owned" / "fifo").st_mode)


def test_the_same_tree_makes_the_same_blob(tmp_path: Path, store: BlobStore) -> None:
    source = make_tree(tmp_path / "source")
    first, _ = write_tree(source, store)
    second, _ = write_tree(source, store)
    assert first == second
    gzip, _ = write_tree(source, store, compression="gzip")
    assert gzip.blob.media_type == OCI_LAYER_GZIP
    assert gzip.diff_id == first.diff_id  # same tar, another compression


def test_include_writes_only_accepted_entries_even_below_a_left_out_directory(
    tmp_path: Path, store: BlobStore
) -> None:
    source = make_tree(tmp_path / "source")
    accepted = {"owned/hard", "bin/tool", "zero"}
    layer, content = write_tree(source, store, include=accepted.__contains__)
    assert members(store, layer) == ["bin/tool", "owned/hard", "zero"]
    assert content == 70_000 + len(b"#!/bin/sh\necho hi\n")  # the first link holds the bytes


def test_whiteouts_come_first_and_name_the_deleted_paths(tmp_path: Path, store: BlobStore) -> None:
    source = make_tree(tmp_path / "source")
    layer, content = write_tree(source, store, include=lambda rel: False,
                                deleted=["z/gone", "a", "empty/nested"])  # fmt: skip
    assert members(store, layer) == [".wh.a", "empty/.wh.nested", "z/.wh.gone"]
    assert content == 0


def test_a_delta_applied_on_its_base_gives_the_changed_tree(
    tmp_path: Path, store: BlobStore
) -> None:
    tree = make_tree(tmp_path / "tree")
    (tree / "cache" / "pkg" / "v1").mkdir(parents=True)
    (tree / "cache" / "pkg" / "v1" / "lib.so").write_bytes(b"old lib")
    (tree / "cache" / "keep").write_bytes(b"keep")
    base, _ = write_tree(tree, store)
    before = scan(tree).table
    time.sleep(0.05)

    for rel in ("cache/pkg/v1/lib.so", "zero"):
        (tree / rel).unlink()
    (tree / "cache" / "pkg" / "v1").rmdir()
    (tree / "cache" / "pkg" / "v2").mkdir()
    (tree / "cache" / "pkg" / "v2" / "lib.so").write_bytes(b"new lib")
    (tree / "bin" / "tool").write_bytes(b"#!/bin/sh\necho bye\n")
    (tree / "dangling").unlink()
    (tree / "dangling").symlink_to("now/elsewhere")
    changed, deleted = changes(before, scan(tree).table)
    assert deleted == ["cache/pkg/v1", "zero"]
    delta, content = write_tree(tree, store, include=changed.__contains__, deleted=deleted)
    names = members(store, delta)
    assert names[:2] == ["cache/pkg/.wh.v1", ".wh.zero"]  # whiteouts first, by path
    assert "data.bin" not in names and "cache/keep" not in names  # unchanged: not written
    assert content == len(b"new lib") + len(b"#!/bin/sh\necho bye\n")
    assert delta.blob.size < base.blob.size / 10

    dest = tmp_path / "dest"
    dest.mkdir()
    unpack_stored(store, base, dest, mode="apply")
    unpack_stored(store, delta, dest, mode="apply")
    assert snapshot(dest) == snapshot(tree)
    assert not (dest / "cache" / "pkg" / "v1").exists()
