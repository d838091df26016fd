"""kiln.cache.mounts.tree: what a cache mount export holds (scan), what changed since a
known state (changes) and the LRU trim to a byte cap — on real files in tmp_path."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from kiln.cache.mounts.tree import Trimmed, changes, scan, trim

SECRET = b"hunter2-registry-token"


def files(root: Path, spec: dict[str, bytes]) -> Path:
    """Create *spec* (relative path: content) below *root*."""
    for rel, data in spec.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def tick() -> None:
    """Let the (coarse) filesystem clock move on, so a new ctime/mtime differs."""
    time.sleep(0.05)


def names(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


# --------------------------------------------------------------------------- scan
def test_scan_leaves_out_excluded_paths_and_everything_below_them(tmp_path: Path) -> None:
    root = files(tmp_path, {
        "keep/a": b"a",
        "run/secrets/x": b"x",
        "run/secrets/deep/y": b"y",
        "cfg/token": b"t",
        "cfg/other": b"o",
    })  # fmt: skip
    found = scan(root, excluded={"run/secrets", "cfg/token"})
    assert set(found.table) == {"keep", "keep/a", "run", "cfg", "cfg/other"}
    assert found.left_out == sorted(
        ["run/secrets", "run/secrets/x", "run/secrets/deep", "run/secrets/deep/y", "cfg/token"]
    )
    # without exclusions everything is in the table
    assert scan(root).left_out == []
    assert set(scan(root).table) == names(root)


def test_scan_leaves_out_only_files_whose_whole_content_is_a_secret(tmp_path: Path) -> None:
    root = files(tmp_path, {
        "copy": SECRET,
        "sub/another-copy": SECRET,
        "with-newline": SECRET + b"\n",
        "same-size": b"x" * len(SECRET),
        "embedded": b"prefix " + SECRET,
        "empty": b"",
    })  # fmt: skip
    found = scan(root, secrets=[SECRET, b""])  # an empty secret hides nothing
    assert found.left_out == ["copy", "sub/another-copy"]
    assert set(found.table) == {"sub", "with-newline", "same-size", "embedded", "empty"}


def test_scan_leaves_out_a_copy_of_a_secret_larger_than_one_mebibyte(tmp_path: Path) -> None:
    secret = os.urandom((1 << 20) + 4096)
    root = files(tmp_path, {"copy": secret, "other": b"fine"})
    found = scan(root, secrets=[secret])
    assert found.left_out == ["copy"]
    assert "copy" not in found.table


def test_scan_content_bytes_counts_regular_files_only(tmp_path: Path) -> None:
    root = files(tmp_path, {"a": b"x" * 10, "d/b": b"y" * 20, "d/e/c": b""})
    (root / "link").symlink_to("a-rather-long-target-name-that-is-not-content")
    os.mkfifo(root / "fifo")
    assert scan(root).content_bytes == 30
    assert scan(root, excluded={"d"}).content_bytes == 10
    assert scan(root, secrets=[b"x" * 10]).content_bytes == 20


# --------------------------------------------------------------------------- changes
@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "mount"
    files(root, {"f": b"content", "d/old": b"old", "d/keep": b"keep", "t/a": b"a",
                 "t/b/c": b"c"})  # fmt: skip
    return root


def test_changes_of_an_untouched_tree_is_nothing_and_reading_is_no_change(tree: Path) -> None:
    before = scan(tree).table
    tick()
    assert (tree / "f").read_bytes() == b"content"
    assert changes(before, scan(tree).table) == (set(), [])


def test_changes_sees_a_file_modified_in_place(tree: Path) -> None:
    before = scan(tree).table
    tick()
    (tree / "f").write_bytes(b"CONTENT")  # same size, same inode
    assert changes(before, scan(tree).table) == ({"f"}, [])


def test_changes_sees_an_added_file_and_its_directory(tree: Path) -> None:
    before = scan(tree).table
    tick()
    files(tree, {"d/new": b"new", "n/e/w": b"w"})
    assert changes(before, scan(tree).table) == ({"d", "d/new", "n", "n/e", "n/e/w"}, [])


def test_changes_lists_a_deleted_file(tree: Path) -> None:
    before = scan(tree).table
    tick()
    (tree / "d/old").unlink()
    assert changes(before, scan(tree).table) == ({"d"}, ["d/old"])


def test_changes_lists_only_the_topmost_path_of_a_deleted_tree(tree: Path) -> None:
    before = scan(tree).table
    tick()
    for rel in ("t/b/c", "t/a"):
        (tree / rel).unlink()
    (tree / "t/b").rmdir()
    (tree / "t").rmdir()
    assert changes(before, scan(tree).table) == (set(), ["t"])


def test_changes_sees_a_chmod_and_a_rewrite_whose_size_and_mtime_were_put_back(
    tree: Path,
) -> None:
    before = scan(tree).table
    tick()
    os.chmod(tree / "d/keep", os.stat(tree / "d/keep").st_mode & 0o7777)  # same mode: ctime
    st = os.stat(tree / "f")
    (tree / "f").write_bytes(b"CONTENT")
    os.utime(tree / "f", ns=(st.st_atime_ns, st.st_mtime_ns))
    after = scan(tree).table
    assert after["f"][3:5] == before["f"][3:5]  # size and mtime as they were
    assert changes(before, after) == ({"f", "d/keep"}, [])


def test_changes_against_an_empty_table_is_everything(tree: Path) -> None:
    table = scan(tree).table
    assert changes({}, table) == (set(table), [])


# --------------------------------------------------------------------------- trim
def aged(root: Path, spec: dict[str, tuple[int, int, int]]) -> Path:
    """Files of *spec* (relative path: (size, atime, mtime) in seconds)."""
    for rel, (size, atime, mtime) in spec.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"z" * size)
        os.utime(path, (atime, mtime))
    return root


def test_trim_removes_the_oldest_files_first_and_stops_at_the_cap(tmp_path: Path) -> None:
    root = aged(tmp_path, {"c": (100, 30, 30), "a": (100, 10, 10), "sub/b": (100, 20, 20),
                           "d": (100, 40, 40)})  # fmt: skip
    assert trim(root, 250) == Trimmed(files=2, bytes=200, total=400)
    assert names(root) == {"c", "d", "sub"}
    assert trim(root, 250) == Trimmed(0, 0, 200)  # within the cap: nothing more


def test_trim_orders_by_the_later_of_access_and_modification(tmp_path: Path) -> None:
    root = aged(tmp_path, {
        "read-recently": (100, 1000, 10),  # old content, used by the last build
        "written-once": (100, 500, 500),
        "written-later": (100, 600, 700),
    })  # fmt: skip
    assert trim(root, 200) == Trimmed(1, 100, 300)
    assert names(root) == {"read-recently", "written-later"}


def test_trim_within_the_cap_removes_nothing_and_keeps_non_files(tmp_path: Path) -> None:
    root = aged(tmp_path, {"a": (100, 1, 1), "d/b": (50, 2, 2)})
    (root / "link").symlink_to("a")
    (root / "empty").mkdir()
    assert trim(root, 150) == Trimmed(0, 0, 150)
    assert trim(root, 60) == Trimmed(1, 100, 150)
    assert names(root) == {"d", "d/b", "link", "empty"}


def test_trim_with_a_hardlinked_file_ends_within_the_cap(tmp_path: Path) -> None:
    root = aged(tmp_path, {"A": (1000, 10, 10), "B": (1000, 20, 20)})
    (root / "sub").mkdir()
    os.link(root / "A", root / "sub" / "A2")  # met after A: A carries the bytes
    trim(root, 1500)
    inodes = {os.lstat(p).st_ino: os.lstat(p).st_size for p in root.rglob("*") if p.is_file()}
    assert sum(inodes.values()) <= 1500
