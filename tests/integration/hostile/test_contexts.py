"""Hostile build contexts: links out of the context, special files, unreadable files,
files changing mid-build, odd ``.dockerignore`` files and names, very deep trees."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.fixtures.build import make_context
from tests.fixtures.hostile import Canary, clean_error

pytestmark = pytest.mark.integration


def links_out(ctx: Path, canary: Canary) -> None:
    """``abs-link`` and ``rel-link`` point at the canary's secret from inside *ctx*."""
    (ctx / "abs-link").symlink_to(canary.secret)
    (ctx / "rel-link").symlink_to(os.path.relpath(canary.secret, ctx))


def test_copy_of_the_context_copies_links_not_what_they_point_at(
    kiln, busybox_image, canary: Canary, tmp_path: Path
):
    ctx = make_context(tmp_path / "ctx", f"FROM {busybox_image}\nCOPY . /src\n", {"a": "a"})
    links_out(ctx, canary)
    out = tmp_path / "out"
    kiln("build", "-o", f"type=local,dest={out}", ctx).check()
    assert os.readlink(out / "src" / "abs-link") == str(canary.secret)
    assert os.readlink(out / "src" / "rel-link") == os.readlink(ctx / "rel-link")
    secret = canary.secret.read_bytes()
    found = [p for p in out.rglob("*") if p.is_file() and not p.is_symlink()
             and p.read_bytes() == secret]  # fmt: skip
    assert found == [], "the canary's content was copied into the image"


def test_a_named_link_out_of_the_context_resolves_inside_it(
    kiln, busybox_image, canary: Canary, tmp_path: Path
):
    """COPY follows a source that is a link — inside the context, as a chroot would: the
    absolute one names nothing there, the relative one names the context's own copy."""
    ctx = make_context(tmp_path / "ctx", f"FROM {busybox_image}\nCOPY abs-link /x\n",
                       {f"{canary.path.name}/secret": "the context's own file\n"})  # fmt: skip
    links_out(ctx, canary)
    clean_error(kiln("build", ctx), '"/abs-link": not found', code=2)
    (ctx / "Dockerfile").write_text(f"FROM {busybox_image}\nCOPY rel-link /x\n")
    out = tmp_path / "out"
    kiln("build", "-o", f"type=local,dest={out}", ctx).check()
    assert (out / "x").read_text() == "the context's own file\n"


def test_a_bind_mounted_context_shows_links_not_their_targets(
    kiln, busybox_image, canary: Canary, tmp_path: Path
):
    ctx = make_context(
        tmp_path / "ctx",
        f"FROM {busybox_image}\nRUN --mount=type=bind,target=/c "
        "(cat /c/abs-link /c/rel-link 2>/dev/null || true) > /got && readlink /c/abs-link > /l\n",
    )
    links_out(ctx, canary)
    out = tmp_path / "out"
    kiln("build", "-o", f"type=local,dest={out}", ctx).check()
    assert (out / "got").read_text() == ""
    assert (out / "l").read_text() == f"{canary.secret}\n"


@pytest.mark.parametrize("kind", ["fifo", "socket"])
def test_a_special_file_in_the_context_is_skipped_or_refused_never_read(
    kiln, busybox_image, tmp_path: Path, kind: str
):
    ctx = make_context(tmp_path / "ctx", f"FROM {busybox_image}\nCOPY . /src\n", {"a": "a"})
    special = ctx / "special"
    with contextlib.ExitStack() as stack:
        if kind == "fifo":
            os.mkfifo(special)  # reading it would block forever
        else:
            sock = stack.enter_context(socket.socket(socket.AF_UNIX))
            sock.bind(str(special))
        out = tmp_path / "out"
        kiln("build", "-o", f"type=local,dest={out}", ctx, timeout=60).check()
        assert (out / "src" / "a").read_text() == "a" and not (out / "src" / "special").exists()
        (ctx / "Dockerfile").write_text(f"FROM {busybox_image}\nCOPY special /x\n")
        clean_error(kiln("build", ctx, timeout=60), '"/special"', "not a regular file", code=2)


@contextlib.contextmanager
def unreadable(path: Path) -> Iterator[None]:
    """*path* made a file that cannot be read even by root: a bind mount of this process's
    ``/proc/PID/mem`` (reading offset 0 is an I/O error)."""
    path.write_text("")
    done = subprocess.run(["mount", "--bind", f"/proc/{os.getpid()}/mem", str(path)],
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot bind-mount an unreadable file: {done.stderr.strip()}")
    try:
        with pytest.raises(OSError), path.open("rb") as fh:
            fh.read(1)
        yield
    finally:
        subprocess.run(["umount", str(path)], check=True)


def test_an_unreadable_file_is_a_context_error_naming_it(kiln, busybox_image, tmp_path: Path):
    ctx = make_context(tmp_path / "ctx", f"FROM {busybox_image}\nCOPY . /src\n")
    with unreadable(ctx / "unreadable"):
        run = kiln("build", ctx)
    clean_error(run, "unreadable", code=2)


def test_a_file_changed_during_the_build_never_poisons_the_cache(
    kiln, busybox_image, kiln_root: Path, tmp_path: Path
):
    """``f`` changes while an earlier RUN runs, after kiln keyed the COPY by its old
    content: the COPY may fail or take the new content, but no cache entry may map the
    old content's key to the new content."""
    dockerfile = f"FROM {busybox_image}\nRUN sleep 1\nCOPY f /f\n"
    ctx = make_context(tmp_path / "ctx", dockerfile, {"f": "original\n"})
    env = {**os.environ, "KILN_ROOT": str(kiln_root)}
    argv = [sys.executable, "-m", "kiln.cli.main", "build", "--progress", "plain", str(ctx)]
    with subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True) as proc:
        assert proc.stderr is not None
        seen = []
        for line in proc.stderr:
            seen.append(line)
            if "RUN sleep 1" in line:  # the step started: the COPY was keyed before
                (ctx / "f").write_text("changed while building\n")
                break
        seen.append(proc.stderr.read())
        code = proc.wait(timeout=120)
    stderr = "".join(seen)
    assert "RUN sleep 1" in stderr and "Traceback" not in stderr, stderr
    if code != 0:
        assert code == 2 and "the build context changed" in stderr, stderr
    for content in ("original\n", "changed while building\n"):
        (ctx / "f").write_text(content)
        out = tmp_path / f"out-{len(content)}"
        kiln("build", "-o", f"type=local,dest={out}", ctx).check()
        assert (out / "f").read_text() == content


