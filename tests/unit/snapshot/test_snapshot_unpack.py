"""unpack_layer on hand-made tars (stdlib tarfile as an independent writer): whiteouts in
both modes, overwrite rules, hostile member names, corrupt blobs."""

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
from tests.unit.snapshot.tars import directory, link, reg, tar

from kiln.errors import KilnError, RuntimeFailure
from kiln.snapshot.unpack import Mode, unpack_layer

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: ownership and devices")


def unpack(dest: Path, blob: bytes, mode: Mode = "overlay", compression: str = "gzip") -> str:
    dest.mkdir(exist_ok=True)
    if compression == "gzip":
        blob = gzip.compress(blob)
    elif compression == "zstd":
        blob = zstandard.ZstdCompressor().compress(blob)
    return unpack_layer(io.BytesIO(blob), compression, dest, mode=mode)


def is_whiteout(path: Path) -> bool:
    st = os.lstat(path)
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def test_returns_the_diff_id_of_the_whole_uncompressed_stream(tmp_path: Path) -> None:
    raw = tar(reg("a", b"x"))
    assert len(raw) == 10240  # stdlib pads to a record: the padding is hashed too
    for compression in ("gzip", "zstd", "uncompressed"):
        got = unpack(tmp_path / compression, raw, compression=compression)
        assert got == "sha256:" + hashlib.sha256(raw).hexdigest()


# --- overlay mode --------------------------------------------------------------------


def test_overlay_mode_turns_whiteouts_into_devices_and_xattrs(tmp_path: Path) -> None:
    dest = tmp_path / "lower"
    unpack(
        dest,
        tar(
            directory("etc"),
            reg("etc/.wh.shadow", uid=5, gid=6),
            directory("var/cache"),
            reg("var/cache/.wh..wh..opq"),
            reg("var/cache/new", b"n"),
            reg(".wh..wh.plnk/123", b"aufs hardlink store"),
        ),
    )
    assert is_whiteout(dest / "etc" / "shadow")
    assert os.lstat(dest / "etc" / "shadow").st_uid == 5
    assert stat.S_IMODE(os.lstat(dest / "etc" / "shadow").st_mode) == 0
    assert not (dest / "etc" / ".wh.shadow").exists()
    assert os.getxattr(dest / "var" / "cache", "trusted.overlay.opaque") == b"y"
    assert sorted(os.listdir(dest / "var" / "cache")) == ["new"]
    assert sorted(os.listdir(dest)) == ["etc", "var"]  # AUFS metadata skipped


def test_overlay_mode_whiteout_creates_missing_parent(tmp_path: Path) -> None:
    dest = tmp_path / "lower"
    unpack(dest, tar(reg("usr/share/doc/.wh.README")))
    assert is_whiteout(dest / "usr" / "share" / "doc" / "README")


def test_overlay_mode_same_layer_entry_beats_its_whiteout(tmp_path: Path) -> None:
    dest = tmp_path / "lower"
    unpack(dest, tar(reg("kept", b"k"), reg(".wh.kept"), reg(".wh.later"), reg("later", b"l")))
    assert (dest / "kept").read_bytes() == b"k"
    assert (dest / "later").read_bytes() == b"l"


def test_overlay_mode_dir_replacing_a_whiteout_is_opaque(tmp_path: Path) -> None:
    dest = tmp_path / "lower"
    unpack(dest, tar(reg(".wh.d"), directory("d"), reg("d/f")))
    assert (dest / "d").is_dir()
    assert os.getxattr(dest / "d", "trusted.overlay.opaque") == b"y"


def test_layer_cannot_set_overlay_xattrs(tmp_path: Path) -> None:
    info, data = directory("d")
    info.pax_headers = {
        "SCHILY.xattr.trusted.overlay.redirect": "/etc",
        "SCHILY.xattr.user.ok": "yes",
    }
    dest = tmp_path / "lower"
    unpack(dest, tar((info, data)))
    assert os.listxattr(dest / "d") == ["user.ok"]


# --- apply mode ----------------------------------------------------------------------


def make_base(root: Path) -> None:
    for rel, data in {
        "etc/passwd": b"root",
        "etc/shadow": b"secret",
        "opt/tool/bin": b"t",
        "var/cache/a": b"a",
        "var/cache/sub/b": b"b",
        "srv/old": b"o",
        "usr/lib/libc.so": b"c",
        "replace-me/child": b"c",
        "was-file": b"f",
    }.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    os.symlink("usr/lib", root / "lib")
    os.symlink("/etc/passwd", root / "s")


