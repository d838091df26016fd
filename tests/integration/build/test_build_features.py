"""Dockerfile features, checked in the filesystem and config kiln produces."""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from tests.fixtures.build import make_context

pytestmark = pytest.mark.integration


def rootfs(kiln, ctx: Path, out: Path, *args: str, **kw) -> Path:
    kiln("build", *args, "-o", f"type=local,dest={out}", ctx, **kw).check()
    return out


def test_heredocs(kiln, busybox_image, tmp_path: Path):
    ctx = make_context(
        tmp_path / "ctx",
        f"""# syntax=docker/dockerfile:1
FROM {busybox_image}
ARG NAME=world
COPY <<EOF /greeting
hello ${{NAME}}
EOF
COPY <<'EOF' /literal
hello ${{NAME}}
EOF
RUN <<EOF
echo one > /one
echo two >> /one
EOF
RUN <<EOF
#!/bin/sh
echo "script $0" > /script
EOF
RUN cat <<EOF > /from-shell
inline
EOF
""",
    )
    out = rootfs(kiln, ctx, tmp_path / "out")
    assert (out / "greeting").read_text() == "hello world\n"
    assert (out / "literal").read_text() == "hello ${NAME}\n"
    assert (out / "one").read_text() == "one\ntwo\n"
    assert (out / "script").read_text().startswith("script ")
    assert (out / "from-shell").read_text() == "inline\n"


def test_arg_env_expansion_rules(kiln, busybox_image, tmp_path: Path):
    ctx = make_context(
        tmp_path / "ctx",
        f"""ARG VERSION=1.0
FROM {busybox_image}
ARG VERSION
ARG UNSET
ENV A=${{VERSION}} B=${{UNSET:-fallback}} C=${{VERSION:+set}} D=\\$literal E="two words"
ENV F=$A-$B
WORKDIR /w/${{VERSION}}
RUN echo "$A|$B|$C|$D|$E|$F|$VERSION" > /env.txt && pwd > /pwd.txt
""",
    )
    out = rootfs(kiln, ctx, tmp_path / "out", "--build-arg", "VERSION=2.5")
    assert (out / "env.txt").read_text() == "2.5|fallback|set|$literal|two words|2.5-fallback|2.5\n"
    assert (out / "pwd.txt").read_text() == "/w/2.5\n"


def test_dockerignore_with_exceptions(kiln, busybox_image, tmp_path: Path):
    ctx = make_context(
        tmp_path / "ctx",
        f"FROM {busybox_image}\nCOPY . /ctx/\n",
        {
            ".dockerignore": "**/*.log\nsecret/\n!keep.log\nnode_modules\n",
            "a.txt": "a",
            "debug.log": "no",
            "keep.log": "yes",
            "deep/x/trace.log": "no",
            "deep/x/ok.txt": "ok",
            "secret/key": "no",
            "node_modules/m.js": "no",
        },
    )
    out = rootfs(kiln, ctx, tmp_path / "out")
    files = sorted(str(p.relative_to(out / "ctx")) for p in (out / "ctx").rglob("*") if p.is_file())
    assert files == [".dockerignore", "Dockerfile", "a.txt", "deep/x/ok.txt", "keep.log"]


def test_user_chown_chmod_and_globs(kiln, busybox_image, tmp_path: Path):
    ctx = make_context(
        tmp_path / "ctx",
        f"""FROM {busybox_image}
RUN echo "app:x:1234:2345::/home/app:/bin/sh" >> /etc/passwd && echo "grp:x:2345:" >> /etc/group
COPY --chown=app:grp --chmod=0640 conf/*.conf /etc/app/
COPY --chown=42:43 bin/ /opt/bin/
USER app
RUN id -u > /tmp/uid && id -g > /tmp/gid
""",
        {"conf/a.conf": "a", "conf/b.conf": "b", "conf/c.txt": "c", "bin/tool": "#!/bin/sh\n"},
    )
    os.chmod(ctx / "bin" / "tool", 0o755)
    out = rootfs(kiln, ctx, tmp_path / "out")
    conf = out / "etc" / "app"
    assert sorted(p.name for p in conf.iterdir()) == ["a.conf", "b.conf"]
    st = (conf / "a.conf").stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (1234, 2345, 0o640)
    tool = (out / "opt" / "bin" / "tool").stat()
    assert (tool.st_uid, tool.st_gid, tool.st_mode & 0o777) == (42, 43, 0o755)
    assert (out / "tmp" / "uid").read_text() == "1234\n"
    assert (out / "tmp" / "gid").read_text() == "2345\n"


def test_unknown_user_is_a_clear_error(kiln, busybox_image, tmp_path: Path):
    ctx = make_context(tmp_path / "ctx", f"FROM {busybox_image}\nUSER ghost\nRUN true\n")
    run = kiln("build", ctx)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert "unable to find user ghost" in run.stderr


