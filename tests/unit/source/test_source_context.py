"""Selecting, walking and digesting COPY sources from a real directory tree."""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path

import pytest

from kiln.errors import ContextError
from kiln.source import filehash
from kiln.source.context import BuildContext, ContextEntry, SourceMatch
from kiln.source.dockerignore import IgnoreMatcher


def _write(root: Path, rel: str, data: str = "x", mode: int | None = None) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data)
    if mode is not None:
        path.chmod(mode)
    return path


@pytest.fixture
def ctx(tmp_path: Path) -> Path:
    root = tmp_path / "ctx"
    _write(root, "a.txt", "alpha")
    _write(root, "b.txt", "beta")
    _write(root, "c.md", "see")
    _write(root, "src/main.py", "print(1)")
    _write(root, "src/util.py", "u = 1")
    _write(root, "src/pkg/deep.py", "deep")
    _write(root, "src/pkg/data.txt", "data")
    _write(root, "docs/guide.md", "guide")
    _write(root, "docs/api/ref.md", "ref")
    (root / "empty").mkdir()
    return root


def _ctx(root: Path, *patterns: str, memo_dir: Path | None = None) -> BuildContext:
    return BuildContext(root, IgnoreMatcher(list(patterns)), memo_dir=memo_dir)


def _names(matches: list[SourceMatch]) -> list[str]:
    return [m.rel_path for m in matches]


def _walk(bc: BuildContext, source: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for match in bc.select([source]):
        out.extend((e.rel, e.kind) for e in bc.walk(match))
    return out


# ---------------------------------------------------------------------------- select


def test_select_plain_paths(ctx: Path) -> None:
    bc = _ctx(ctx)
    (m,) = bc.select(["a.txt"])
    assert m == SourceMatch("a.txt", ctx.resolve() / "a.txt", False)
    assert bc.select(["/src/"]) == [SourceMatch("src", ctx.resolve() / "src", True)]
    assert bc.select(["./src/pkg/../main.py"])[0].rel_path == "src/main.py"
    for root in (".", "/", "", "./"):
        assert bc.select([root]) == [SourceMatch(".", ctx.resolve(), True)]
    assert _names(bc.select(["a.txt", "a.txt", "empty"])) == ["a.txt", "a.txt", "empty"]


def test_context_must_be_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ContextError, match="is not a directory"):
        BuildContext(tmp_path / "nope")
    with pytest.raises(ContextError, match="is not a directory"):
        BuildContext(_write(tmp_path, "file"))


def test_missing_source_is_an_error_naming_it(ctx: Path) -> None:
    bc = _ctx(ctx)
    with pytest.raises(ContextError, match=re.escape('"/missing.txt": not found')):
        bc.select(["a.txt", "missing.txt"])
    with pytest.raises(ContextError, match=re.escape('"/a.txt/x": not found')):
        bc.select(["a.txt/x"])


def test_source_outside_the_context(ctx: Path) -> None:
    bc = _ctx(ctx)
    for bad in ("../outside", "src/../../x", "/../a.txt"):
        with pytest.raises(ContextError, match="is outside the build context") as info:
            bc.select([bad])
        assert bad in str(info.value)
    assert _names(bc.select(["src/../a.txt"])) == ["a.txt"]


def test_excluded_source_is_not_found_with_a_hint(ctx: Path) -> None:
    bc = _ctx(ctx, "*.md", "docs")
    with pytest.raises(ContextError, match=re.escape('"/c.md": not found')) as info:
        bc.select(["c.md"])
    assert info.value.hint == "it is excluded by .dockerignore"
    with pytest.raises(ContextError, match='"/docs": not found'):
        bc.select(["docs"])
    with pytest.raises(ContextError, match=re.escape('"/docs/guide.md": not found')):
        bc.select(["docs/guide.md"])


def test_excluded_directory_exists_when_an_exception_reincludes_below(ctx: Path) -> None:
    bc = _ctx(ctx, "docs", "!docs/api/ref.md")
    (m,) = bc.select(["docs"])
    assert m.is_dir
    assert _walk(bc, "docs") == [("", "dir"), ("api", "dir"), ("api/ref.md", "file")]
    with pytest.raises(ContextError, match="not found"):
        bc.select(["docs/guide.md"])


