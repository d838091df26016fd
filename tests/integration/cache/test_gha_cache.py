"""type=gha end to end against `kiln cache serve`, in v1 and v2 mode, on fresh machines."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.fixtures.build import corrupt, make_context
from tests.fixtures.gha import GhaServer, gha_env

pytestmark = pytest.mark.integration

READ = 1

DOCKERFILE = """\
ARG BASE
FROM ${BASE} AS tools
RUN echo tool > /tool

FROM ${BASE} AS app
COPY --from=tools /tool /tool
RUN cat /tool > /app.txt
COPY last.txt /last.txt

FROM ${BASE} AS docs
RUN echo docs > /docs.txt
"""


GZIP = b"\x1f\x8b"  # a layer blob starts so; the JSON index does not


def stored_entries(server: GhaServer) -> dict[Path, bytes]:
    """The committed entries of *server*'s filesystem storage, by file."""
    root = server.root / "storage" / "entries"
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def ctx(tmp_path: Path) -> Path:
    return make_context(tmp_path / "ctx", DOCKERFILE, {"last.txt": "v1\n"})


@pytest.mark.parametrize("version", ["1", "2"])
def test_max_export_then_full_and_partial_hits(
    kiln, busybox_image, gha_server_factory, ctx: Path, tmp_path: Path, version: str
):
    server = gha_server_factory()
    env = gha_env(server, server.token("refs/heads/main"), version)
    flags = ["--build-arg", f"BASE={busybox_image}", "--target", "app",
             "--cache-from", "type=gha", "--cache-to", "type=gha,mode=max"]  # fmt: skip
    cold = kiln("build", *flags, ctx, root=tmp_path / "m1", env=env).check()
    assert len(cold.ran) == 4
    (index,) = [e for e in stored_entries(server).values() if not e.startswith(GZIP)]
    full = kiln("build", *flags, ctx, root=tmp_path / "m2", env=env).check()
    assert full.ran == []
    assert {s["cached"] for s in full.metadata["steps"]} == {"remote"}
    assert full.metadata["layer_bytes_pulled"] == 0
    # of the cache, only the index was downloaded; the unchanged index is not saved again
    assert full.metadata["bytes"]["cache"] == {"pulled": len(index), "pushed": 0}
    (ctx / "last.txt").write_text("v2\n")
    out = tmp_path / "out"
    partial = kiln("build", *flags, "-o", f"type=local,dest={out}", ctx, root=tmp_path / "m3",
                   env=env).check()  # fmt: skip
    assert partial.ran == ["app 4/4 COPY last.txt /last.txt"]
    assert (out / "app.txt").read_text() == "tool\n"
    assert (out / "last.txt").read_text() == "v2\n"


def test_matrix_builds_keep_both_caches(
    kiln, busybox_image, gha_server_factory, ctx: Path, tmp_path: Path
):
    """Without a scope, each target gets its own index (BuildKit would overwrite one)."""
    server = gha_server_factory()
    env = gha_env(server, server.token("refs/heads/main"), "2")
    base = ["--build-arg", f"BASE={busybox_image}", "--cache-from", "type=gha",
            "--cache-to", "type=gha,mode=max"]  # fmt: skip
    kiln("build", *base, "--target", "app", ctx, root=tmp_path / "a", env=env).check()
    kiln("build", *base, "--target", "docs", ctx, root=tmp_path / "b", env=env).check()
    app = kiln("build", *base, "--target", "app", ctx, root=tmp_path / "c", env=env).check()
    docs = kiln("build", *base, "--target", "docs", ctx, root=tmp_path / "d", env=env).check()
    assert app.ran == [] and docs.ran == []
    # scope=buildkit restores BuildKit's shared scope: the second target's export replaces
    # the first's index
    shared = [*base[:2], "--cache-from", "type=gha,scope=buildkit",
              "--cache-to", "type=gha,mode=max,scope=buildkit"]  # fmt: skip
    first = kiln("build", *shared, "--target", "app", ctx, root=tmp_path / "e", env=env).check()
    kiln("build", *shared, "--target", "docs", ctx, root=tmp_path / "f", env=env).check()
    again = kiln("build", *shared, "--target", "app", ctx, root=tmp_path / "g", env=env).check()
    assert len(first.ran) == 4
    assert again.ran == first.ran  # docs' index holds none of app's steps: all run again