def test_apply_mode_applies_changesets(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    root.mkdir()
    make_base(root)
    unpack(
        root,
        tar(
            reg("etc/.wh.shadow"),
            reg(".wh.opt"),
            directory("var/cache"),
            reg("var/cache/.wh..wh..opq"),
            reg("var/cache/new", b"n"),
            # marker after this layer's own entries: they stay, the lower ones go
            directory("srv"),
            reg("srv/fresh", b"f"),
            directory("srv/sub"),
            reg("srv/.wh..wh..opq"),
            # a whiteout never hides an entry of its own layer
            reg("tmp/made", b"m"),
            reg("tmp/.wh.made"),
            reg(".wh.never-existed"),
            reg("nowhere/.wh.x"),
            # parents resolve through symlinks inside the root
            reg("lib/libnew.so", b"new"),
            # overwrite rules
            reg("replace-me", b"now a file"),
            directory("was-file"),
            reg("was-file/inner", b"i"),
            reg("s", b"replaced the symlink"),
        ),
        mode="apply",
    )
    assert not (root / "etc" / "shadow").exists()
    assert (root / "etc" / "passwd").read_bytes() == b"root"
    assert not (root / "opt").exists()
    assert sorted(os.listdir(root / "var" / "cache")) == ["new"]
    assert sorted(os.listdir(root / "srv")) == ["fresh", "sub"]
    assert (root / "tmp" / "made").read_bytes() == b"m"
    assert not (root / "nowhere").exists()  # no directory made just to hold a whiteout
    assert (root / "usr" / "lib" / "libnew.so").read_bytes() == b"new"
    assert (root / "lib").is_symlink()
    assert (root / "replace-me").read_bytes() == b"now a file"
    assert (root / "was-file" / "inner").read_bytes() == b"i"
    assert not (root / "s").is_symlink()
    assert (root / "s").read_bytes() == b"replaced the symlink"
    assert not any(name.startswith(".wh.") for _, _, files in os.walk(root) for name in files)


def test_apply_mode_opaque_root_level_dir_and_whiteout_of_dir(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    (root / "a" / "deep" / "er").mkdir(parents=True)
    (root / "a" / "deep" / "er" / "f").write_bytes(b"x")
    (root / "b").mkdir()
    (root / "b" / "keep-not").write_bytes(b"x")
    unpack(root, tar(reg(".wh.a"), directory("b"), reg("b/.wh..wh..opq")), mode="apply")
    assert sorted(os.listdir(root)) == ["b"]
    assert os.listdir(root / "b") == []
    assert "trusted.overlay.opaque" not in os.listxattr(root / "b")


def test_apply_mode_hardlink_to_a_lower_layer_file(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "busybox").write_bytes(b"bb")
    unpack(root, tar(link("bin/sh", "bin/busybox", hard=True)), mode="apply")
    assert os.stat(root / "bin" / "sh").st_ino == os.stat(root / "bin" / "busybox").st_ino


# --- metadata ------------------------------------------------------------------------


def test_ownership_then_mode_then_times(tmp_path: Path) -> None:
    info, data = reg("suid", b"x", 0o4755, uid=1234, gid=4321)
    info.pax_headers = {
        "SCHILY.xattr.security.capability": (b"\x01\x00\x00\x02" + bytes(16)).decode(
            "utf-8", "surrogateescape"
        )
    }
    dest = tmp_path / "lower"
    unpack(
        dest,
        tar(
            directory("d", 0o2775, uid=10, gid=20, mtime=1_000_000),
            (info, data),
            reg("d/inside", b"i", mtime=5),
            link("d/sym", "../suid"),
        ),
    )
    st = os.lstat(dest / "suid")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 4321, 0o4755)
    assert os.getxattr(dest / "suid", "security.capability")[:4] == b"\x01\x00\x00\x02"
    st = os.lstat(dest / "d")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (10, 20, 0o2775)
    assert st.st_mtime == 1_000_000  # set after its children were created
    assert os.lstat(dest / "d" / "inside").st_mtime == 5
    assert os.lstat(dest / "d" / "sym").st_mtime == 1_600_000_000
    assert os.readlink(dest / "d" / "sym") == "../suid"


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_entries_owned_by_the_unpacker_get_exactly_their_owner_and_mode(
    tmp_path: Path, umask: int
) -> None:
    """The chown and chmod an entry owned by this process can skip: whatever the umask,
    and in a set-group-ID directory (whose group a new entry would otherwise take)."""
    setuid, _ = reg("bin/su", b"x", 0o4755)
    setuid.pax_headers = {
        "SCHILY.xattr.security.capability": (b"\x01\x00\x00\x02" + bytes(16)).decode(
            "utf-8", "surrogateescape"
        )
    }
    members = [
        directory("shared", 0o2775, gid=20),
        reg("shared/file", b"f", 0o644),
        reg("shared/open", b"o", 0o666),
        link("shared/sym", "file"),
        reg("top", b"t", 0o777),
        reg("readonly", b"r", 0o444),
        (setuid, b"x"),
        reg("sticky", b"s", 0o1755),
    ]
    dest = tmp_path / "lower"
    old = os.umask(umask)
    try:
        unpack(dest, tar(*members))
    finally:
        os.umask(old)
    creator = (os.geteuid(), os.getegid())
    assert creator == (0, 0)  # root, as the files' owner in the tar
    for info, data in members:
        st = os.lstat(dest / info.name)
        want_gid = 20 if info.name == "shared" else 0
        assert (st.st_uid, st.st_gid) == (0, want_gid), info.name
        if info.type != tarfile.SYMTYPE:
            assert stat.S_IMODE(st.st_mode) == info.mode, info.name
        if info.type == tarfile.REGTYPE:
            assert (dest / info.name).read_bytes() == data
    assert os.getxattr(dest / "bin" / "su", "security.capability")[:4] == b"\x01\x00\x00\x02"


def test_devices_and_fifos(tmp_path: Path) -> None:
    chr_info, _ = reg("dev/null", mode=0o666)
    chr_info.type, chr_info.devmajor, chr_info.devminor = tarfile.CHRTYPE, 1, 3
    fifo_info, _ = reg("run/pipe", mode=0o620)
    fifo_info.type = tarfile.FIFOTYPE
    dest = tmp_path / "lower"
    unpack(dest, tar((chr_info, b""), (fifo_info, b"")))
    st = os.lstat(dest / "dev" / "null")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
    assert stat.S_IMODE(st.st_mode) == 0o666
    st = os.lstat(dest / "run" / "pipe")
    assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o620


def test_many_small_files_stream_through(tmp_path: Path) -> None:
    members = [directory(f"d{i}") for i in range(20)]
    members += [reg(f"d{i % 20}/f{i}", b"%d" % i) for i in range(2000)]
    dest = tmp_path / "lower"
    unpack(dest, tar(*members), compression="zstd")
    assert sum(len(files) for _, _, files in os.walk(dest)) == 2000
    assert (dest / "d7" / "f1987").read_bytes() == b"1987"


# --- hostile layers ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../escape", "a/../../escape", "./../escape"])
def test_dotdot_escapes_are_refused(tmp_path: Path, name: str) -> None:
    dest = tmp_path / "a" / "lower"
    dest.parent.mkdir()
    with pytest.raises(KilnError, match="points outside the layer root") as info:
        unpack(dest, tar(reg(name, b"pwned")))
    assert not isinstance(info.value, RuntimeFailure)  # refused, not a failing filesystem
    assert info.value.hint
    assert not (tmp_path / "escape").exists()
    assert not (tmp_path / "a" / "escape").exists()


def test_absolute_names_stay_inside(tmp_path: Path) -> None:
    dest = tmp_path / "lower"
    unpack(dest, tar(reg(str(tmp_path / "abs.txt"), b"x"), reg("/etc/kiln-test", b"y")))
    assert not (tmp_path / "abs.txt").exists()
    assert (dest / str(tmp_path).lstrip("/") / "abs.txt").read_bytes() == b"x"
    assert (dest / "etc" / "kiln-test").read_bytes() == b"y"


@pytest.mark.parametrize("mode", ["overlay", "apply"])
def test_writes_through_symlinks_stay_inside(tmp_path: Path, mode: Mode) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_bytes(b"original")
    dest = tmp_path / "lower"
    unpack(
        dest,
        tar(
            link("abs", str(outside)),  # absolute target: means <dest>/<outside>
            reg("abs/victim", b"pwned-abs"),
            link("rel", "../../../.."),  # climbs to the root of dest, no further
            reg("rel/victim", b"pwned-rel"),
            link("file", str(outside / "victim")),
            reg("file", b"replaces the symlink, not its target"),
            link("loop", "loop"),
        ),
        mode=mode,
    )
    assert (outside / "victim").read_bytes() == b"original"
    assert (dest / str(outside).lstrip("/") / "victim").read_bytes() == b"pwned-abs"
    assert (dest / "victim").read_bytes() == b"pwned-rel"
    assert not (dest / "file").is_symlink()


def test_symlink_loops_are_an_error(tmp_path: Path) -> None:
    with pytest.raises(KilnError, match="symbolic links"):
        unpack(tmp_path / "lower", tar(link("loop", "loop"), reg("loop/x", b"x")))


@pytest.mark.parametrize("target", ["../secret", "/secret", "up/secret", "nothing-here"])
def test_hardlinks_must_point_inside(tmp_path: Path, target: str) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"s")
    refused = r"points (outside the layer root|at '.*', which does not exist)"
    with pytest.raises(KilnError, match=refused) as info:
        unpack(tmp_path / "lower", tar(link("up", ".."), link("h", target, hard=True)))
    assert not isinstance(info.value, RuntimeFailure)
    assert os.stat(secret).st_nlink == 1


