"""Layer images: each mounted image must show exactly what a directory unpack of the same
tar shows (names, types, owners, modes, times, xattrs, contents, hard links, devices,
whiteouts and opaque marks), for hand-made edge cases and generated trees, and pass
``fsck.erofs``."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.unit.snapshot.tars import Member, directory, link, reg, tar

from kiln.errors import KilnError
from kiln.snapshot.erofs import UnsupportedImage
from kiln.snapshot.layerfs import write_layer_image
from kiln.snapshot.overlay import mount_image, unmount
from kiln.snapshot.snapshots import image_mounts_work
from kiln.snapshot.unpack import unpack_layer

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: mounts and devices")


def _can_mount() -> bool:
    if os.geteuid() != 0:
        return False
    return image_mounts_work(Path(tempfile.mkdtemp(prefix="kiln-probe-")))


needs_erofs = pytest.mark.skipif(
    not _can_mount(), reason="this kernel cannot mount an EROFS image from a file"
)


def device(name: str, kind: bytes, major: int = 0, minor: int = 0) -> Member:
    info, _ = reg(name, mode=0o640)
    info.type, info.devmajor, info.devminor = kind, major, minor
    return info, b""


def with_xattrs(member: Member, **xattrs: str) -> Member:
    info, data = member
    info.pax_headers = {f"SCHILY.xattr.{k.replace('__', '.')}": v for k, v in xattrs.items()}
    return info, data


def snapshot_of(root: Path, explicit: set[str]) -> dict[str, tuple[Any, ...]]:
    """Everything a lowerdir shows; directory times only for directories the tar names
    (an implied one is made "now" either way), no directory sizes (a filesystem's own)."""
    out: dict[str, tuple[Any, ...]] = {}
    first_name: dict[tuple[int, int], str] = {}
    for path in [root, *sorted(root.rglob("*"))]:
        st_ = path.lstat()
        rel = path.relative_to(root).as_posix()
        xattrs = {name: os.getxattr(path, name, follow_symlinks=False)
                  for name in sorted(os.listxattr(path, follow_symlinks=False))}  # fmt: skip
        content: object = None
        if stat.S_ISREG(st_.st_mode):
            content = hashlib.sha256(path.read_bytes()).hexdigest()
        elif stat.S_ISLNK(st_.st_mode):
            content = os.readlink(path)
        is_dir = stat.S_ISDIR(st_.st_mode)
        same_as = first_name.setdefault((st_.st_dev, st_.st_ino), rel)
        mtime = st_.st_mtime_ns if not is_dir or rel in explicit else None
        out[rel] = (stat.filemode(st_.st_mode), st_.st_uid, st_.st_gid, mtime,
                    None if is_dir else st_.st_size, st_.st_rdev, st_.st_nlink, xattrs,
                    content, same_as)  # fmt: skip
    return out


@contextlib.contextmanager
def mounted_image(tmp: Path, blob: bytes) -> Iterator[tuple[Path, str]]:
    image, target = tmp / "layer.erofs", tmp / "mnt"
    diff_id = write_layer_image(_gz(blob), "gzip", image)
    target.mkdir()
    mount_image(image, target)
    try:
        yield target, diff_id
    finally:
        unmount(target)


def _gz(blob: bytes) -> io.BytesIO:
    return io.BytesIO(gzip.compress(blob, compresslevel=1))


def explicit_dirs(members: list[Member]) -> set[str]:
    return {info.name.strip("/").removeprefix("./") for info, _ in members if info.isdir()}


def assert_same_as_unpack(tmp: Path, members: list[Member]) -> Path:
    blob = tar(*members)
    (tmp / "dir").mkdir(mode=0o700)
    expected_id = unpack_layer(_gz(blob), "gzip", tmp / "dir")
    expected = snapshot_of(tmp / "dir", explicit_dirs(members))
    with mounted_image(tmp, blob) as (root, diff_id):
        assert diff_id == expected_id
        assert snapshot_of(root, explicit_dirs(members)) == expected
    return tmp / "layer.erofs"


CASES: dict[str, list[Member]] = {
    "files of every size": [
        directory("d"),
        *(reg(f"d/f{n}", os.urandom(n)) for n in (0, 1, 4095, 4096, 4097, 70_000)),
    ],
    "owners, modes and times": [
        directory("srv", mode=0o2775, gid=50),
        reg("srv/implied/x", b"x", uid=100_000, gid=70_000),  # an implied dir in a setgid one
        reg("setuid", b"s", mode=0o4755),
        directory("tmp", mode=0o1777),
        reg("ro", b"r", mode=0o400, mtime=-1_000),
        with_xattrs(reg("caps", b"c"), user__a="1", trusted__b="2", security__c="3"),
        with_xattrs(directory("xd"), user__k="v"),
    ],
    "links and devices": [
        reg("a", b"data"),
        link("hard", "a", hard=True),
        link("hard2", "./hard", hard=True),
        link("rel", "a"),
        link("abs", "/a"),
        link("long", "x" * 3000),
        device("null", tarfile.CHRTYPE, 1, 3),
        device("sda", tarfile.BLKTYPE, 8, 300),
        device("fifo", tarfile.FIFOTYPE),
    ],
    "whiteouts": [
        directory("gone"),
        reg("gone/.wh..wh..opq"),
        reg(".wh.deleted"),
        reg("kept"),
        reg(".wh.kept"),  # this layer's own entry wins
        reg(".wh.again"),
        directory("again"),  # a directory over a whiteout of the same layer: opaque
        reg("deep/er/.wh.x"),  # implied parents
        reg(".wh..wh.plnk"),  # AUFS bookkeeping
        with_xattrs(reg("steer"), trusted__overlay__redirect="/x"),  # ignored
    ],
    "overwrites and paths": [
        directory("d"),
        reg("d/f", b"1"),
        reg("d/f", b"22"),
        reg("x", b"file"),
        directory("x"),  # a directory replaces a file
        reg("x/in", b"in"),
        directory("y"),
        reg("y/z"),
        reg("y", b"now a file"),  # and a file a directory
        link("via", "d"),
        reg("via/through", b"t"),  # written through this layer's symlink
        link("up", "../../d"),
        reg("up/clamped", b"c"),
        reg("./dot/./slash//name", b"n"),
        reg("/absolute", b"a"),
    ],
    "a directory of many blocks": [
        directory("big"),
        *(reg(f"big/{'n' * (n % 200)}{n:05d}", b"") for n in range(1500)),
    ],
}


@needs_erofs
@pytest.mark.parametrize("case", CASES)
def test_a_mounted_image_shows_what_a_directory_unpack_makes(tmp_path: Path, case: str) -> None:
    image = assert_same_as_unpack(tmp_path, CASES[case])
    if shutil.which("fsck.erofs"):
        proc = subprocess.run(["fsck.erofs", str(image)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr


@needs_erofs
def test_names_in_a_large_directory_are_found(tmp_path: Path) -> None:
    names = [f"{'n' * (n % 200)}{n:05d}" for n in range(1500)]
    blob = tar(directory("big"), *(reg(f"big/{name}", name.encode()) for name in names))
    with mounted_image(tmp_path, blob) as (root, _):
        for name in names[::7]:  # a lookup is a binary search across the directory's blocks
            assert (root / "big" / name).read_bytes() == name.encode()
        assert not (root / "big" / "missing").exists()


@needs_erofs
def test_an_opaque_root_is_marked_on_the_image_root(tmp_path: Path) -> None:
    with mounted_image(tmp_path, tar(reg(".wh..wh..opq"), reg("f"))) as (root, _):
        assert os.getxattr(root, "trusted.overlay.opaque") == b"y"


_names = st.sampled_from(["a", "b", "c", "d.txt", "-x", ".h", "é", "z" * 40])


@st.composite
def _trees(draw: st.DrawFn) -> list[Member]:
    members: list[Member] = []
    dirs = [""]
    for _ in range(draw(st.integers(1, 25))):
        parent = draw(st.sampled_from(dirs))
        path = f"{parent}/{draw(_names)}".lstrip("/")
        kind = draw(st.sampled_from(["dir", "file", "file", "symlink", "hardlink", "whiteout"]))
        owner = {"uid": draw(st.sampled_from([0, 1000])), "gid": draw(st.sampled_from([0, 5]))}
        mode = draw(st.sampled_from([0o755, 0o644, 0o600, 0o4755, 0o1777]))
        mtime = draw(st.integers(0, 2_000_000_000))
        if kind == "dir":
            members.append(directory(path, mode=mode, mtime=mtime, **owner))
            dirs.append(path)
        elif kind == "file":
            members.append(reg(path, draw(st.binary(max_size=5000)), mode=mode, mtime=mtime,
                               **owner))  # fmt: skip
        elif kind == "symlink":
            members.append(link(path, draw(st.sampled_from(["a", "/b", "../c", "d/e", "."]))))
        elif kind == "hardlink":
            files = [info.name for info, _ in members if info.isreg()]
            if files:
                members.append(link(path, draw(st.sampled_from(files)), hard=True))
        else:
            members.append(reg(f"{parent}/.wh.{draw(_names)}".lstrip("/")))
    return members


@needs_erofs
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(members=_trees())
def test_generated_layers_match_the_directory_unpack(
    tmp_path_factory: pytest.TempPathFactory, members: list[Member]
) -> None:
    tmp = tmp_path_factory.mktemp("gen")
    try:
        assert_same_as_unpack(tmp, members)
    except KilnError as exc:  # a layer the unpacker refuses: the image writer refuses it too
        with pytest.raises(KilnError) as refused:
            write_layer_image(_gz(tar(*members)), "gzip", tmp / "again.erofs")
        assert type(refused.value) is type(exc)


def test_what_an_image_cannot_hold_is_refused(tmp_path: Path) -> None:
    huge = with_xattrs(reg("f"), user__big="v" * 4000)
    with pytest.raises(UnsupportedImage, match="xattrs"):
        write_layer_image(_gz(tar(huge)), "gzip", tmp_path / "x.erofs")


def test_a_corrupt_layer_is_an_error(tmp_path: Path) -> None:
    blob = gzip.compress(tar(reg("f", b"x" * 10_000)))[:-20]
    with pytest.raises(KilnError, match="cannot write the layer image"):
        write_layer_image(io.BytesIO(blob), "gzip", tmp_path / "x.erofs")