def test_wildcards(ctx: Path) -> None:
    bc = _ctx(ctx)
    assert _names(bc.select(["*.txt"])) == ["a.txt", "b.txt"]
    assert _names(bc.select(["/src/*.py"])) == ["src/main.py", "src/util.py"]
    assert _names(bc.select(["src/*/*.py"])) == ["src/pkg/deep.py"]
    assert _names(bc.select(["[ab].txt", "?.md"])) == ["a.txt", "b.txt", "c.md"]
    # a matched directory is one match, not descended into
    assert [(m.rel_path, m.is_dir) for m in bc.select(["s*"])] == [("src", True)]
    assert _names(bc.select(["*"])) == ["a.txt", "b.txt", "c.md", "docs", "empty", "src"]


def test_wildcard_matching_nothing_selects_nothing(ctx: Path) -> None:
    bc = _ctx(ctx)
    assert bc.select(["*.nothing"]) == []
    assert bc.select(["a.txt/*"]) == []
    assert _names(bc.select(["*.nothing", "a.txt"])) == ["a.txt"]
    # ...but the directory before the wildcard must exist
    with pytest.raises(ContextError, match='"/nodir": not found'):
        bc.select(["nodir/*.txt"])


def test_wildcards_skip_excluded_entries(ctx: Path) -> None:
    bc = _ctx(ctx, "b.txt", "src/pkg", "!src/pkg/data.txt")
    assert _names(bc.select(["*.txt"])) == ["a.txt"]
    assert _names(bc.select(["src/pkg/*"])) == ["src/pkg/data.txt"]
    assert _names(bc.select(["src/p*"])) == ["src/pkg"]
    assert bc.select(["src/pkg/*.py"]) == []


def test_escaped_wildcard_is_a_literal_name(ctx: Path) -> None:
    _write(ctx, "weird*name", "w")
    bc = _ctx(ctx)
    # like BuildKit: not a wildcard, so the backslash is part of the name looked up
    with pytest.raises(ContextError, match="not found"):
        bc.select(["weird\\*name"])
    _write(ctx, "weird\\*name", "w")
    assert _names(bc.select(["weird\\*name"])) == ["weird\\*name"]
    assert _names(bc.select(["weird*"])) == ["weird*name", "weird\\*name"]


# ---------------------------------------------------------------------------- symlinks


def test_symlink_source_is_followed_inside_the_root(ctx: Path) -> None:
    (ctx / "link.txt").symlink_to("a.txt")
    (ctx / "abs-link").symlink_to("/src")  # absolute: relative to the context root
    (ctx / "up-link").symlink_to("../../../a.txt")  # cannot climb out of the root
    (ctx / "dangling").symlink_to("nowhere")
    bc = _ctx(ctx)
    (m,) = bc.select(["link.txt"])
    assert m == SourceMatch("link.txt", ctx.resolve() / "a.txt", False)
    (m,) = bc.select(["abs-link"])
    assert m == SourceMatch("abs-link", ctx.resolve() / "src", True)
    assert bc.select(["abs-link/pkg/deep.py"])[0].abs_path == ctx.resolve() / "src/pkg/deep.py"
    assert bc.select(["up-link"])[0].abs_path == ctx.resolve() / "a.txt"
    with pytest.raises(ContextError, match='"/dangling": not found'):
        bc.select(["dangling"])


def test_symlink_escaping_to_the_host_is_not_followed(ctx: Path, tmp_path: Path) -> None:
    secret = _write(tmp_path, "secret.txt", "host secret")
    (ctx / "escape").symlink_to(secret)
    with pytest.raises(ContextError, match="not found"):
        _ctx(ctx).select(["escape"])


def test_excluded_symlink_cannot_be_followed(ctx: Path) -> None:
    (ctx / "link.txt").symlink_to("a.txt")
    with pytest.raises(ContextError, match="not found"):
        _ctx(ctx, "link.txt").select(["link.txt"])


def test_wildcard_match_that_is_a_symlink_is_followed(ctx: Path) -> None:
    (ctx / "z-link.txt").symlink_to("src/pkg/data.txt")
    (m,) = [m for m in _ctx(ctx).select(["*.txt"]) if m.rel_path == "z-link.txt"]
    assert m.abs_path == ctx.resolve() / "src/pkg/data.txt"
    assert not m.is_dir


