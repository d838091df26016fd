"""write_layer: upper dir → deterministic OCI layer blob, inspected with stdlib tarfile."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import tarfile
from pathlib import Path

import pytest
import zstandard

from kiln.content import BlobStore
from kiln.differ.layer import write_layer
from kiln.errors import RuntimeFailure, UsageError
from kiln.oci import (
    DOCKER_LAYER_GZIP,
    OCI_LAYER_GZIP,
    OCI_LAYER_TAR,
    OCI_LAYER_ZSTD,
    Layer,
)

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mknod, chown, trusted.*)")

T0 = 1_600_000_000


@pytest.fixture
def store(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "blobs")


def _file(path: Path, data: bytes = b"data", mode: int = 0o644, mtime: int = T0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)
    os.utime(path, (mtime, mtime))
    return path


def _members(store: BlobStore, layer: Layer) -> list[tarfile.TarInfo]:
    with tarfile.open(store.path(layer.digest), encoding="utf-8") as tf:
        return tf.getmembers()


def _uncompressed(store: BlobStore, layer: Layer) -> bytes:
    raw = store.read(layer.digest)
    if layer.blob.media_type.endswith("zstd"):
        return zstandard.ZstdDecompressor().decompressobj().decompress(raw)
    if layer.blob.media_type.endswith("gzip"):
        return gzip.decompress(raw)
    return raw


def test_empty_upper_dir_is_no_layer(tmp_path: Path, store: BlobStore) -> None:
    upper = tmp_path / "upper"
    upper.mkdir()
    assert write_layer(upper, store) is None
    assert list(store.digests()) == []


def test_layer_blob_descriptor_and_diff_id(tmp_path: Path, store: BlobStore) -> None:
    upper = tmp_path / "upper"
    _file(upper / "etc" / "motd", b"hello\n")
    layer = write_layer(upper, store)
    assert layer is not None
    blob = store.read(layer.digest)
    assert layer.blob.media_type == OCI_LAYER_GZIP
    assert layer.blob.size == len(blob)
    assert layer.digest == "sha256:" + hashlib.sha256(blob).hexdigest()
    assert layer.diff_id == "sha256:" + hashlib.sha256(gzip.decompress(blob)).hexdigest()


@pytest.mark.parametrize(
    ("compression", "oci", "media_type"),
    [
        ("gzip", True, OCI_LAYER_GZIP),
        ("gzip", False, DOCKER_LAYER_GZIP),
        ("zstd", True, OCI_LAYER_ZSTD),
        ("uncompressed", True, OCI_LAYER_TAR),
    ],
)
def test_compressions_and_media_types(
    tmp_path: Path, store: BlobStore, compression: str, oci: bool, media_type: str
) -> None:
    upper = tmp_path / "upper"
    _file(upper / "a", os.urandom(300_000))
    layer = write_layer(upper, store, compression=compression, oci_media_types=oci)
    assert layer is not None
    assert layer.blob.media_type == media_type
    tar = _uncompressed(store, layer)
    assert layer.diff_id == "sha256:" + hashlib.sha256(tar).hexdigest()
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        member = tf.extractfile("a")
        assert member is not None
        assert member.read() == (upper / "a").read_bytes()


def test_gzip_blob_is_readable_by_stdlib_tarfile(tmp_path: Path, store: BlobStore) -> None:
    upper = tmp_path / "upper"
    _file(upper / "bin" / "tool", b"#!/bin/sh\n", 0o755)
    layer = write_layer(upper, store)
    assert layer is not None
    with tarfile.open(store.path(layer.digest), mode="r:gz") as tf:
        assert tf.getnames() == ["bin", "bin/tool"]


def test_order_is_bytewise_with_parents_first(tmp_path: Path, store: BlobStore) -> None:
    upper = tmp_path / "upper"
    for rel in ["b", "a-b", "a/z", "a/B", "A", "a/é", "a/e"]:
        _file(upper / rel)
    layer = write_layer(upper, store)
    assert layer is not None
    names = [m.name for m in _members(store, layer)]
    # per directory in byte order: "A" < "a" < "a-b" < "b"; "B" < "e" < "z" < "é"
    assert names == ["A", "a", "a/B", "a/e", "a/z", "a/é", "a-b", "b"]


def test_headers_are_normalised(tmp_path: Path, store: BlobStore) -> None:
    upper = tmp_path / "upper"
    _file(upper / "setuid", mode=0o4755)
    _file(upper / "setgid", mode=0o2711)
    (upper / "sticky").mkdir(mode=0o755)
    (upper / "sticky").chmod(0o1777)
    os.symlink("setuid", upper / "link")
    os.mkfifo(upper / "fifo")
    layer = write_layer(upper, store)
    assert layer is not None
    raw = _uncompressed(store, layer)
    members = {m.name: m for m in _members(store, layer)}
    assert members["setuid"].mode == 0o4755
    assert members["setgid"].mode == 0o2711
    assert members["sticky"].mode == 0o1777 and members["sticky"].isdir()
    assert members["link"].issym() and members["link"].linkname == "setuid"
    assert members["fifo"].isfifo()
    for m in members.values():
        assert (m.uname, m.gname) == ("", "")
        assert m.uid == os.geteuid()
        assert isinstance(m.mtime, int)
        assert "atime" not in m.pax_headers and "ctime" not in m.pax_headers
    assert b"ustar\x0000" in raw[:512]


def test_hardlinks_within_the_layer(tmp_path: Path, store: BlobStore) -> None:
    upper = tmp_path / "upper"
    _file(upper / "z-first", b"shared")
    os.link(upper / "z-first", upper / "a-second")
    (upper / "m").mkdir()
    os.link(upper / "z-first", upper / "m" / "third")
    layer = write_layer(upper, store)
    assert layer is not None
    members = {m.name: m for m in _members(store, layer)}
    assert members["a-second"].isreg() and members["a-second"].size == 6
    assert members["m/third"].islnk() and members["m/third"].linkname == "a-second"
    assert members["z-first"].islnk() and members["z-first"].linkname == "a-second"


def test_same_tree_gives_same_digests(tmp_path: Path, store: BlobStore) -> None:
    upper = tmp_path / "upper"
    _file(upper / "a" / "b", os.urandom(10_000))
    _file(upper / "c", b"c" * 100_000)
    os.symlink("a/b", upper / "d")
    for compression in ("gzip", "zstd", "uncompressed"):
        first = write_layer(upper, store, compression=compression)
        second = write_layer(upper, store, compression=compression)
        assert first is not None and second is not None
        assert first == second


def test_source_date_epoch_clamps_later_mtimes(tmp_path: Path, store: BlobStore) -> None:
    epoch = 1_500_000_000

    def build(root: Path, late: int) -> Layer:
        _file(root / "old", b"o", mtime=1_000)
        _file(root / "new", b"n", mtime=late)
        os.utime(root, (late, late))
        layer = write_layer(root, store, source_date_epoch=epoch)
        assert layer is not None
        return layer

    one = build(tmp_path / "one", 1_700_000_000)
    two = build(tmp_path / "two", 1_800_000_123)
    assert one.digest == two.digest
    mtimes = {m.name: m.mtime for m in _members(store, one)}
    assert mtimes == {"new": epoch, "old": 1_000}
    unclamped = write_layer(tmp_path / "two", store)
    assert unclamped is not None
    assert {m.name: m.mtime for m in _members(store, unclamped)}["new"] == 1_800_000_123


def test_user_xattrs_are_kept(tmp_path: Path, store: BlobStore) -> None:
    upper = tmp_path / "upper"
    path = _file(upper / "f")
    os.setxattr(path, "user.z", b"\xff\x00binary")
    os.setxattr(path, "user.a", b"text")
    layer = write_layer(upper, store)
    assert layer is not None
    pax = _members(store, layer)[0].pax_headers
    xattrs = {k: v.encode("utf-8", "surrogateescape") for k, v in pax.items()}
    assert xattrs == {"SCHILY.xattr.user.a": b"text", "SCHILY.xattr.user.z": b"\xff\x00binary"}
    raw = _uncompressed(store, layer)
    assert raw.index(b"user.a") < raw.index(b"user.z")  # sorted: deterministic


@needs_root
def test_overlay_whiteouts_become_wh_files(tmp_path: Path, store: BlobStore) -> None:
    upper = tmp_path / "upper"
    (upper / "etc").mkdir(parents=True)
    os.mknod(upper / "etc" / "passwd-", stat.S_IFCHR, os.makedev(0, 0))
    os.mknod(upper / "gone", stat.S_IFCHR, os.makedev(0, 0))
    os.mknod(upper / "tty", stat.S_IFCHR | 0o620, os.makedev(5, 0))  # a real device stays
    # overlayfs shares one whiteout inode between deletions: not a hardlink in the tar
    os.link(upper / "gone", upper / "etc" / "gone2")
    layer = write_layer(upper, store)
    assert layer is not None
    members = {m.name: m for m in _members(store, layer)}
    assert set(members) == {"etc", "etc/.wh.passwd-", "etc/.wh.gone2", ".wh.gone", "tty"}
    for name in ("etc/.wh.passwd-", "etc/.wh.gone2", ".wh.gone"):
        assert members[name].isreg() and members[name].size == 0
    assert members["tty"].ischr() and (members["tty"].devmajor, members["tty"].devminor) == (5, 0)


@needs_root
def test_opaque_dir_gets_marker_and_overlay_xattrs_are_dropped(
    tmp_path: Path, store: BlobStore
) -> None:
    upper = tmp_path / "upper"
    opq = upper / "var" / "cache"
    _file(opq / "new")
    os.setxattr(opq, "trusted.overlay.opaque", b"y")
    os.setxattr(upper / "var", "trusted.overlay.impure", b"y")
    os.chown(opq / "new", 1234, 5678)  # before the capability: chown clears it
    os.setxattr(opq / "new", "trusted.other", b"host-only")
    os.setxattr(opq / "new", "security.capability", b"\x01\x00\x00\x02" + bytes(16))
    layer = write_layer(upper, store)
    assert layer is not None
    members = _members(store, layer)
    assert [m.name for m in members] == [
        "var",
        "var/cache",
        "var/cache/.wh..wh..opq",
        "var/cache/new",
    ]
    assert members[2].isreg() and members[2].size == 0
    assert not any("trusted" in key for m in members for key in m.pax_headers)
    new = members[3]
    assert (new.uid, new.gid) == (1234, 5678)
    assert set(new.pax_headers) == {"SCHILY.xattr.security.capability"}


@needs_root
def test_opaque_xattr_other_than_y_is_not_opaque(tmp_path: Path, store: BlobStore) -> None:
    upper = tmp_path / "upper"
    (upper / "d").mkdir(parents=True)
    os.setxattr(upper / "d", "trusted.overlay.opaque", b"n")
    layer = write_layer(upper, store)
    assert layer is not None
    assert [m.name for m in _members(store, layer)] == ["d"]


@needs_root
@pytest.mark.parametrize("xattr", ["trusted.overlay.redirect", "trusted.overlay.metacopy"])
def test_redirect_and_metacopy_uppers_are_refused(
    tmp_path: Path, store: BlobStore, xattr: str
) -> None:
    upper = tmp_path / "upper"
    target = upper / "moved"
    target.mkdir(parents=True) if xattr.endswith("redirect") else _file(target)
    os.setxattr(target, xattr, b"/elsewhere" if xattr.endswith("redirect") else b"")
    with pytest.raises(RuntimeFailure, match="redirect_dir=off"):
        write_layer(upper, store)
    assert list(store.digests()) == []


def test_sockets_are_skipped(tmp_path: Path, store: BlobStore) -> None:
    import socket

    upper = tmp_path / "upper"
    upper.mkdir()
    _file(upper / "kept")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(upper / "sock"))
        layer = write_layer(upper, store)
    assert layer is not None
    assert [m.name for m in _members(store, layer)] == ["kept"]


def test_unreadable_upper_is_a_runtime_failure(tmp_path: Path, store: BlobStore) -> None:
    with pytest.raises(RuntimeFailure, match=r"cannot turn .*/missing into a layer") as info:
        write_layer(tmp_path / "missing", store)
    assert info.value.why == f"No such file or directory: {tmp_path / 'missing'}"


def test_bad_compression_is_a_usage_error(tmp_path: Path, store: BlobStore) -> None:
    upper = tmp_path / "upper"
    _file(upper / "f")
    with pytest.raises(UsageError, match="unknown compression 'lz4'"):
        write_layer(upper, store, compression="lz4")
    with pytest.raises(UsageError, match="invalid compression-level 11 for gzip"):
        write_layer(upper, store, compression="gzip", level=11)
    assert list(store.digests()) == []


def test_deep_trees_do_not_hit_the_recursion_limit(tmp_path: Path, store: BlobStore) -> None:
    upper = tmp_path / "upper"
    deep = upper
    for _ in range(60):  # paths beyond PATH_MAX are not needed to exceed a small limit
        deep = deep / "d"
    _file(deep / "leaf")
    import sys

    old = sys.getrecursionlimit()
    sys.setrecursionlimit(100)
    try:
        layer = write_layer(upper, store)
    finally:
        sys.setrecursionlimit(old)
    assert layer is not None
    assert _members(store, layer)[-1].name.endswith("/d/leaf")