def test_odd_but_valid_dockerignore_patterns_follow_docker(kiln, busybox_image, tmp_path: Path):
    files = {n: n for n in ("secret", "secret2", "secret3/f", "keep", "sub/deep/x/f")}
    ctx = make_context(tmp_path / "ctx", f"FROM {busybox_image}\nCOPY . /src\n", files)
    (ctx / ".dockerignore").write_text("/secret\n./secret2\nsecret3/\n**/deep/**\n../ctx/keep\n"
                                       "# a comment\n\n   \n")  # fmt: skip
    out = tmp_path / "out"
    kiln("build", "-o", f"type=local,dest={out}", ctx).check()
    found = sorted(str(p.relative_to(out / "src")) for p in (out / "src").rglob("*"))
    assert found == [".dockerignore", "Dockerfile", "keep", "sub", "sub/deep"]


@pytest.mark.parametrize(
    ("patterns", "needle"), [("[\n", "invalid pattern '['"), ("!\n", "illegal exclusion pattern")]
)
def test_an_invalid_dockerignore_pattern_is_one_error(
    kiln, busybox_image, kiln_root: Path, tmp_path: Path, patterns: str, needle: str
):
    ctx = make_context(tmp_path / "ctx", f"FROM {busybox_image}\nRUN true\nCOPY . /src\n",
                       {".dockerignore": patterns})  # fmt: skip
    clean_error(kiln("build", ctx), ".dockerignore", needle, code=2)
    assert not any((kiln_root / "cache" / "keys").glob("*"))


def test_a_dockerignore_that_is_a_fifo_does_not_hang_the_build(kiln, busybox_image, tmp_path: Path):
    ctx = make_context(tmp_path / "ctx", f"FROM {busybox_image}\nCOPY a /a\n", {"a": "a"})
    os.mkfifo(ctx / ".dockerignore")
    run = kiln("build", ctx, timeout=60)
    if run.returncode != 0:
        clean_error(run, ".dockerignore", code=2)


def test_names_with_newlines_bad_utf8_and_link_loops_are_copied_exactly(
    kiln, busybox_image, tmp_path: Path
):
    ctx = make_context(tmp_path / "ctx", f"FROM {busybox_image}\nCOPY . /src\n")
    odd = [b"new\nline", b"bad-\xff\xfe", b"tab\there", b"-rf"]
    for name in odd:
        with open(os.fsencode(ctx) + b"/" + name, "wb") as fh:
            fh.write(name)
    os.symlink("loop2", ctx / "loop1")
    os.symlink("loop1", ctx / "loop2")
    out = tmp_path / "out"
    kiln("build", "-o", f"type=local,dest={out}", ctx).check()
    for name in odd:
        with open(os.fsencode(out / "src") + b"/" + name, "rb") as fh:
            assert fh.read() == name
    assert os.readlink(out / "src" / "loop1") == "loop2"
    (ctx / "Dockerfile").write_text(f"FROM {busybox_image}\nCOPY loop1 /x\n")
    clean_error(kiln("build", ctx), "loop1", "too many levels of symbolic links", code=2)


def deep_tree(base: Path, depth: int) -> str:
    """``base/d/d/.../d/leaf`` *depth* levels deep (made without recursion); its path."""
    path = base
    for _ in range(depth):
        path = path / "d"
        path.mkdir()
    (path / "leaf").write_text("leaf\n")
    return str((path / "leaf").relative_to(base))


def test_a_deep_tree_is_copied_whole(kiln, busybox_image, tmp_path: Path):
    ctx = make_context(tmp_path / "ctx", f"FROM {busybox_image}\nCOPY . /src\n")
    leaf = deep_tree(ctx, 150)
    out = tmp_path / "out"
    kiln("build", "-o", f"type=local,dest={out}", ctx, timeout=120).check()
    assert (out / "src" / leaf).read_text() == "leaf\n"


@pytest.mark.slow
def test_a_very_deep_tree_is_copied_in_bounded_time(
    kiln, busybox_image, kiln_root: Path, tmp_path: Path
):
    ctx = make_context(tmp_path / "ctx", f"FROM {busybox_image}\nCOPY . /src\n")
    deep_tree(ctx, 600)
    try:
        kiln("build", ctx, timeout=10).check()  # linear work would take a second or two
    finally:  # a killed build leaves its step mounted: the next build on the root sweeps it
        kiln("build", make_context(tmp_path / "sweep", "FROM scratch\n"))
        assert str(kiln_root) not in Path("/proc/mounts").read_text()