def test_symlinks_below_a_directory_are_kept_as_symlinks(ctx: Path) -> None:
    (ctx / "src/pkg/to-main").symlink_to("../main.py")
    entries = {e.rel: e for m in _ctx(ctx).select(["src"]) for e in _ctx(ctx).walk(m)}
    link = entries["pkg/to-main"]
    assert link.kind == "symlink"
    assert link.link_target == "../main.py"


# ---------------------------------------------------------------------------- walk


def test_walk_order_and_entries(ctx: Path) -> None:
    _write(ctx, "src/run.sh", "#!/bin/sh", mode=0o4755)
    (ctx / "src/pkg").chmod(0o1777)
    bc = _ctx(ctx)
    entries = [e for m in bc.select(["src"]) for e in bc.walk(m)]
    assert [e.rel for e in entries] == [
        "", "main.py", "pkg", "pkg/data.txt", "pkg/deep.py", "run.sh", "util.py",
    ]  # fmt: skip
    by_rel = {e.rel: e for e in entries}
    assert by_rel["run.sh"].mode == 0o4755
    assert by_rel["pkg"].mode == 0o1777
    assert by_rel["main.py"] == ContextEntry(
        "main.py", ctx.resolve() / "src/main.py", "file", 0o644 & ~_umask(), 8, None
    )
    (m,) = bc.select(["a.txt"])
    assert [(e.rel, e.kind, e.size) for e in bc.walk(m)] == [("", "file", 5)]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_walk_honours_dockerignore(ctx: Path) -> None:
    bc = _ctx(ctx, "**/*.py", "!src/pkg/deep.py", "docs", "!docs/api")
    assert _walk(bc, "src") == [
        ("", "dir"), ("pkg", "dir"), ("pkg/data.txt", "file"), ("pkg/deep.py", "file"),
    ]  # fmt: skip
    assert _walk(bc, ".") == [
        ("", "dir"), ("a.txt", "file"), ("b.txt", "file"), ("c.md", "file"),
        ("docs", "dir"), ("docs/api", "dir"), ("docs/api/ref.md", "file"),
        ("empty", "dir"), ("src", "dir"), ("src/pkg", "dir"), ("src/pkg/data.txt", "file"),
        ("src/pkg/deep.py", "file"),
    ]  # fmt: skip


def test_excluded_directory_without_kept_content_is_absent(ctx: Path) -> None:
    bc = _ctx(ctx, "docs", "!docs/api/nothing-here")
    assert ("docs", "dir") not in _walk(bc, ".")
    bc = _ctx(ctx, "docs", "!**/*.txt")  # wildcard exception: walked, nothing kept
    assert all(not rel.startswith("docs") for rel, _ in _walk(bc, "."))


def test_walk_skips_special_files(ctx: Path) -> None:
    os.mkfifo(ctx / "src/pipe")
    bc = _ctx(ctx)
    assert "pipe" not in [rel for rel, _ in _walk(bc, "src")]
    bc.digest(["src"], chown=None, chmod=None)  # must not block on the fifo
    assert bc.select(["src/pip*"]) == []
    with pytest.raises(ContextError, match="not a regular file or directory"):
        bc.select(["src/pipe"])


def test_open_loads_the_ignore_file(ctx: Path, tmp_path: Path) -> None:
    (ctx / ".dockerignore").write_text("*.md\n")
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("FROM scratch\n")
    assert _names(BuildContext.open(ctx, dockerfile).select(["*"])) == [
        ".dockerignore", "a.txt", "b.txt", "docs", "empty", "src",
    ]  # fmt: skip
    (tmp_path / "Dockerfile.dockerignore").write_text("*.txt\n.dockerignore\n")
    bc = BuildContext.open(ctx, dockerfile)
    assert _names(bc.select(["*"])) == ["c.md", "docs", "empty", "src"]
    with pytest.raises(ContextError) as info:
        bc.select(["a.txt"])
    assert info.value.hint == "it is excluded by Dockerfile.dockerignore"


# ---------------------------------------------------------------------------- digest