def test_hardlink_through_a_symlinked_parent_resolves_inside(tmp_path: Path) -> None:
    dest = tmp_path / "lower"
    unpack(
        dest,
        tar(reg("real/file", b"x"), link("alias", "/real"), link("h", "alias/file", hard=True)),
    )
    assert os.stat(dest / "h").st_ino == os.stat(dest / "real" / "file").st_ino


def test_nul_in_a_pax_path_is_refused(tmp_path: Path) -> None:
    info, data = reg("placeholder", b"x")
    info.pax_headers = {"path": "a\x00b"}
    with pytest.raises(KilnError, match="NUL byte") as caught:
        unpack(tmp_path / "lower", tar((info, data)))
    assert "not a valid tar archive" in str(caught.value.why)


# --- corrupt blobs -------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["gzip", "zstd", "uncompressed"])
def test_truncated_layers_are_errors(tmp_path: Path, compression: str) -> None:
    raw = tar(reg("big", os.urandom(200_000)))
    blob = {
        "gzip": gzip.compress(raw),
        "zstd": zstandard.ZstdCompressor().compress(raw),
        "uncompressed": raw,
    }[compression]
    dest = tmp_path / "lower"
    dest.mkdir()
    with pytest.raises(KilnError) as info:
        unpack_layer(io.BytesIO(blob[: len(blob) // 3]), compression, dest)
    assert str(dest) in info.value.what
    assert info.value.why


@pytest.mark.parametrize(
    "blob",
    [
        os.urandom(5000),
        gzip.compress(b"not a tar, but long enough to fill a header block " * 20),
        b"\x1f\x8b\x08\x00garbage after a gzip magic",
    ],
)
def test_garbage_is_an_error(tmp_path: Path, blob: bytes) -> None:
    dest = tmp_path / "lower"
    dest.mkdir()
    with pytest.raises(KilnError) as info:
        unpack_layer(io.BytesIO(blob), "gzip", dest)
    assert not isinstance(info.value, RuntimeFailure)
    assert info.value.what == f"cannot unpack layer into {dest}"
    assert str(info.value.why).startswith(
        ("the layer is not a valid tar archive", "the layer cannot be decompressed")
    )


def test_unknown_mode_is_a_programming_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown unpack mode 'merge'"):
        unpack_layer(io.BytesIO(b""), "gzip", tmp_path, mode="merge")  # type: ignore[arg-type]


def test_extract_mode_keeps_whiteout_names_as_files(tmp_path: Path) -> None:
    """ADD of a plain archive: ``.wh.*`` entries are ordinary files, as in BuildKit."""
    dest = tmp_path / "d"
    dest.mkdir()
    (dest / "keep.txt").write_text("lower")
    blob = tar(reg("keep.txt.new", b"x"), reg(".wh.keep.txt", b"plain"), reg("sub/.wh..wh..opq"))
    unpack(dest, blob, mode="extract")
    assert (dest / "keep.txt").read_text() == "lower"
    assert (dest / ".wh.keep.txt").read_bytes() == b"plain"
    assert (dest / "sub" / ".wh..wh..opq").is_file()
