"""Why did a step miss? One change of each kind, explained on a fresh machine.

Each test builds once with ``--cache-to`` (registry, gha or local), changes one input, and
builds again on an empty KILN_ROOT with ``--cache-from``: the step that reruns names the
input in ``--metadata-file`` (``miss_reason``: kind, subject, detail) and under its line in
plain progress (``#N MISS …``).
"""

from __future__ import annotations

import gzip
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zstandard
from tests.fixtures.build import KilnRun, make_context
from tests.fixtures.gha import gha_env
from tests.fixtures.registry import RegistryServer

pytestmark = pytest.mark.integration

DOCKERFILE = """\
ARG BASE
FROM ${BASE} AS app
ARG VERSION=1
ENV MODE=prod
COPY src/ /src/
RUN echo "$VERSION $MODE" > /v && ls -lR /src | wc -l > /count
COPY last.txt /last.txt
"""


def many_files(count: int = 1500) -> dict[str, str | bytes]:
    return {f"src/d{n % 30:02d}/f{n:04d}.txt": f"file {n}\n" for n in range(count)}


@pytest.fixture
def ctx(tmp_path: Path) -> Path:
    return make_context(tmp_path / "ctx", DOCKERFILE, {**many_files(), "last.txt": "v1\n"})


def step(run: KilnRun, text: str) -> dict[str, Any]:
    (found,) = [s for s in run.metadata["steps"] if text in s["step"]]
    return found


def reason(run: KilnRun, text: str) -> dict[str, str]:
    found = step(run, text)
    assert found["cached"] is False, f"{text} did not run"
    assert found["miss_reason"] is not None
    return found["miss_reason"]


def progress_line(run: KilnRun, text: str) -> str:
    """The ``#N MISS …`` line printed under the step whose instruction is *text*."""
    numbers = re.findall(rf"^#(\d+) \[[^\]]+\] {re.escape(text)}$", run.stderr, re.M)
    assert numbers, run.stderr
    (line,) = re.findall(rf"^#{numbers[0]} MISS (.*)$", run.stderr, re.M)
    return line


class Cache:
    """One cache backend: flags that export to it and import from it."""

    def __init__(self, kind: str, tmp: Path, registry: RegistryServer, env: dict[str, str]):
        self.kind, self.env = kind, env
        if kind == "registry":
            ref = f"{registry.host}/why/{tmp.name.lower()}:cache"
            self.to, self.from_ = f"type=registry,ref={ref},mode=max", f"type=registry,ref={ref}"
        elif kind == "local":
            self.to = f"type=local,dest={tmp / 'cache'},mode=max"
            self.from_ = f"type=local,src={tmp / 'cache'}"
        else:
            self.to, self.from_ = "type=gha,mode=max", "type=gha"

    def flags(self) -> list[str]:
        return ["--cache-from", self.from_, "--cache-to", self.to]


@pytest.fixture(params=["registry", "gha", "local"])
def cache(request, tmp_path: Path, registry: RegistryServer, gha_server_factory) -> Cache:
    env: dict[str, str] = {}
    if request.param == "gha":
        server = gha_server_factory()
        env = gha_env(server, server.token("refs/heads/main"), "2")
    return Cache(request.param, tmp_path, registry, env)


@pytest.fixture
def registry_cache(tmp_path: Path, registry: RegistryServer) -> Cache:
    return Cache("registry", tmp_path, registry, {})


Build = Callable[..., KilnRun]


@pytest.fixture
def build(kiln, busybox_image: str, tmp_path: Path) -> Callable[..., KilnRun]:
    """``build(cache, ctx, *flags)``: a build on a fresh machine (its own KILN_ROOT)."""
    machines = iter(range(1000))

    def run(cache: Cache, ctx: Path, *flags: str) -> KilnRun:
        root = tmp_path / f"machine{next(machines)}"
        return kiln("build", "--build-arg", f"BASE={busybox_image}", *cache.flags(), *flags,
                    ctx, root=root, env=cache.env).check()  # fmt: skip

    return run


COPY = "COPY src/ /src/"
RUN = 'RUN echo "$VERSION $MODE" > /v && ls -lR /src | wc -l > /count'


def test_one_changed_file_of_a_large_copy(build, kiln, cache: Cache, ctx: Path):
    build(cache, ctx)
    (ctx / "src/d07/f0127.txt").write_text("changed\n")
    run = build(cache, ctx)
    assert reason(run, COPY) == {
        "kind": "file-changed",
        "subject": "src/d07/f0127.txt",
        "detail": "src/d07/f0127.txt changed",
    }
    assert progress_line(run, COPY) == "src/d07/f0127.txt changed"
    # the step after it names its parent
    after = reason(run, RUN)
    assert after["kind"] == "previous-step"
    assert COPY in after["subject"]
    assert step(run, "COPY last.txt")["cached"] is False
    # the whole table, from the metadata file
    saved = ctx.parent / "metadata.json"
    saved.write_text(json.dumps(run.metadata))
    table = kiln("explain", saved).check().stdout.splitlines()
    assert table[0].split() == ["STEP", "RESULT", "TIME", "BYTES", "WHY"]
    (copy_row,) = [row for row in table if row.startswith(f"app 2/4 {COPY}")]
    assert " ran " in copy_row and copy_row.endswith("src/d07/f0127.txt changed")
    assert table[-1] == "0/3 steps cached, 3 ran"


