"""The tree of context files a cache record carries: exact, small, bounded."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kiln.cache.description import KeyDescription
from kiln.cache.records import CacheEntry
from kiln.cache.remote.format import build_config, parse_config, parse_trees
from kiln.source.context import BuildContext
from kiln.source.tree import FileTree, TreeEntry

BUILDKIT_CONFIG_LIMIT = 1 << 20  # what BuildKit reads of a cache config at most


def make_files(root: Path, count: int) -> None:
    for n in range(count):
        path = root / f"pkg{n % 40:02d}" / f"mod{n % 7}" / f"source_file_{n:05d}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"value = {n}\n")


def tree_of(root: Path, sources: list[str] | None = None) -> tuple[str, FileTree]:
    ctx = BuildContext(root)
    digest = ctx.digest(sources or ["."], chown=None, chmod=None)
    tree = ctx.tree(digest)
    assert tree is not None
    return digest, tree


def test_config_with_ten_thousand_context_files_stays_small(tmp_path: Path):
    make_files(tmp_path, 10_000)
    digest, tree = tree_of(tmp_path)
    encoded = tree.encode()
    assert encoded is not None
    about = KeyDescription("app", 2, "COPY . /app", "linux/amd64", "sha256:" + "1" * 64,
                           inputs={"source": "abcd1234"}, tree=digest)  # fmt: skip
    entry = CacheEntry("sha256:" + "2" * 64, None, None, "2026-01-01T00:00:00Z", None, about,
                       encoded)  # fmt: skip
    config, _layers = build_config([entry], annotate=True)
    size = len(json.dumps(config).encode())
    assert size < BUILDKIT_CONFIG_LIMIT // 4, f"{size} bytes"
    # and what it holds is the whole list: the changed file is named exactly
    carried = FileTree.decode(parse_trees(config)[digest])
    assert len(carried) == len(tree) == 10_000 + 40 * 7 + 40 + 1
    (tmp_path / "pkg07/mod0/source_file_00287.py").write_text("changed\n")
    _digest, now = tree_of(tmp_path)
    change = now.changes(carried)
    assert change is not None
    assert (change.kind, change.path, change.more) == (
        "changed",
        "pkg07/mod0/source_file_00287.py",
        0,
    )
    record = parse_config(config)[entry.key]
    assert record.about == about


def test_kinds_of_change(tmp_path: Path):
    (tmp_path / "src").mkdir()
    for name in ("a.txt", "b.txt", "c.txt"):
        (tmp_path / "src" / name).write_text(name)
    (tmp_path / "link").symlink_to("src/a.txt")
    _d, before = tree_of(tmp_path)
    assert _d and before.changes(before) is None

    os.chmod(tmp_path / "src/b.txt", 0o600)
    _d, now = tree_of(tmp_path)
    change = now.changes(before)
    assert change is not None and (change.kind, change.path) == ("mode", "src/b.txt")
    assert change.modes == (0o644, 0o600)

    (tmp_path / "src/c.txt").unlink()
    (tmp_path / "src/d.txt").write_text("d")
    _d, now = tree_of(tmp_path)
    change = now.changes(before)
    assert change is not None and (change.kind, change.path, change.more) == (
        "mode",
        "src/b.txt",
        2,
    )

    os.chmod(tmp_path / "src/b.txt", 0o644)
    _d, now = tree_of(tmp_path)
    change = now.changes(before)
    assert change is not None and (change.kind, change.path, change.more) == (
        "removed",
        "src/c.txt",
        1,
    )

    (tmp_path / "link").unlink()
    (tmp_path / "link").symlink_to("src/b.txt")  # a symlink's target is its content
    _d, moved = tree_of(tmp_path)
    change = moved.changes(now)
    assert change is not None and (change.kind, change.path) == ("changed", "link")


def test_single_file_and_directory_sources_are_named_as_written(tmp_path: Path):
    (tmp_path / "app").mkdir()
    (tmp_path / "app/main.py").write_text("x")
    (tmp_path / "req.txt").write_text("y")
    _d, tree = tree_of(tmp_path, ["req.txt", "app/"])
    assert [e.path for e in tree.entries] == ["app", "app/main.py", "req.txt"]


def test_a_tree_over_budget_summarises_its_deepest_directories():
    entries = [TreeEntry("top", "d", 0o755)]
    for a in range(20):
        entries.append(TreeEntry(f"top/a{a}", "d", 0o755))
        for b in range(200):
            entries.append(TreeEntry(f"top/a{a}/f{b}.txt", "f", 0o644, f"{a * 1000 + b:06x}"))
    tree = FileTree(entries)
    full = tree.encode()
    assert full is not None
    small = tree.encode(budget=len(full) // 4)
    assert small is not None and len(small) <= len(full) // 4
    cached = FileTree.decode(small)
    assert {e.kind for e in cached.entries} == {"d", "s"}
    changed = FileTree(
        [*entries[:5], TreeEntry(entries[5].path, "f", 0o644, "ffffff"), *entries[6:]]
    )
    change = changed.changes(cached)
    assert change is not None
    assert (change.kind, change.path, change.summarised) == ("changed", "top/a0", True)
    assert changed.changes(FileTree.decode(full)).path == entries[5].path  # type: ignore[union-attr]
    assert tree.encode(budget=10) is None  # not even the top level fits: no tree at all


names = st.text(st.characters(blacklist_characters="/\x00", blacklist_categories=["Cs"]),
                min_size=1, max_size=12)  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.lists(names, min_size=1, max_size=3), st.sampled_from("fld"),
                          st.integers(0, 0o7777)), max_size=40))  # fmt: skip
def test_encoding_round_trips_any_names(items):
    entries = [TreeEntry("/".join(parts), kind, mode, "" if kind == "d" else "abc123")
               for parts, kind, mode in items]  # fmt: skip
    tree = FileTree(entries)
    encoded = tree.encode()
    assert encoded is not None
    assert FileTree.decode(encoded).entries == tree.entries


@pytest.mark.parametrize("text", ["", "not base64!", "eJwrSS0uAQAEXQHB"])
def test_decoding_what_kiln_did_not_write_is_a_value_error(text: str):
    with pytest.raises(ValueError):
        FileTree.decode(text)