def _digest(root: Path, *sources: str, patterns: tuple[str, ...] = (), **kw: str | None) -> str:
    return _ctx(root, *patterns).digest(list(sources), chown=kw.get("chown"), chmod=kw.get("chmod"))


def test_digest_is_stable_and_ignores_mtime(ctx: Path) -> None:
    first = _digest(ctx, "src", "a.txt")
    assert first.startswith("sha256:") and len(first) == 71
    assert _digest(ctx, "src", "a.txt") == first
    os.utime(ctx / "src/pkg/deep.py", ns=(1, 1))
    os.utime(ctx / "src", ns=(2, 2))
    assert _digest(ctx, "src", "a.txt") == first


@pytest.mark.skipif(os.geteuid() != 0, reason="changing file owners needs root")
def test_digest_ignores_source_owner(ctx: Path) -> None:
    first = _digest(ctx, "src")
    os.chown(ctx / "src/main.py", 1234, 5678)
    assert _digest(ctx, "src") == first


def test_digest_changes_with_what_affects_the_copy(ctx: Path) -> None:
    base = _digest(ctx, "src")
    seen = {base}

    def changed() -> str:
        d = _digest(ctx, "src")
        assert d not in seen
        seen.add(d)
        return d

    (ctx / "src/main.py").write_text("print(2)")  # same size, new content
    changed()
    (ctx / "src/main.py").chmod(0o755)
    changed()
    (ctx / "src/pkg").chmod(0o700)
    changed()
    (ctx / "src/link").symlink_to("main.py")
    changed()
    (ctx / "src/link").unlink()
    (ctx / "src/link").symlink_to("util.py")
    changed()
    (ctx / "src/util.py").rename(ctx / "src/util2.py")
    changed()
    (ctx / "src/newdir").mkdir()
    changed()


def test_digest_covers_flags_and_source_names(ctx: Path) -> None:
    plain = _digest(ctx, "a.txt")
    assert _digest(ctx, "a.txt", chown="1000:1000") != plain
    assert _digest(ctx, "a.txt", chown="1000") != _digest(ctx, "a.txt", chown="1000:1000")
    assert _digest(ctx, "a.txt", chmod="0755") != plain
    assert _digest(ctx, "a.txt", chown="") != plain  # "" and None stay distinct
    assert _digest(ctx, "a.txt", "b.txt") != _digest(ctx, "b.txt", "a.txt")
    (ctx / "copy.txt").write_text("alpha")
    assert _digest(ctx, "copy.txt") != plain  # same content, another name
    assert _digest(ctx, "*.nothing") != _digest(ctx, "*.none")


def test_digest_ignores_excluded_content(ctx: Path) -> None:
    first = _digest(ctx, ".", patterns=("docs", "*.md"))
    (ctx / "docs/guide.md").write_text("changed")
    _write(ctx, "docs/new/file", "new")
    (ctx / "c.md").write_text("changed too")
    assert _digest(ctx, ".", patterns=("docs", "*.md")) == first
    assert _digest(ctx, ".") != first


def test_digest_errors_like_select(ctx: Path) -> None:
    with pytest.raises(ContextError, match='"/missing": not found'):
        _digest(ctx, "missing")


def test_big_file_is_streamed_and_hashed(ctx: Path) -> None:
    data = os.urandom(1 << 20) * 9
    (ctx / "big.bin").write_bytes(data)
    first = _digest(ctx, "big.bin")
    with open(ctx / "big.bin", "r+b") as fh:
        fh.seek(len(data) - 1)
        fh.write(bytes([data[-1] ^ 1]))
    assert _digest(ctx, "big.bin") != first


# ---------------------------------------------------------------------------- memo


def test_in_process_memo_never_serves_a_changed_file(ctx: Path) -> None:
    time.sleep(filehash._TICK_NS / 1e9 * 1.5)  # let the fixture's files settle
    bc = _ctx(ctx)
    path = ctx / "a.txt"
    first = bc.digest(["a.txt"], chown=None, chmod=None)
    assert str(path.resolve()) in bc._hasher._memo._live  # remembered: the next digest is free
    st = path.stat()
    path.write_text("ALPHA")  # same size...
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # ...and same mtime
    second = bc.digest(["a.txt"], chown=None, chmod=None)
    assert second != first
    assert second == _digest(ctx, "a.txt")
    # replaced by another inode with identical size and times
    tmp = ctx / "a.tmp"
    tmp.write_text("alpha")
    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
    tmp.replace(path)
    assert bc.digest(["a.txt"], chown=None, chmod=None) == first