def test_added_and_removed_files(build, registry_cache: Cache, ctx: Path):
    build(registry_cache, ctx)
    (ctx / "src/d03/new.txt").write_text("new\n")
    added = build(registry_cache, ctx)
    assert reason(added, COPY)["kind"] == "file-added"
    assert reason(added, COPY)["subject"] == "src/d03/new.txt"
    (ctx / "src/d03/new.txt").unlink()
    (ctx / "src/d05/f0005.txt").unlink()
    (ctx / "src/d05/f0035.txt").unlink()
    removed = build(registry_cache, ctx)
    # compared with the newest cached step: the one that had new.txt
    why = reason(removed, COPY)
    assert (why["kind"], why["subject"]) == ("file-removed", "src/d03/new.txt")
    assert why["detail"] == "src/d03/new.txt was removed (and 2 more)"
    assert progress_line(removed, COPY) == why["detail"]


def test_chmod(build, registry_cache: Cache, ctx: Path):
    build(registry_cache, ctx)
    os.chmod(ctx / "src/d11/f0011.txt", 0o755)
    why = reason(build(registry_cache, ctx), COPY)
    assert (why["kind"], why["subject"]) == ("file-mode", "src/d11/f0011.txt")
    assert "from 644 to 755" in why["detail"]


def test_build_arg_value_is_shown_as_it_is_now(build, cache: Cache, ctx: Path):
    build(cache, ctx, "--build-arg", "VERSION=old-value-5f3a")
    run = build(cache, ctx, "--build-arg", "VERSION=new-value-9c1e")
    assert step(run, COPY)["cached"] == "remote"
    why = reason(run, RUN)
    assert (why["kind"], why["subject"]) == ("build-arg", "VERSION")
    assert "VERSION=new-value-9c1e" in why["detail"]
    assert "old-value-5f3a" not in run.stderr + str(run.metadata)
    assert progress_line(run, RUN) == why["detail"]


def test_env_change(build, registry_cache: Cache, ctx: Path):
    build(registry_cache, ctx)
    text = (ctx / "Dockerfile").read_text()
    (ctx / "Dockerfile").write_text(text.replace("ENV MODE=prod", "ENV MODE=dev"))
    why = reason(build(registry_cache, ctx), RUN)
    assert (why["kind"], why["subject"]) == ("env", "MODE")
    assert "MODE=dev" in why["detail"]


def test_edited_run_line(build, registry_cache: Cache, ctx: Path):
    build(registry_cache, ctx)
    edited = RUN.replace("wc -l", "wc -c")
    (ctx / "Dockerfile").write_text((ctx / "Dockerfile").read_text().replace(RUN, edited))
    run = build(registry_cache, ctx)
    why = reason(run, edited)
    assert (why["kind"], why["subject"]) == ("command", edited)
    assert reason(run, "COPY last.txt")["kind"] == "previous-step"


def test_new_base_image_digest(build, registry_cache: Cache, ctx: Path, kiln, busybox_image,
                               registry: RegistryServer, tmp_path: Path):  # fmt: skip
    build(registry_cache, ctx)
    other = f"{registry.host}/why/base:{tmp_path.name.lower()}"
    base_ctx = make_context(tmp_path / "base", f"FROM {busybox_image}\nRUN echo > /marker\n")
    kiln("build", "-t", other, "--push", base_ctx, root=tmp_path / "base-root").check()
    text = (ctx / "Dockerfile").read_text()
    (ctx / "Dockerfile").write_text(text.replace("ARG BASE\n", f"ARG BASE\nARG NEW={other}\n")
                                    .replace("FROM ${BASE}", "FROM ${NEW}"))  # fmt: skip
    why = reason(build(registry_cache, ctx), COPY)
    assert why["kind"] == "base-image"
    assert why["subject"].startswith("sha256:")
    assert "before" in why["detail"] and "now" in why["detail"]


def test_local_store_explains_without_any_import(kiln, busybox_image: str, ctx: Path,
                                                 tmp_path: Path):  # fmt: skip
    flags = ["--build-arg", f"BASE={busybox_image}"]
    kiln("build", *flags, ctx, root=tmp_path / "same").check()
    (ctx / "last.txt").write_text("v2\n")
    run = kiln("build", *flags, ctx, root=tmp_path / "same").check()
    assert run.ran == ["app 4/4 COPY last.txt /last.txt"]
    assert reason(run, "COPY last.txt") == {
        "kind": "file-changed",
        "subject": "last.txt",
        "detail": "last.txt changed",
    }


