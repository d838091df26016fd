""".dockerignore parsing and matching. Cases marked "patternmatcher" were checked against
moby/patternmatcher's test tables (which include Go's filepath.Match table)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.errors import ContextError
from kiln.source.dockerignore import (
    IgnoreMatcher,
    contains_wildcards,
    go_clean,
    ignore_file_for,
    load_ignore_patterns,
    parse_ignore_text,
)


def test_parse_ignore_text_like_readall() -> None:
    text = (
        "\ufefftest1\r\n/test2\n/a/file/here\n\nlastfile\n# this is a comment\n"
        "! /inverted/abs/path\n!\n! \n  # not a comment\n./x/../y/\n//z\n"
    )
    assert parse_ignore_text(text) == [
        "test1",
        "test2",
        "a/file/here",
        "lastfile",
        "!inverted/abs/path",
        "!",
        "!",
        "# not a comment",
        "y",
        "z",
    ]


def test_go_clean() -> None:
    assert go_clean("//a//b/") == "/a/b"
    assert go_clean("a/../..") == ".."
    assert go_clean("") == "."
    assert go_clean("./a/./b") == "a/b"


def test_dockerfile_specific_ignore_file_wins(tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / ".dockerignore").write_text("general\n")
    df_dir = tmp_path / "df"
    df_dir.mkdir()
    dockerfile = df_dir / "app.Dockerfile"
    dockerfile.write_text("FROM scratch\n")
    assert load_ignore_patterns(ctx, dockerfile) == ["general"]
    assert load_ignore_patterns(ctx, None) == ["general"]
    (df_dir / "app.Dockerfile.dockerignore").write_text("# only this one\nspecific\n!keep\n")
    assert ignore_file_for(ctx, dockerfile) == df_dir / "app.Dockerfile.dockerignore"
    assert load_ignore_patterns(ctx, dockerfile) == ["specific", "!keep"]
    (ctx / ".dockerignore").unlink()
    assert load_ignore_patterns(ctx, None) == []


def test_undecodable_bytes_match_fs_names(tmp_path: Path) -> None:
    (tmp_path / ".dockerignore").write_bytes(b"caf\xe9*\n")
    patterns = load_ignore_patterns(tmp_path, None)
    assert IgnoreMatcher(patterns).matches("caf\udce9.txt")


# (pattern, path, excluded) — patternmatcher's TestMatches table
SINGLE = [
    ("**", "file", True), ("**", "file/", True), ("**/", "file", True),
    ("**", "dir/file", True), ("**/", "dir/file/", True), ("**/**", "dir/file", True),
    ("dir/**", "dir/file", True), ("dir/**", "dir/dir2/file/", True),
    ("**/dir", "dir", True), ("**/dir", "dir/file", True),
    ("**/dir2/*", "dir/dir2/file", True), ("**/dir2/**", "dir/dir2/dir3/file", True),
    ("**file", "file", True), ("**file", "dir/dir/file", True), ("**/file", "dir/dir/file", True),
    ("**/file*", "dir/dir/file.txt", True), ("**/file*txt", "dir/dir/file.txt", True),
    ("**/file*.txt*", "dir/dir/file.txt", True), ("**/**/*.txt", "dir/dir/file.txt", True),
    ("**/**/*.txt2", "dir/dir/file.txt", False), ("**/*.txt", "file.txt", True),
    ("**/**/*.txt", "file.txt", True), ("a**/*.txt", "a/file.txt", True),
    ("a**/*.txt", "a/dir/dir/file.txt", True), ("a/*.txt", "a/dir/file.txt", False),
    ("a/*.txt", "a/file.txt", True), ("a/*.txt**", "a/file.txt", True),
    ("a[b-d]e", "ae", False), ("a[b-d]e", "ace", True), ("a[b-d]e", "aae", False),
    ("a[^b-d]e", "aze", True), (".*", ".foo", True), (".*", "foo", False),
    ("abc.def", "abcdef", False), ("abc.def", "abc.def", True), ("abc.def", "abcZdef", False),
    ("abc?def", "abcZdef", True), ("abc?def", "abcdef", False), ("a\\\\", "a\\", True),
    ("**/foo/bar", "foo/bar", True), ("**/foo/bar", "dir/dir2/foo/bar", True),
    ("abc/**", "abc", False), ("abc/**", "abc/def", True), ("abc/**", "abc/def/ghi", True),
    ("**/.foo", ".foo", True), ("**/.foo", "bar.foo", False),
    ("a(b)c/def", "a(b)c/def", True), ("a(b)c/def", "a(b)c/xyz", False),
    ("a.|)$(}+{bc", "a.|)$(}+{bc", True),
    ("dist/*.whl", "dist/p.py-2.4.0rc3+g08-py3-none-any.whl", True),
    ("a\\*b", "a*b", True),
    # Go filepath.Match table (through a parent-matching matcher)
    ("abc", "abc", True), ("*", "abc", True), ("*c", "abc", True), ("a*", "a", True),
    ("a*", "ab/c", True), ("a*/b", "abc/b", True), ("a*/b", "a/c/b", False),
    ("a*b*c*d*e*/f", "axbxcxdxexxx/f", True), ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", False),
    ("a*b?c*x", "abxbbxdbxebxczzx", True), ("a*b?c*x", "abxbbxdbxebxczzy", False),
    ("ab[c]", "abc", True), ("ab[e-g]", "abc", False), ("ab[^c]", "abc", False),
    ("ab[^e-g]", "abc", True), ("a\\*b", "ab", False), ("a?b", "a☺b", True),
    ("a[^a]b", "a☺b", True), ("a???b", "a☺b", False), ("[a-ζ]*", "\u03b1", True),
    ("*[a-ζ]", "A", False), ("a?b", "a/b", False), ("a*b", "a/b", False),
    ("[\\]a]", "]", True), ("[\\-]", "-", True), ("[x\\-]", "-", True), ("[x\\-]", "z", False),
    ("[\\-x]", "x", True), ("[\\-x]", "a", False), ("*x", "xxx", True),
    # parents: a pattern that matches a directory excludes what is below it
    ("docs", "docs/a/b.md", True), ("docs/*", "docs/a/b.md", True), ("d?cs", "docs/x", True),
    ("*.go", "pkg/main.go", False), ("**/*.go", "pkg/main.go", True),
]  # fmt: skip


@pytest.mark.parametrize(("pattern", "path", "excluded"), SINGLE)
def test_single_pattern(pattern: str, path: str, excluded: bool) -> None:
    assert IgnoreMatcher([pattern]).matches(path) is excluded


MULTI = [
    (["**", "!util/docker/web"], "util/docker/web/foo", False),
    (["**", "!util/docker/web", "util/docker/web/foo"], "util/docker/web/foo", True),
    (["**", "!dist/*.whl"], "dist/p-1.0-py3-none-any.whl", False),
    (["!fileutils.go", "*.go"], "fileutils.go", True),
    (["*.go", "!fileutils.go"], "fileutils.go", False),
    (["docs", "!docs/README.md"], "docs/README.md", False),
    (["docs/", "!docs/README.md"], "docs/README.md", False),
    (["docs/*", "!docs/README.md"], "docs/README.md", False),
    (["docs", "!docs/README.md"], "docs/other.md", True),
    (["docs", "!docs/sub"], "docs/sub/deep/x", False),
    (["docs", "!docs/sub", "docs/sub/deep"], "docs/sub/deep/x", True),
    (["*", "!keep", "keep/tmp*"], "keep/tmp1", True),
    (["*", "!keep", "keep/tmp*"], "keep/src/tmp1", False),
]


@pytest.mark.parametrize(("patterns", "path", "excluded"), MULTI)
def test_last_matching_pattern_wins(patterns: list[str], path: str, excluded: bool) -> None:
    assert IgnoreMatcher(patterns).matches(path) is excluded


def test_root_and_empty_never_excluded() -> None:
    m = IgnoreMatcher(["*", "**"])
    assert not m.matches(".")
    assert not m.matches("")
    assert not IgnoreMatcher([]).matches("anything")
    blank = IgnoreMatcher(["", "   "])
    assert not blank and blank.patterns == []


def test_patterns_are_cleaned() -> None:
    m = IgnoreMatcher(["  docs/  ", " !docs/keep ", "./a/../b"])
    assert m.patterns == ["docs", "!docs/keep", "b"]
    assert m.has_exceptions
    assert m.matches("b/c")


@pytest.mark.parametrize(
    "pattern",
    ["[", "a[", "[^", "[^bc", "[]a]", "[-]", "[x-]", "[-x]", "[a-b-c]", "\\", "!"],
)
def test_bad_patterns_are_context_errors(pattern: str) -> None:
    with pytest.raises(ContextError, match=r"\.dockerignore"):
        IgnoreMatcher([pattern])


def test_error_names_the_file() -> None:
    with pytest.raises(ContextError, match=r"app\.Dockerfile\.dockerignore"):
        IgnoreMatcher(["a["], source="app.Dockerfile.dockerignore")


def test_inverted_range_matches_nothing() -> None:
    m = IgnoreMatcher(["[z-a]x", "[^z-a]y"])
    assert not m.matches("zx")
    assert m.matches("qy")


def test_match_state_walk_agrees_with_matches() -> None:
    patterns = ["build", "!build/keep", "**/*.log", "!important.log", "tmp*", "src/**/gen"]
    m = IgnoreMatcher(patterns)
    paths = [
        "build/x", "build/keep/a", "build/keep/a.log", "important.log", "x/important.log",
        "a.log", "tmpdir/y", "src/a/b/gen/z", "src/gen", "other/tmpx",
    ]  # fmt: skip
    for path in paths:
        state = None
        parts = path.split("/")
        for depth in range(1, len(parts) + 1):
            state = m.match_state("/".join(parts[:depth]), state)
        assert state is not None
        assert m.is_excluded(state) is m.matches(path), path


def test_could_reinclude() -> None:
    assert not IgnoreMatcher(["build"]).could_reinclude("build")
    m = IgnoreMatcher(["build", "!build/keep/**", "vendor"])
    assert m.could_reinclude("build")
    assert m.could_reinclude("build/keep")
    assert not m.could_reinclude("build/other")
    assert not m.could_reinclude("vendor")
    # an exception with a wildcard might match anywhere: never prune
    wild = IgnoreMatcher(["vendor", "!**/*.md"])
    assert wild.could_reinclude("vendor")
    assert wild.could_reinclude("vendor/deep")


def test_contains_wildcards() -> None:
    assert contains_wildcards("*.txt")
    assert contains_wildcards("a/b?/c")
    assert contains_wildcards("[ab]")
    assert not contains_wildcards("plain/name.txt")
    assert not contains_wildcards("a\\*b")
