"""write_layer → unpack_layer (overlay mode) reproduces the upper dir exactly."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from kiln.content import BlobStore
from kiln.differ.layer import write_layer
from kiln.snapshot.unpack import unpack_layer

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root: devices, ownership, trusted.overlay.* xattrs"
)

CAP = b"\x01\x00\x00\x02" + bytes(16)  # a (meaningless) v2 file capability


def describe(root: Path) -> dict[str, dict[str, Any]]:
    """Everything about a tree that a layer must carry, keyed by relative path."""
    out: dict[str, dict[str, Any]] = {}
    first_of_inode: dict[int, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            info: dict[str, Any] = {
                "type": stat.S_IFMT(st.st_mode),
                "mode": stat.S_IMODE(st.st_mode),
                "owner": (st.st_uid, st.st_gid),
                "mtime": st.st_mtime_ns // 10**9,
                "xattrs": {
                    key: os.getxattr(path, key, follow_symlinks=False)
                    for key in os.listxattr(path, follow_symlinks=False)
                },
            }
            if stat.S_ISREG(st.st_mode):
                info["sha256"] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
            if stat.S_ISLNK(st.st_mode):
                info["target"] = os.readlink(path)
                del info["mode"]  # symlink modes are meaningless on Linux
            if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                info["rdev"] = (os.major(st.st_rdev), os.minor(st.st_rdev))
            if not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1:
                info["inode_group"] = first_of_inode.setdefault(st.st_ino, rel)
            out[rel] = info
    return out


def build_upper(upper: Path) -> None:
    """An upper dir with every kind of entry a step can leave behind."""

    def write(rel: str, data: bytes, mode: int = 0o644) -> Path:
        path = upper / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(mode)
        return path

    write("bin/tool", b"#!/bin/sh\necho hi\n", 0o755)
    write("bin/sudo", b"\x7fELF-ish", 0o4755)
    write("bin/wall", b"group", 0o2755)
    ping = write("bin/ping", b"ping", 0o755)
    os.setxattr(ping, "security.capability", CAP)
    owned = write("home/user/notes.txt", b"mine", 0o640)
    os.chown(owned, 1000, 1001)
    os.setxattr(owned, "user.comment", b"\xff\x00 binary value")
    os.chown(upper / "home" / "user", 1000, 1001)
    os.symlink("notes.txt", upper / "home" / "user" / "link")
    os.symlink("/etc/passwd", upper / "abs-link")
    os.lchown(upper / "abs-link", 7, 8)
    write("hard-a", b"shared inode", 0o600)
    (upper / "sub").mkdir()
    os.link(upper / "hard-a", upper / "sub" / "hard-b")
    (upper / "empty").mkdir(mode=0o700)
    (upper / "sticky").mkdir()
    (upper / "sticky").chmod(0o1777)
    os.mkfifo(upper / "fifo", 0o600)
    (upper / "dev").mkdir()
    os.mknod(upper / "dev" / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mknod(upper / "dev" / "loop9", stat.S_IFBLK | 0o660, os.makedev(7, 9))
    # overlayfs deletions: char devices 0/0 with mode 0, as the kernel makes them
    os.mknod(upper / "deleted", stat.S_IFCHR, os.makedev(0, 0))
    os.mknod(upper / "sub" / "gone", stat.S_IFCHR, os.makedev(0, 0))
    (upper / "sub" / "gone").chmod(0)
    (upper / "deleted").chmod(0)
    write("opaque/inner", b"only this survives")
    os.setxattr(upper / "opaque", "trusted.overlay.opaque", b"y")
    write("big.bin", os.urandom(3 << 20) + b"tail")
    write("empty-file", b"")
    write("unicode-é/ファイル", "ü".encode())
    write("long/" + "/".join(["component-" + "x" * 40] * 5) + "/leaf", b"deep")

    # fixed times, bottom-up so directory times are final
    for i, (dirpath, dirnames, filenames) in enumerate(
        sorted(os.walk(upper), key=lambda item: -item[0].count(os.sep))
    ):
        for name in dirnames + filenames:
            os.utime(os.path.join(dirpath, name), (0, 1_600_000_000 + i), follow_symlinks=False)


@pytest.mark.parametrize("compression", ["gzip", "zstd", "uncompressed"])
def test_overlay_round_trip_preserves_everything(tmp_path: Path, compression: str) -> None:
    upper = tmp_path / "upper"
    upper.mkdir()
    build_upper(upper)
    store = BlobStore(tmp_path / "blobs")
    layer = write_layer(upper, store, compression=compression)
    assert layer is not None

    lower = tmp_path / "lower"
    lower.mkdir()
    with open(store.path(layer.digest), "rb") as fh:
        diff_id = unpack_layer(fh, compression, lower, mode="overlay")
    assert diff_id == layer.diff_id

    expected = describe(upper)
    got = describe(lower)
    assert got.keys() == expected.keys()
    for rel, info in expected.items():
        assert got[rel] == info, rel
    # spot checks of what the comparison covers
    assert got["deleted"]["type"] == stat.S_IFCHR and got["deleted"]["rdev"] == (0, 0)
    assert got["opaque"]["xattrs"] == {"trusted.overlay.opaque": b"y"}
    assert got["bin/ping"]["xattrs"] == {"security.capability": CAP}
    assert got["bin/sudo"]["mode"] == 0o4755
    assert got["sub/hard-b"]["inode_group"] == "hard-a"


def test_round_trip_is_reproducible(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    upper.mkdir()
    build_upper(upper)
    store = BlobStore(tmp_path / "blobs")
    layer = write_layer(upper, store, source_date_epoch=1_600_000_005)
    assert layer is not None
    lower = tmp_path / "lower"
    lower.mkdir()
    with open(store.path(layer.digest), "rb") as fh:
        unpack_layer(fh, "gzip", lower)
    # the unpacked tree, written again, is the same layer
    again = write_layer(lower, store, source_date_epoch=1_600_000_005)
    assert again == layer
