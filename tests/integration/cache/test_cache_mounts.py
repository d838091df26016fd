"""Cache mounts that travel: ``RUN --mount=type=cache`` contents exported with
``--cache-to`` and restored by ``--cache-from`` on a fresh machine (an empty KILN_ROOT),
through the real Distribution registry, local directories and ``kiln cache serve``."""

from __future__ import annotations

import json
import re
import subprocess
import threading
import zlib
from pathlib import Path

import pytest
import zstandard
from tests.fixtures.build import KilnRun, corrupt, make_context
from tests.fixtures.gha import gha_env
from tests.fixtures.registry import RegistryServer

pytestmark = pytest.mark.integration

# each build appends the input to a log kept in the cache mount and shows what it found
LOG = """\
ARG BASE
FROM ${{BASE}}
COPY input.txt /input.txt
RUN --mount=type=cache,target=/cache {extra}sh -c 'cat /cache/log > /seen 2>/dev/null; \
cat /input.txt >> /cache/log; {script}'
"""


def log_context(tmp_path: Path, text: str, *, script: str = "true", extra: str = "",
                name: str = "ctx") -> Path:  # fmt: skip
    return make_context(tmp_path / name, LOG.format(script=script, extra=extra),
                        {"input.txt": text})  # fmt: skip


def seen(out: Path) -> str:
    return (out / "seen").read_text() if (out / "seen").exists() else ""


def mount_report(run: KilnRun) -> dict:
    (report,) = run.metadata["cache_mounts"]
    return report


def registry_blobs(registry: RegistryServer) -> dict[str, bytes]:
    root = registry.storage / "docker/registry/v2/blobs/sha256"
    return {"sha256:" + p.parent.name: p.read_bytes() for p in root.glob("*/*/data")}


def decompressed(data: bytes) -> bytes:
    if data.startswith(b"\x28\xb5\x2f\xfd"):
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    if data.startswith(b"\x1f\x8b"):
        return zlib.decompress(data, 47)
    return data


def cache_config(ref: str) -> dict:
    manifest = json.loads(subprocess.run(
        ["skopeo", "inspect", "--tls-verify=false", "--raw", f"docker://{ref}"],
        capture_output=True, check=True).stdout)  # fmt: skip
    repo = ref.rsplit(":", 1)[0]
    digest = manifest["config"]["digest"]
    host, _, name = repo.partition("/")
    out = subprocess.run(["curl", "-sf", f"http://{host}/v2/{name}/blobs/{digest}"],
                         capture_output=True, check=True).stdout  # fmt: skip
    return json.loads(out)


@pytest.fixture
def cache_ref(registry: RegistryServer, request: pytest.FixtureRequest) -> str:
    """A cache repository of this test's own."""
    name = "".join(c if c.isalnum() else "-" for c in request.node.name.lower()).strip("-")
    return f"{registry.host}/mounts/{name[:60]}:buildcache"


def build(kiln, ctx: Path, root: Path, busybox_image: str, *flags: str, out: Path | None = None,
          env: dict[str, str] | None = None) -> KilnRun:  # fmt: skip
    outputs = ["-o", f"type=local,dest={out}"] if out is not None else []
    return kiln("build", "--build-arg", f"BASE={busybox_image}", *outputs, *flags, ctx,
                root=root, env=env).check()  # fmt: skip


def test_a_fresh_machine_gets_the_mount_through_a_registry_cache(
    kiln, busybox_image, cache_ref: str, tmp_path: Path
):
    flags = ["--cache-from", cache_ref, "--cache-to", f"type=registry,ref={cache_ref},mode=max"]
    first = build(kiln, log_context(tmp_path, "one\n"), tmp_path / "m1", busybox_image, *flags,
                  out=tmp_path / "o1")  # fmt: skip
    assert seen(tmp_path / "o1") == ""
    report = mount_report(first)
    assert report["id"] == "/cache" and report["export"] == "full" and report["layers"] == 1
    assert re.search(r"cache mount /cache: exported \d+ B as a new chain", first.stderr)

    # a fresh machine, one input changed: the RUN reruns and finds the first run's log
    second = build(kiln, log_context(tmp_path, "two\n", name="ctx2"), tmp_path / "m2",
                   busybox_image, *flags, out=tmp_path / "o2")  # fmt: skip
    assert "RUN" in second.ran[-1]  # the RUN ran
    assert seen(tmp_path / "o2") == "one\n"
    report = mount_report(second)
    assert report["restored_from"].startswith("registry ") and report["imported_bytes"] > 0
    assert report["export"] == "delta" and report["layers"] == 2
    assert "cache mount /cache: restored" in second.stderr

    third = build(kiln, log_context(tmp_path, "three\n", name="ctx3"), tmp_path / "m3",
                  busybox_image, *flags, out=tmp_path / "o3")  # fmt: skip
    assert seen(tmp_path / "o3") == "one\ntwo\n"
    config = cache_config(cache_ref)
    (mount,) = config["kiln.mounts"]
    assert mount["id"] == "/cache" and mount["platform"].startswith("linux/")
    assert len(mount["layers"]) == 3
    assert third.metadata["bytes"]["cache"]["pushed"] < 10_000  # a small delta, no base again