def _tar_bytes(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    files: dict[str, bytes] = {}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            data = files.get(self.path)
            if data is None:
                self.send_response(404)
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Last-Modified", "Wed, 21 Oct 2015 07:28:00 GMT")
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", files
    server.shutdown()
    server.server_close()


def test_add_extracts_local_archives_and_downloads_urls(
    kiln, busybox_image, tmp_path: Path, http_server
):
    url, files = http_server
    files["/dl/tool.sh"] = b"echo downloaded\n"
    ctx = make_context(
        tmp_path / "ctx",
        f"""FROM {busybox_image}
ADD bundle.tar.gz /opt/
ADD {url}/dl/tool.sh /usr/local/bin/
COPY bundle.tar.gz /copied/
""",
        {"bundle.tar.gz": _tar_bytes({"pkg/one.txt": b"1", "pkg/two.txt": b"2"})},
    )
    root = tmp_path / "root"
    out = rootfs(kiln, ctx, tmp_path / "out", root=root)
    assert (out / "opt" / "pkg" / "one.txt").read_text() == "1"
    assert (out / "opt" / "pkg" / "two.txt").read_text() == "2"
    assert (out / "copied" / "bundle.tar.gz").is_file()  # COPY never extracts
    tool = out / "usr" / "local" / "bin" / "tool.sh"
    assert tool.read_text() == "echo downloaded\n"
    assert tool.stat().st_mode & 0o777 == 0o600
    # unchanged remote file: cached; changed remote file: the ADD reruns
    assert kiln("build", ctx, root=root).check().ran == []
    files["/dl/tool.sh"] = b"echo v2\n"
    assert kiln("build", ctx, root=root).check().ran == [
        f"build 3/4 ADD {url}/dl/tool.sh /usr/local/bin/",
        "build 4/4 COPY bundle.tar.gz /copied/",
    ]


def test_network_none_isolates_the_step(kiln, busybox_image, tmp_path: Path, http_server):
    url, files = http_server
    files["/ping"] = b"pong"
    ctx = make_context(
        tmp_path / "ctx",
        f"""FROM {busybox_image}
RUN --network=host wget -q -O /host {url}/ping
RUN --network=none (wget -q -T 2 -O /none {url}/ping || echo unreachable > /none)
""",
    )
    out = rootfs(kiln, ctx, tmp_path / "out")
    assert (out / "host").read_text() == "pong"  # the server is on the host's loopback
    assert (out / "none").read_text() == "unreachable\n"


def test_run_mounts_bind_cache_tmpfs_secret(kiln, busybox_image, tmp_path: Path):
    ctx = make_context(
        tmp_path / "ctx",
        f"""FROM {busybox_image}
RUN --mount=type=bind,source=src,target=/mnt/src cat /mnt/src/in.txt > /bound
RUN --mount=type=cache,target=/cache echo run >> /cache/log && cat /cache/log > /cache-seen
RUN --mount=type=tmpfs,target=/scratch touch /scratch/x && ls /scratch > /tmpfs-seen
RUN --mount=type=secret,id=token cat /run/secrets/token > /dev/null && echo ok > /secret-ok
""",
        {"src/in.txt": "bound content\n"},
    )
    secret = tmp_path / "token.txt"
    secret.write_text("s3cr3t")
    root = tmp_path / "root"
    out = rootfs(kiln, ctx, tmp_path / "out", "--secret", f"id=token,src={secret}", root=root)
    assert (out / "bound").read_text() == "bound content\n"
    assert (out / "cache-seen").read_text() == "run\n"
    assert not (out / "cache").exists()  # the empty mount points are gone
    assert (out / "tmpfs-seen").read_text() == "x\n"
    assert not (out / "scratch").exists()
    assert (out / "secret-ok").read_text() == "ok\n"
    assert not (out / "run" / "secrets").exists()
    # the cache mount's content survives to the next run of the step
    out2 = rootfs(
        kiln, ctx, tmp_path / "out2", "--no-cache", "--secret", f"id=token,src={secret}", root=root
    )
    assert (out2 / "cache-seen").read_text() == "run\nrun\n"
    # a layer never contains a secret (and every layer was really looked into)
    layers = 0
    for blob in (root / "blobs" / "sha256").iterdir():
        data = blob.read_bytes()
        if data.startswith(b"\x1f\x8b"):
            data = gzip.decompress(data)
            layers += 1
        assert b"s3cr3t" not in data, blob
    assert layers >= 4  # at least the four RUN steps' layers


def test_source_date_epoch_gives_reproducible_images(kiln, busybox_image, tmp_path: Path):
    ctx = make_context(tmp_path / "ctx", f"FROM {busybox_image}\nRUN echo fixed > /f\n")
    env = {"SOURCE_DATE_EPOCH": "1700000000"}
    a = kiln("build", "--no-cache", ctx, root=tmp_path / "r1", env=env).check()
    b = kiln("build", "--no-cache", ctx, root=tmp_path / "r2", env=env).check()
    assert a.metadata["containerimage.digest"] == b.metadata["containerimage.digest"]


def test_zstd_layers(kiln, busybox_image, registry, tmp_path: Path):
    ctx = make_context(tmp_path / "ctx", f"FROM {busybox_image}\nRUN echo z > /z\n")
    ref = f"{registry.host}/test/zstd:1"
    kiln("build", "--compression", "zstd", "-t", ref, "--push", ctx).check()
    raw = subprocess.run(
        ["skopeo", "inspect", "--tls-verify=false", "--raw", f"docker://{ref}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    types = [layer["mediaType"] for layer in json.loads(raw)["layers"]]
    base = subprocess.run(
        ["skopeo", "inspect", "--tls-verify=false", "--raw", f"docker://{busybox_image}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    # the base's layers are reused as they are; only the new layer is zstd
    assert types == [
        *(layer["mediaType"] for layer in json.loads(base)["layers"]),
        "application/vnd.oci.image.layer.v1.tar+zstd",
    ]


def test_quiet_prints_only_the_image_id(kiln, busybox_image, tmp_path: Path):
    """``-q`` as buildx's ``--quiet``: no progress, the image ID (config digest) on stdout."""
    ctx = make_context(tmp_path / "ctx", "ARG BASE\nFROM ${BASE}\nRUN echo q > /q\n")
    tarball = tmp_path / "image.tar"
    run = kiln("build", "-q", "--build-arg", f"BASE={busybox_image}",
               "-o", f"type=oci,dest={tarball}", ctx).check()  # fmt: skip
    assert run.stderr == ""
    assert run.stdout == run.metadata["containerimage.config.digest"] + "\n"