def test_fresh_files_are_not_remembered(ctx: Path) -> None:
    bc = _ctx(ctx)
    _write(ctx, "new.txt", "just written")
    bc.digest(["new.txt"], chown=None, chmod=None)
    assert str((ctx / "new.txt").resolve()) not in bc._hasher._memo._live


def _settle(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shorten the persistence delay (2 s) to a few timestamp ticks, and wait that long,
    so the fixture's fresh files count as settled."""
    monkeypatch.setattr(filehash, "_RACY_NS", filehash._TICK_NS)
    time.sleep(filehash._TICK_NS / 1e9 * 1.5)


def _memo_file(memo_dir: Path) -> Path:
    (found,) = memo_dir.glob("context-*.json")
    return found


def test_persistent_memo_roundtrip(
    ctx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _settle(monkeypatch)
    memo = tmp_path / "memo"
    first = _ctx(ctx, memo_dir=memo).digest(["src"], chown=None, chmod=None)
    doc = json.loads(_memo_file(memo).read_text())
    stored = doc["entries"][str(ctx.resolve() / "src/main.py")]
    assert stored[-1] == hashlib.sha256(b"print(1)").hexdigest()
    st = os.stat(ctx / "src/main.py")
    assert stored[:5] == [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]

    # a new process (new BuildContext) uses the stored hashes: prove it with a planted one
    stored[-1] = "0" * 64
    _memo_file(memo).write_text(json.dumps(doc))
    planted = _ctx(ctx, memo_dir=memo).digest(["src"], chown=None, chmod=None)
    assert planted != first

    # a changed file (same size, same mtime) is never served from the memo
    st = (ctx / "src/main.py").stat()
    (ctx / "src/main.py").write_text("print(3)")
    os.utime(ctx / "src/main.py", ns=(st.st_atime_ns, st.st_mtime_ns))
    fresh = _ctx(ctx, memo_dir=memo).digest(["src"], chown=None, chmod=None)
    assert fresh == _digest(ctx, "src")
    assert fresh not in (first, planted)


def test_recently_changed_files_are_not_persisted(ctx: Path, tmp_path: Path) -> None:
    memo = tmp_path / "memo"
    _ctx(ctx, memo_dir=memo).digest(["src"], chown=None, chmod=None)
    assert list(memo.glob("context-*.json")) == []  # every file was just written


def test_corrupt_memo_is_ignored(
    ctx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _settle(monkeypatch)
    memo = tmp_path / "memo"
    expected = _digest(ctx, "src")
    assert _ctx(ctx, memo_dir=memo).digest(["src"], chown=None, chmod=None) == expected
    path = _memo_file(memo)
    for garbage in ("{not json", "[]", '{"version": 99}', '{"version": 1, "entries": {"x": 1}}'):
        path.write_text(garbage)
        assert _ctx(ctx, memo_dir=memo).digest(["src"], chown=None, chmod=None) == expected
    bad_entry = {str(ctx.resolve() / "a.txt"): [1, 2, 3, 4, 5, "not-hex"]}
    path.write_text(json.dumps({"version": 1, "entries": bad_entry}))
    assert _ctx(ctx, memo_dir=memo).digest(["a.txt"], chown=None, chmod=None) == _digest(
        ctx, "a.txt"
    )


def test_memo_prunes_deleted_files(
    ctx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _settle(monkeypatch)
    memo = tmp_path / "memo"
    _ctx(ctx, memo_dir=memo).digest(["src"], chown=None, chmod=None)
    gone = str(ctx.resolve() / "src/util.py")
    assert gone in json.loads(_memo_file(memo).read_text())["entries"]
    (ctx / "src/util.py").unlink()
    _ctx(ctx, memo_dir=memo).digest(["a.txt"], chown=None, chmod=None)
    entries = json.loads(_memo_file(memo).read_text())["entries"]
    assert gone not in entries
    assert str(ctx.resolve() / "a.txt") in entries