def test_a_full_hit_downloads_no_mount_and_keeps_it_in_the_cache(
    kiln, busybox_image, cache_ref: str, tmp_path: Path
):
    flags = ["--cache-from", cache_ref, "--cache-to", f"type=registry,ref={cache_ref},mode=max"]
    ctx = log_context(tmp_path, "one\n", script="head -c 300000 /dev/urandom > /cache/big")
    build(kiln, ctx, tmp_path / "m1", busybox_image, *flags)
    hit = build(kiln, ctx, tmp_path / "m2", busybox_image, *flags)
    assert hit.ran == []
    report = mount_report(hit)
    assert report["imported_bytes"] == 0 and "restored_from" not in report
    assert report["export"] == "carried"
    assert hit.metadata["bytes"]["cache"]["pulled"] < 50_000  # records only, not the mount
    # the re-exported cache still holds the mount: a later miss restores it
    later = build(kiln, log_context(tmp_path, "two\n", name="ctx2"), tmp_path / "m3",
                  busybox_image, *flags, out=tmp_path / "o3")  # fmt: skip
    assert seen(tmp_path / "o3") == "one\n"
    assert mount_report(later)["imported_bytes"] > 300_000


def test_an_unchanged_mount_uploads_nothing(kiln, busybox_image, cache_ref: str, tmp_path: Path):
    flags = ["--cache-from", cache_ref, "--cache-to", f"type=registry,ref={cache_ref},mode=max"]
    dockerfile = ("ARG BASE\nFROM ${BASE}\nCOPY input.txt /input.txt\n"
                  "RUN --mount=type=cache,target=/cache sh -c '[ -e /cache/big ] || "
                  "head -c 500000 /dev/urandom > /cache/big; ls -l /cache > /seen'\n")  # fmt: skip
    build(kiln, make_context(tmp_path / "a", dockerfile, {"input.txt": "1"}), tmp_path / "m1",
          busybox_image, *flags)  # fmt: skip
    again = build(kiln, make_context(tmp_path / "b", dockerfile, {"input.txt": "2"}),
                  tmp_path / "m2", busybox_image, *flags)  # fmt: skip
    report = mount_report(again)
    assert report["imported_bytes"] > 500_000  # restored, read, not changed
    assert report["export"] == "unchanged" and report["exported_bytes"] == 0
    assert again.metadata["bytes"]["cache"]["pushed"] < 20_000  # records, no mount blob


def test_owners_modes_links_and_hardlinks_survive_the_trip(
    kiln, busybox_image, cache_ref: str, tmp_path: Path
):
    make = (
        "mkdir -p /cache/dir && chmod 700 /cache/dir && echo data > /cache/dir/file && "
        "chown 1234:5678 /cache/dir/file && chmod 640 /cache/dir/file && "
        "ln -s dir/file /cache/link && ln /cache/dir/file /cache/hard && "
        "touch /cache/empty && chmod 4755 /cache/empty && mkfifo /cache/fifo"
    )
    show = ("cd /cache && stat -c \"%n %a %u %g %h %F\" dir dir/file link hard empty fifo "
            "> /stat && readlink link >> /stat")  # fmt: skip
    flags = ["--cache-from", cache_ref, "--cache-to", f"type=registry,ref={cache_ref},mode=max"]
    script = f"[ -e /cache/dir ] || ({make}); {show}"
    build(kiln, log_context(tmp_path, "1", script=script), tmp_path / "m1", busybox_image,
          *flags, out=tmp_path / "o1")  # fmt: skip
    build(kiln, log_context(tmp_path, "2", script=script, name="c2"), tmp_path / "m2",
          busybox_image, *flags, out=tmp_path / "o2")  # fmt: skip
    before = (tmp_path / "o1" / "stat").read_text()
    after = (tmp_path / "o2" / "stat").read_text()
    assert "dir/file 640 1234 5678 2 regular file" in before
    assert after == before