def test_pull_request_reads_main_but_writes_its_own_scope(
    kiln, busybox_image, gha_server_factory, ctx: Path, tmp_path: Path
):
    server = gha_server_factory()
    main_env = gha_env(server, server.token("refs/heads/main"), "2")
    pr_env = gha_env(server, server.token("refs/pull/7/merge", ("refs/heads/main", READ)), "2")
    flags = ["--build-arg", f"BASE={busybox_image}", "--target", "app",
             "--cache-from", "type=gha", "--cache-to", "type=gha,mode=max"]  # fmt: skip
    kiln("build", *flags, ctx, root=tmp_path / "main", env=main_env).check()
    (ctx / "last.txt").write_text("pr change\n")
    pr = kiln("build", *flags, ctx, root=tmp_path / "pr", env=pr_env).check()
    assert pr.ran == ["app 4/4 COPY last.txt /last.txt"]  # main's cache was read
    # main still sees only its own results: the PR's new step is not in main's scope
    main_again = kiln("build", *flags, ctx, root=tmp_path / "main2", env=main_env).check()
    assert main_again.ran == ["app 4/4 COPY last.txt /last.txt"]
    # and the PR's next run reuses its own scope's result
    pr_again = kiln("build", *flags, ctx, root=tmp_path / "pr2", env=pr_env).check()
    assert pr_again.ran == []


def test_server_down_with_ignore_error(kiln, busybox_image, gha_server_factory, ctx, tmp_path):
    server = gha_server_factory()
    env = gha_env(server, server.token("refs/heads/main"), "1")
    server.stop()
    flags = ["--build-arg", f"BASE={busybox_image}", "--target", "app",
             "--cache-from", "type=gha"]  # fmt: skip
    run = kiln("build", *flags, "--cache-to", "type=gha,mode=max,ignore-error=true,timeout=5s",
               ctx, env=env).check()  # fmt: skip
    assert "cannot import gha cache" in run.stderr and "failed (ignored)" in run.stderr
    failing = kiln("build", *flags, "--cache-to", "type=gha,mode=max,timeout=5s", ctx,
                   root=tmp_path / "b", env=env)  # fmt: skip
    assert failing.returncode == 1 and "Traceback" not in failing.stderr
    assert server.url.rstrip("/").removeprefix("http://") in failing.stderr


def test_corrupted_blob_is_never_used(kiln, busybox_image, gha_server_factory, ctx, tmp_path):
    server = gha_server_factory()
    env = gha_env(server, server.token("refs/heads/main"), "1")
    flags = ["--build-arg", f"BASE={busybox_image}", "--target", "app",
             "--cache-from", "type=gha", "--cache-to", "type=gha,mode=max"]  # fmt: skip
    kiln("build", *flags, ctx, root=tmp_path / "a", env=env).check()
    layers = [path for path, data in stored_entries(server).items() if data.startswith(GZIP)]
    assert len(layers) == 4  # one per step of app (tools' RUN, COPY, RUN, COPY); no index
    for path in layers:
        corrupt(path)
    (ctx / "last.txt").write_text("v2\n")
    out = tmp_path / "out"
    run = kiln("build", *flags, "-o", f"type=local,dest={out}", ctx, root=tmp_path / "b",
               env=env).check()  # fmt: skip
    assert "corrupt" in run.stderr
    assert "app 3/4 RUN cat /tool > /app.txt" in run.ran
    assert (out / "app.txt").read_text() == "tool\n"


@pytest.mark.parametrize("version", ["1", "2"])
def test_throttling_is_retried(
    kiln, busybox_image, gha_server_factory, flaky_front, ctx: Path, tmp_path: Path, version
):
    """The service answers 429 (with Retry-After) for a while: kiln waits and succeeds."""
    server = gha_server_factory()
    front = flaky_front(server)
    env = gha_env(server, server.token("refs/heads/main"), version)
    key = "ACTIONS_RESULTS_URL" if version == "2" else "ACTIONS_CACHE_URL"
    env[key] = front.url
    flags = ["--build-arg", f"BASE={busybox_image}", "--target", "app",
             "--cache-from", "type=gha", "--cache-to", "type=gha,mode=max,timeout=60s"]  # fmt: skip
    front.fail_for(2.0, status=429, retry_after=1)
    run = kiln("build", *flags, ctx, root=tmp_path / "a", env=env).check()
    assert len(run.ran) == 4
    throttled = [r for r in front.requests if r.status == 429]
    assert throttled, "the front never throttled anything"
    again = kiln("build", *flags, ctx, root=tmp_path / "b", env=env).check()
    assert again.ran == []  # the export survived the throttling