def test_missing_and_unauthorised_sources(build, ctx: Path, registry: RegistryServer,
                                          auth_registry: RegistryServer):  # fmt: skip
    missing = f"{registry.host}/why/never-pushed:cache"
    locked = f"{auth_registry.host}/why/locked:cache"
    none = Cache("registry", Path("unused"), registry, {})
    none.from_ = f"type=registry,ref={missing}"
    none.to = f"type=registry,ref={missing}-out"  # the import stays missing
    run = build(none, ctx, "--cache-from", f"type=registry,ref={locked}")
    why = reason(run, COPY)
    assert (why["kind"], why["subject"]) == ("no-source", "app")
    assert missing in why["detail"] and "not found" in why["detail"]
    assert locked in why["detail"]
    assert re.search(r"401|unauthori[sz]ed|denied|credentials", why["detail"], re.I)
    assert progress_line(run, COPY) == why["detail"]


@pytest.mark.slow
def test_other_platform(kiln, multiarch_busybox: str, tmp_path: Path, registry: RegistryServer):
    ctx = make_context(tmp_path / "ctx", "ARG BASE\nFROM ${BASE}\nCOPY a.txt /a.txt\n",
                       {"a.txt": "a\n"})  # fmt: skip
    ref = f"{registry.host}/why/platforms:cache"
    flags = ["--build-arg", f"BASE={multiarch_busybox}", "--cache-from", f"type=registry,ref={ref}"]
    kiln("build", *flags, "--platform", "linux/amd64", "--cache-to",
         f"type=registry,ref={ref},mode=max", ctx, root=tmp_path / "m1").check()  # fmt: skip
    run = kiln("build", *flags, "--platform", "linux/arm64", ctx, root=tmp_path / "m2").check()
    why = reason(run, "COPY a.txt")
    assert (why["kind"], why["subject"]) == ("platform", "linux/arm64")
    assert "linux/amd64" in why["detail"]


def _contents(path: Path) -> bytes:
    """A file's bytes, decompressed when it is a gzip or zstd layer."""
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        return gzip.decompress(data)
    if data[:4] == b"\x28\xb5\x2f\xfd":
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return data


def test_no_secret_or_build_arg_value_in_any_exported_blob_or_config(
    kiln, busybox_image: str, tmp_path: Path, registry: RegistryServer
):
    secret, value = b"s3cr3t-token-4471", "arg-value-8812"
    (tmp_path / "token").write_bytes(secret)
    ctx = make_context(tmp_path / "ctx", """\
ARG BASE
FROM ${BASE}
ARG VERSION
COPY a.txt /a.txt
RUN --mount=type=secret,id=tok test -s /run/secrets/tok && test -n "$VERSION" && echo ok > /ok
RUN --mount=type=cache,target=/cache test -n "$VERSION" && echo data > /cache/data
""", {"a.txt": "a\n"})  # fmt: skip
    ref = f"{registry.host}/why/secrets:cache"
    before = {p for p in registry.storage.rglob("*") if p.is_file()}
    kiln("build", "--build-arg", f"BASE={busybox_image}", "--build-arg", f"VERSION={value}",
         "--secret", f"id=tok,src={tmp_path / 'token'}",
         "--cache-to", f"type=local,dest={tmp_path / 'cache'},mode=max",
         "--cache-to", f"type=registry,ref={ref},mode=max", ctx,
         root=tmp_path / "root").check()  # fmt: skip
    exported = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    exported += [p for p in registry.storage.rglob("*") if p.is_file() and p not in before]
    exported += [p for p in (tmp_path / "root" / "cache").rglob("*") if p.is_file()
                 and "mounts" not in p.parts]  # the local store's records and trees  # fmt: skip
    assert len(exported) > 10
    described = 0
    for path in exported:
        data = _contents(path)
        assert secret not in data, path
        assert value.encode() not in data, path
        described += b"kiln.about" in data
    assert described >= 2  # the local and the registry cache configs


def test_an_inline_cache_says_it_cannot_explain(build, ctx: Path, registry: RegistryServer):
    image = f"{registry.host}/why/inline:latest"
    inline = Cache("registry", Path("unused"), registry, {})
    inline.from_, inline.to = image, "type=inline"
    build(inline, ctx, "-t", image, "--push")
    (ctx / "last.txt").write_text("v2\n")
    run = build(inline, ctx, "-t", image, "--push")
    assert step(run, COPY)["cached"] == "remote"
    why = reason(run, "COPY last.txt")
    assert why["kind"] == "no-source"
    assert f"type=registry,ref={image} (its records say nothing of their inputs" in why["detail"]