def test_mode_min_leaves_mounts_out_unless_asked(
    kiln, busybox_image, cache_ref: str, tmp_path: Path
):
    ctx = log_context(tmp_path, "one\n")
    plain = build(kiln, ctx, tmp_path / "m1", busybox_image, "--cache-to",
                  f"type=registry,ref={cache_ref}")  # fmt: skip
    assert plain.metadata["cache_mounts"][0].get("export", "") == ""
    assert "kiln.mounts" not in cache_config(cache_ref)
    build(kiln, ctx, tmp_path / "m2", busybox_image, "--cache-to",
          f"type=registry,ref={cache_ref},cache-mounts=true")  # fmt: skip
    assert [m["id"] for m in cache_config(cache_ref)["kiln.mounts"]] == ["/cache"]
    # chosen by id: a mount not named stays out
    two = ("ARG BASE\nFROM ${BASE}\nRUN --mount=type=cache,target=/a --mount=type=cache,"
           "id=pip,target=/b sh -c 'echo a > /a/x; echo b > /b/y'\n")  # fmt: skip
    build(kiln, make_context(tmp_path / "two", two), tmp_path / "m3", busybox_image,
          "--cache-to", f"type=registry,ref={cache_ref},mode=max,cache-mounts=pip")  # fmt: skip
    assert [m["id"] for m in cache_config(cache_ref)["kiln.mounts"]] == ["pip"]


def test_a_corrupt_or_missing_mount_blob_is_a_warning_and_an_older_mount(
    kiln, busybox_image, cache_ref: str, registry: RegistryServer, tmp_path: Path
):
    flags = ["--cache-from", cache_ref, "--cache-to", f"type=registry,ref={cache_ref},mode=max"]
    build(kiln, log_context(tmp_path, "one\n"), tmp_path / "m1", busybox_image, *flags)
    build(kiln, log_context(tmp_path, "two\n", name="c2"), tmp_path / "m2", busybox_image,
          *flags)  # fmt: skip
    (mount,) = cache_config(cache_ref)["kiln.mounts"]
    base, delta = (layer["blob"] for layer in mount["layers"])
    blob_root = registry.storage / "docker/registry/v2/blobs/sha256"

    def blob_file(digest: str) -> Path:
        hexd = digest.removeprefix("sha256:")
        return blob_root / hexd[:2] / hexd / "data"

    # the delta gone: the base alone is restored (the state before it), with a warning
    delta_file = blob_file(delta)
    saved = delta_file.read_bytes()
    delta_file.unlink()
    probe = ["--cache-from", cache_ref]  # no export: the cache stays as it is
    older = build(kiln, log_context(tmp_path, "three\n", name="c3"), tmp_path / "m3",
                  busybox_image, *probe, out=tmp_path / "o3")  # fmt: skip
    assert seen(tmp_path / "o3") == "one\n"
    assert "WARNING: cache mount /cache:" in older.stderr and "1 of 2 blobs" in older.stderr
    delta_file.write_bytes(saved)

    # the base corrupt: an empty mount, the build still succeeds and is right
    base_file = blob_file(base)
    saved = base_file.read_bytes()
    corrupt(base_file)
    try:
        empty = build(kiln, log_context(tmp_path, "four\n", name="c4"), tmp_path / "m4",
                      busybox_image, *probe, out=tmp_path / "o4")  # fmt: skip
    finally:
        base_file.write_bytes(saved)  # the registry is shared by the session's tests
    assert seen(tmp_path / "o4") == ""
    assert "WARNING: cache mount /cache:" in empty.stderr
    assert (tmp_path / "o4" / "input.txt").read_text() == "four\n"


def test_the_size_cap_drops_the_least_recently_used_files(
    kiln, busybox_image, cache_ref: str, tmp_path: Path
):
    script = ("cd /cache && for f in old mid new; do head -c 400000 /dev/urandom > $f; done && "
              "touch -d 2020-01-01 old && touch -d 2022-01-01 mid")  # fmt: skip
    capped = f"type=registry,ref={cache_ref},mode=max,cache-mount-max-size=900kB"
    flags = ["--cache-from", cache_ref, "--cache-to", capped]
    first = build(kiln, log_context(tmp_path, "1", script=script), tmp_path / "m1",
                  busybox_image, *flags)  # fmt: skip
    assert "removed the 1 least recently used files" in first.stderr
    ctx = log_context(tmp_path, "2", script="ls /cache > /listing", name="c2")
    build(kiln, ctx, tmp_path / "m2", busybox_image, "--cache-from", cache_ref,
          out=tmp_path / "o2")  # fmt: skip
    assert (tmp_path / "o2" / "listing").read_text().split() == ["log", "mid", "new"]


