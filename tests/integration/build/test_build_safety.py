"""Regression tests for the sharp edges: host paths, user files, ignored files, mounts."""

from __future__ import annotations

import secrets
import stat
from pathlib import Path

import pytest
from tests.fixtures.build import make_context

pytestmark = pytest.mark.integration


def test_local_output_merges_into_an_existing_directory(kiln, busybox_image, tmp_path: Path):
    ctx = make_context(tmp_path / "ctx", f"FROM {busybox_image}\nRUN echo new > /built.txt\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep-me.txt").write_text("user file")
    (out / "built.txt").write_text("old")
    kiln("build", "-o", f"type=local,dest={out}", ctx).check()
    assert (out / "keep-me.txt").read_text() == "user file"
    assert (out / "built.txt").read_text() == "new\n"


def test_copy_never_follows_an_image_symlink_out_of_the_rootfs(
    kiln, busybox_image, registry, tmp_path: Path
):
    marker = f"kiln-escape-{secrets.token_hex(4)}"
    host_dir = tmp_path / "host-target"
    host_dir.mkdir()
    # an image whose /app/lib is an absolute symlink to a directory that exists on the host
    base = make_context(
        tmp_path / "base",
        f"FROM {busybox_image}\nRUN mkdir -p /app {host_dir} && ln -s {host_dir} /app/lib\n",
    )
    ref = f"{registry.host}/test/symlinked:1"
    kiln("build", "-t", ref, "--push", base).check()
    ctx = make_context(
        tmp_path / "ctx", f"FROM {ref}\nCOPY src/ /app/\n", {f"src/lib/{marker}": "x"}
    )
    out = tmp_path / "out"
    kiln("build", "-o", f"type=local,dest={out}", ctx).check()
    assert not (host_dir / marker).exists(), "COPY wrote through a symlink onto the host"
    # inside the image the symlink is followed, as BuildKit does
    assert (out / str(host_dir).lstrip("/") / marker).read_text() == "x"


def test_mount_point_cleanup_keeps_the_steps_own_files(kiln, busybox_image, tmp_path: Path):
    ctx = make_context(
        tmp_path / "ctx",
        f"FROM {busybox_image}\n"
        "RUN --mount=type=cache,target=/app/.cache touch /app/__init__.py && mkdir /app/pkg\n",
    )
    out = tmp_path / "out"
    kiln("build", "-o", f"type=local,dest={out}", ctx).check()
    assert (out / "app" / "__init__.py").is_file()
    assert (out / "app" / "pkg").is_dir()
    assert not (out / "app" / ".cache").exists()  # the empty mount point is gone


def test_context_bind_mount_honours_dockerignore(kiln, busybox_image, tmp_path: Path):
    ctx = make_context(
        tmp_path / "ctx",
        f"FROM {busybox_image}\n"
        "RUN --mount=type=bind,target=/src ls -a /src > /listing\n"
        "RUN --mount=type=bind,target=/a,rw=true --mount=type=bind,source=sub,target=/b,rw=true"
        " touch /a/new /b/new && ls /a > /a-list && ls /b > /b-list\n",
        {".dockerignore": ".env\n", ".env": "SECRET=1", "app.py": "print()", "sub/x": "x"},
    )
    root = tmp_path / "root"
    out = tmp_path / "out"
    kiln("build", "-o", f"type=local,dest={out}", ctx, root=root).check()
    listing = (out / "listing").read_text().split()
    assert "app.py" in listing and ".env" not in listing
    assert "sub" in (out / "a-list").read_text().split()  # two rw binds, each its own copy
    assert (out / "b-list").read_text().split() == ["new", "x"]
    assert not (ctx / "new").exists()  # rw writes never reach the context
    # an ignored file changing does not rerun the step (it cannot see it)
    (ctx / ".env").write_text("SECRET=2")
    assert kiln("build", ctx, root=root).check().ran == []


def test_cache_mount_from_a_stage_and_secret_env(kiln, busybox_image, tmp_path: Path):
    ctx = make_context(
        tmp_path / "ctx",
        f"""FROM {busybox_image} AS seed
RUN mkdir -p /seed && echo seeded > /seed/first

FROM {busybox_image}
RUN --mount=type=cache,target=/c,from=seed,source=/seed,id=seeded cat /c/first > /seen
RUN --mount=type=secret,id=tok,env=TOKEN test "$TOKEN" = s3cr3t && echo ok > /env-ok
RUN --mount=type=secret,id=fromenv cat /run/secrets/fromenv > /dev/null && echo ok > /file-ok
""",
    )
    secret = tmp_path / "tok"
    secret.write_text("s3cr3t\n")
    out = tmp_path / "out"
    kiln(
        "build", "--secret", f"id=tok,src={secret}", "--secret", "id=fromenv,env=KILN_TEST_SECRET",
        "-o", f"type=local,dest={out}", ctx, env={"KILN_TEST_SECRET": "v"},
    ).check()  # fmt: skip
    assert (out / "file-ok").read_text() == "ok\n"
    assert (out / "seen").read_text() == "seeded\n"
    assert (out / "env-ok").read_text() == "ok\n"


def test_local_output_leaves_device_nodes_out_unless_asked(kiln, busybox_image, tmp_path: Path):
    ctx = make_context(
        tmp_path / "ctx",
        "ARG BASE\nFROM ${BASE}\nRUN mknod /null-dev c 1 3 && mknod /blk b 7 0 "
        "&& mkfifo /fifo && echo x > /file && chmod 4755 /file\n",
    )
    base = ["--build-arg", f"BASE={busybox_image}"]
    plain, asked = tmp_path / "plain", tmp_path / "asked"
    kiln("build", *base, "-o", f"type=local,dest={plain}", ctx).check()
    kiln("build", *base, "-o", f"type=local,dest={asked},devices=true", ctx).check()
    assert not (plain / "null-dev").exists() and not (plain / "blk").exists()
    assert stat.S_ISFIFO((plain / "fifo").lstat().st_mode)
    assert (plain / "file").stat().st_mode & 0o7777 == 0o4755  # as the image has it
    assert stat.S_ISCHR((asked / "null-dev").lstat().st_mode)
    assert stat.S_ISBLK((asked / "blk").lstat().st_mode)