def test_a_secret_is_never_exported(
    kiln, busybox_image, cache_ref: str, registry: RegistryServer, tmp_path: Path
):
    secret = tmp_path / "token"
    secret.write_text("s3cr3t-value-4711")
    dockerfile = (
        "ARG BASE\nFROM ${BASE}\n"
        "RUN --mount=type=cache,target=/cache --mount=type=secret,id=tok,target=/cache/token "
        "sh -c 'cat /cache/token > /cache/copy && echo kept > /cache/other && ls /cache > /seen'\n"
    )
    run = build(kiln, make_context(tmp_path / "ctx", dockerfile), tmp_path / "m1", busybox_image,
                "--secret", f"id=tok,src={secret}", "--cache-to",
                f"type=registry,ref={cache_ref},mode=max", out=tmp_path / "o1")  # fmt: skip
    assert "copy holds a secret and is not exported" in run.stderr
    blobs = registry_blobs(registry)
    assert any(b"kept" in decompressed(data) for data in blobs.values())
    for data in blobs.values():
        assert b"s3cr3t-value-4711" not in decompressed(data)
    build(kiln, make_context(tmp_path / "c2", dockerfile.replace("cat /cache/token > /cache/copy",
          "true")), tmp_path / "m2", busybox_image, "--secret", f"id=tok,src={secret}",
          "--cache-from", cache_ref, out=tmp_path / "o2")  # fmt: skip
    assert (tmp_path / "o2" / "seen").read_text().split() == ["other", "token"]


def test_two_jobs_exporting_at_once_leave_one_whole_mount(
    kiln, busybox_image, cache_ref: str, tmp_path: Path
):
    flags = ["--cache-to", f"type=registry,ref={cache_ref},mode=max"]
    results: dict[str, KilnRun] = {}

    def job(name: str) -> None:
        script = f"head -c 200000 /dev/urandom > /cache/{name}; echo {name} > /cache/who"
        ctx = log_context(tmp_path, name, script=script, name=f"ctx-{name}")
        results[name] = build(kiln, ctx, tmp_path / name, busybox_image, *flags)

    threads = [threading.Thread(target=job, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(results) == {"a", "b"}
    script = "cat /cache/who > /who; ls /cache > /listing"
    build(kiln, log_context(tmp_path, "c", script=script, name="ctx-c"), tmp_path / "c",
          busybox_image, "--cache-from", cache_ref, out=tmp_path / "oc")  # fmt: skip
    who = (tmp_path / "oc" / "who").read_text().strip()
    assert who in ("a", "b")
    assert (tmp_path / "oc" / "listing").read_text().split() == sorted([who, "log", "who"])


def test_a_local_cache_carries_the_mount_and_stays_bounded(kiln, busybox_image, tmp_path: Path):
    cache = tmp_path / "cache"
    flags = ["--cache-from", f"type=local,src={cache}",
             "--cache-to", f"type=local,dest={cache},mode=max"]  # fmt: skip
    texts = ["one\n", "two\n", "three\n"]
    for n, text in enumerate(texts):
        build(kiln, log_context(tmp_path, text, name=f"c{n}"), tmp_path / f"m{n}",
              busybox_image, *flags, out=tmp_path / f"o{n}")  # fmt: skip
        assert seen(tmp_path / f"o{n}") == "".join(texts[:n])
    index = json.loads((cache / "index.json").read_text())
    (desc,) = index["manifests"]
    manifest = json.loads((cache / "blobs/sha256" / desc["digest"][7:]).read_bytes())
    referenced = {manifest["config"]["digest"], desc["digest"]}
    referenced |= {layer["digest"] for layer in manifest["layers"]}
    on_disk = {"sha256:" + p.name for p in (cache / "blobs/sha256").iterdir()
               if not p.name.startswith(".")}  # fmt: skip
    assert on_disk == referenced  # exactly what the cache references, nothing left behind


@pytest.mark.parametrize("version", ["1", "2"])
def test_the_gha_cache_carries_the_mount(
    kiln, busybox_image, gha_server_factory, tmp_path: Path, version: str
):
    server = gha_server_factory()
    env = gha_env(server, server.token("refs/heads/main"), version)
    # one scope for the three builds (the default one names the context directory)
    flags = ["--cache-from", "type=gha,scope=app", "--cache-to", "type=gha,scope=app,mode=max"]
    build(kiln, log_context(tmp_path, "one\n"), tmp_path / "m1", busybox_image, *flags,
          env=env)  # fmt: skip
    second = build(kiln, log_context(tmp_path, "two\n", name="c2"), tmp_path / "m2",
                   busybox_image, *flags, out=tmp_path / "o2", env=env)  # fmt: skip
    assert seen(tmp_path / "o2") == "one\n", second.stderr
    assert mount_report(second)["restored_from"].startswith("gha ")
    build(kiln, log_context(tmp_path, "three\n", name="c3"), tmp_path / "m3", busybox_image,
          *flags, out=tmp_path / "o3", env=env)  # fmt: skip
    assert seen(tmp_path / "o3") == "one\ntwo\n"
