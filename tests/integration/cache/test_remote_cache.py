"""--cache-from / --cache-to against the real Distribution registry and local directories.

A "fresh machine" is an empty KILN_ROOT: everything it reuses comes from the remote cache.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from tests.fixtures.build import corrupt, make_context
from tests.fixtures.registry import RegistryServer

from kiln.units import parse_size

pytestmark = pytest.mark.integration

MULTI = """\
ARG BASE
FROM ${{BASE}} AS deps
COPY deps.txt /deps.txt
RUN sleep 0.2 && sort /deps.txt > /deps.sorted

FROM ${{BASE}} AS build
COPY src/ /src/
RUN cat /src/* > /built

FROM ${{BASE}}
COPY --from=deps /deps.sorted /app/deps
COPY --from=build /built /app/built
RUN wc -l /app/deps > /app/count
COPY {last} /app/last.txt
"""


def multi_stage(tmp_path: Path, name: str = "ctx", last: str = "last.txt") -> Path:
    return make_context(
        tmp_path / name,
        MULTI.format(last=last),
        {"deps.txt": "b\na\n", "src/one.c": "one\n", "src/two.c": "two\n", last: "v1\n"},
    )


def raw_manifest_bytes(ref: str) -> bytes:
    """The manifest of *ref*, byte for byte as the registry serves it."""
    return subprocess.run(
        ["skopeo", "inspect", "--tls-verify=false", "--raw", f"docker://{ref}"],
        capture_output=True,
        check=True,
    ).stdout


def raw_manifest(ref: str) -> dict:
    return json.loads(raw_manifest_bytes(ref))


def registry_blob_files(registry: RegistryServer) -> list[Path]:
    return list((registry.storage / "docker/registry/v2/blobs/sha256").glob("*/*/data"))


def test_registry_cache_max_full_and_partial_hits(
    kiln, busybox_image, registry: RegistryServer, tmp_path: Path
):
    ctx = multi_stage(tmp_path)
    base = ["--build-arg", f"BASE={busybox_image}"]
    cache = f"{registry.host}/cache/app:buildcache"
    image = f"{registry.host}/cache/app:latest"
    flags = [
        *base,
        "--push",
        "-t",
        image,
        "--cache-from",
        cache,
        "--cache-to",
        f"type=registry,ref={cache},mode=max",
    ]

    cold = kiln("build", *flags, ctx, root=tmp_path / "m1").check()
    assert "not found" in cold.stderr  # the first run has no cache: a warning, not a failure
    assert len(cold.ran) == 8
    base_layers = raw_manifest(busybox_image)["layers"]
    cold_layers = raw_manifest(image)["layers"]
    # the final stage adds four layers: COPY --from=deps, COPY --from=build, RUN, COPY
    assert [x["digest"] for x in cold_layers[: len(base_layers)]] == [
        x["digest"] for x in base_layers
    ]
    assert len(cold_layers) == len(base_layers) + 4
    phases = cold.metadata["phases"]
    for name in ("context", "resolve", "run", "diff", "compress", "push", "cache export"):
        assert phases[name] > 0, name
    cache_manifest = raw_manifest_bytes(cache)
    cache_config = json.loads(cache_manifest)["config"]["size"]

    full = kiln("build", *flags, ctx, root=tmp_path / "m2").check()
    assert full.ran == []
    assert {s["cached"] for s in full.metadata["steps"]} == {"remote"}
    assert full.metadata["layer_bytes_pulled"] == 0
    assert full.metadata["containerimage.digest"] == cold.metadata["containerimage.digest"]
    # of the cache, only what the cold build exported as its manifest and config
    assert full.metadata["bytes"]["cache"]["pulled"] == len(cache_manifest) + cache_config
    phases = full.metadata["phases"]
    assert phases["cache import"] > 0
    assert phases["pull"] == phases["unpack"] == phases["run"] == phases["diff"] == 0

    (ctx / "last.txt").write_text("v2\n")
    partial = kiln("build", *flags, ctx, root=tmp_path / "m3").check()
    assert partial.ran == ["stage-2 5/5 COPY last.txt /app/last.txt"]
    # only the layers the missing step stands on were downloaded: base + the 3 final-stage
    # layers before it (not the deps and build stages', not the changed last one)
    stands_on = cold_layers[:-1]
    assert len(stands_on) == len(base_layers) + 3
    assert partial.metadata["layer_bytes_pulled"] == sum(x["size"] for x in stands_on)
    phases = partial.metadata["phases"]
    assert phases["pull"] > 0 and phases["unpack"] > 0 and phases["diff"] > 0
    assert phases["run"] == 0  # the COPY that reran runs no container
    out = tmp_path / "out"
    kiln(
        "build",
        *base,
        "--cache-from",
        cache,
        "-o",
        f"type=local,dest={out}",
        ctx,
        root=tmp_path / "m4",
    ).check()
    assert (out / "app" / "built").read_text() == "one\ntwo\n"
    assert (out / "app" / "last.txt").read_text() == "v2\n"


def test_cache_manifest_is_buildkit_shaped(kiln, busybox_image, registry, tmp_path: Path):
    ctx = multi_stage(tmp_path)
    for image_manifest in ("true", "false"):
        cache = f"{registry.host}/cache/shape:{image_manifest}"
        kiln(
            "build",
            "--build-arg",
            f"BASE={busybox_image}",
            "--cache-to",
            f"type=registry,ref={cache},mode=max,image-manifest={image_manifest}",
            ctx,
            root=tmp_path / f"r-{image_manifest}",
        ).check()
        raw = json.loads(
            subprocess.run(
                ["skopeo", "inspect", "--tls-verify=false", "--raw", f"docker://{cache}"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        if image_manifest == "true":
            assert raw["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
            assert raw["config"]["mediaType"] == "application/vnd.buildkit.cacheconfig.v0"
            layers = raw["layers"]
        else:
            assert raw["mediaType"] == "application/vnd.oci.image.index.v1+json"
            assert raw["manifests"][-1]["mediaType"] == "application/vnd.buildkit.cacheconfig.v0"
            layers = raw["manifests"][:-1]
        assert layers and all(
            layer["annotations"]["containerd.io/uncompressed"].startswith("sha256:")
            and "buildkit/createdat" in layer["annotations"]
            for layer in layers
        )
        # and kiln reads both forms back
        again = kiln(
            "build",
            "--build-arg",
            f"BASE={busybox_image}",
            "--cache-from",
            cache,
            ctx,
            root=tmp_path / f"fresh-{image_manifest}",
        ).check()
        assert again.ran == []


def test_inline_cache_min_skips_other_stages(kiln, busybox_image, registry, tmp_path: Path):
    ctx = multi_stage(tmp_path)
    image = f"{registry.host}/cache/inline:latest"
    flags = ["--build-arg", f"BASE={busybox_image}", "--push", "-t", image]
    kiln("build", *flags, "--cache-to", "type=inline", ctx, root=tmp_path / "a").check()
    config = json.loads(
        subprocess.run(
            ["skopeo", "inspect", "--tls-verify=false", "--config", "--raw", f"docker://{image}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert "moby.buildkit.cache.v0" in config
    # a fresh machine: the final stage hits from the image alone, although the other
    # stages' layers were never exported; no layer is downloaded
    run = kiln(
        "build",
        *flags,
        "--cache-from",
        f"type=registry,ref={image}",
        "--cache-to",
        "type=inline",
        ctx,
        root=tmp_path / "b",
    ).check()
    assert run.ran == []
    assert [s["step"].split()[0] for s in run.metadata["steps"]] == ["stage-2"] * 4
    assert run.metadata["layer_bytes_pulled"] == 0


def _blob_names(cache_dir: Path) -> set[str]:
    return {p.name for p in (cache_dir / "blobs" / "sha256").iterdir()}


def _referenced(cache_dir: Path) -> set[str]:
    index = json.loads((cache_dir / "index.json").read_text())
    names: set[str] = set()
    for entry in index["manifests"]:
        hex_ = entry["digest"].split(":")[1]
        names.add(hex_)
        manifest = json.loads((cache_dir / "blobs" / "sha256" / hex_).read_text())
        names.add(manifest["config"]["digest"].split(":")[1])
        names.update(layer["digest"].split(":")[1] for layer in manifest["layers"])
    return names


def test_local_cache_src_dest_does_not_grow(kiln, busybox_image, tmp_path: Path):
    """The seed page's local-cache workflow, minus its "Move cache" step."""
    ctx = multi_stage(tmp_path)
    cache = tmp_path / "buildx-cache"
    flags = [
        "--build-arg",
        f"BASE={busybox_image}",
        "--cache-from",
        f"type=local,src={cache}",
        "--cache-to",
        f"type=local,dest={cache},mode=max",
    ]
    first = kiln("build", *flags, ctx, root=tmp_path / "run0").check()
    assert "no cache at" in first.stderr
    sizes = []
    for n in range(1, 4):
        (ctx / "src" / "one.c").write_text(f"one v{n}\n")
        (ctx / "last.txt").write_text(f"last v{n}\n")
        run = kiln("build", *flags, ctx, root=tmp_path / f"run{n}").check()
        # the unchanged deps stage still hits from the cache on every fresh machine
        assert not any(step.startswith("deps") for step in run.ran)
        assert _blob_names(cache) == _referenced(cache)
        sizes.append(sum(p.stat().st_size for p in (cache / "blobs" / "sha256").iterdir()))
    assert max(sizes) - min(sizes) < 4096, sizes  # replaced, not accumulated


def test_local_cache_max_size_keeps_newest(kiln, busybox_image, tmp_path: Path):
    ctx = make_context(
        tmp_path / "ctx",
        "ARG BASE\nFROM ${BASE}\n"
        "RUN head -c 300000 /dev/urandom > /old\n"
        "RUN head -c 300000 /dev/urandom > /mid\n"
        "RUN head -c 300000 /dev/urandom > /new\n",
    )
    cache = tmp_path / "cache"
    run = kiln(
        "build",
        "--build-arg",
        f"BASE={busybox_image}",
        "--cache-to",
        f"type=local,dest={cache},mode=max,max-size=700KB",
        ctx,
        root=tmp_path / "a",
    ).check()
    limit = parse_size("700KB")  # as kiln reads max-size: 700_000 bytes
    assert f"left out the 1 oldest results to stay within max-size={limit} bytes" in run.stderr
    total = sum(p.stat().st_size for p in (cache / "blobs" / "sha256").iterdir())
    assert total <= limit
    assert total > 2 * 300_000  # the two newest results (random, incompressible) are kept
    fresh = kiln(
        "build",
        "--build-arg",
        f"BASE={busybox_image}",
        "--cache-from",
        f"type=local,src={cache}",
        ctx,
        root=tmp_path / "b",
    ).check()
    # the oldest result was dropped: that step runs; the later ones (keyed by their inputs,
    # not by what the step before them made) hit the results that were kept
    assert fresh.ran == ["build 2/4 RUN head -c 300000 /dev/urandom > /old"]
    assert fresh.cached == [
        "build 3/4 RUN head -c 300000 /dev/urandom > /mid",
        "build 4/4 RUN head -c 300000 /dev/urandom > /new",
    ]


def test_two_cache_sources_merge(kiln, busybox_image, registry, tmp_path: Path):
    ctx = multi_stage(tmp_path)
    base = ["--build-arg", f"BASE={busybox_image}"]
    main_cache = f"{registry.host}/cache/merge:main"
    branch_cache = f"{registry.host}/cache/merge:branch"
    kiln(
        "build",
        *base,
        "--cache-to",
        f"type=registry,ref={main_cache},mode=max",
        ctx,
        root=tmp_path / "main",
    ).check()
    # the branch changes the build stage only; its cache holds its own results
    (ctx / "src" / "two.c").write_text("two on the branch\n")
    kiln(
        "build",
        *base,
        "--cache-from",
        main_cache,
        "--cache-to",
        f"type=registry,ref={branch_cache},mode=max",
        ctx,
        root=tmp_path / "branch",
    ).check()
    # the branch's next run changes the last file: deps and build hit (from either source)
    (ctx / "last.txt").write_text("v3\n")
    run = kiln(
        "build",
        *base,
        "--cache-from",
        branch_cache,
        "--cache-from",
        main_cache,
        "--cache-from",
        f"{registry.host}/cache/merge:missing",
        ctx,
        root=tmp_path / "next",
    ).check()
    assert run.ran == ["stage-2 5/5 COPY last.txt /app/last.txt"]
    assert "merge:missing" in run.stderr


def test_corrupted_blob_in_the_cache_is_never_used(kiln, busybox_image, tmp_path: Path):
    ctx = make_context(
        tmp_path / "ctx",
        "ARG BASE\nFROM ${BASE}\nRUN echo precious > /data\nRUN cat /data > /copy\n",
    )
    cache = tmp_path / "cache"
    base = ["--build-arg", f"BASE={busybox_image}"]
    kiln(
        "build", *base, "--cache-to", f"type=local,dest={cache},mode=max", ctx, root=tmp_path / "a"
    ).check()
    # corrupt the first RUN's layer inside the cache directory (same size, other bytes)
    manifest_hex = json.loads((cache / "index.json").read_text())["manifests"][0]["digest"][7:]
    manifest = json.loads((cache / "blobs" / "sha256" / manifest_hex).read_text())
    target = cache / "blobs" / "sha256" / manifest["layers"][0]["digest"][7:]
    corrupt(target)
    out = tmp_path / "out"
    run = kiln(
        "build",
        *base,
        "--cache-from",
        f"type=local,src={cache}",
        "-o",
        f"type=local,dest={out}",
        ctx,
        root=tmp_path / "b",
    ).check()
    assert "corrupt" in run.stderr
    assert "build 2/3 RUN echo precious > /data" in run.ran
    assert (out / "copy").read_text() == "precious\n"


def test_registry_cache_with_auth(kiln, busybox_image, auth_registry, tmp_path: Path):
    ctx = multi_stage(tmp_path)
    config = tmp_path / "docker"
    config.mkdir()
    import base64

    token = base64.b64encode(f"{auth_registry.username}:{auth_registry.password}".encode())
    (config / "config.json").write_text(
        json.dumps({"auths": {auth_registry.host: {"auth": token.decode()}}})
    )
    env = {"DOCKER_CONFIG": str(config)}
    cache = f"{auth_registry.host}/private/cache:main"
    base = ["--build-arg", f"BASE={busybox_image}"]
    kiln(
        "build",
        *base,
        "--cache-to",
        f"type=registry,ref={cache},mode=max",
        ctx,
        root=tmp_path / "a",
        env=env,
    ).check()
    run = kiln("build", *base, "--cache-from", cache, ctx, root=tmp_path / "b", env=env).check()
    assert run.ran == []
    # without credentials the cache is unreadable: a warning, and the build still works
    anon = kiln(
        "build",
        *base,
        "--cache-from",
        cache,
        ctx,
        root=tmp_path / "c",
        env={"DOCKER_CONFIG": str(tmp_path / "nobody")},
    )
    anon.check()
    assert "cannot import cache" in anon.stderr
    assert len(anon.ran) == 8


def test_corrupted_blob_in_a_registry_cache_is_never_used(
    kiln, busybox_image, registry_factory, tmp_path: Path
):
    registry = registry_factory()
    ctx = make_context(
        tmp_path / "ctx",
        "ARG BASE\nFROM ${BASE}\nRUN echo precious > /data\nCOPY last.txt /last\n",
        {"last.txt": "v1\n"},
    )
    cache = f"{registry.host}/c/app:cache"
    base = ["--build-arg", f"BASE={busybox_image}"]
    kiln(
        "build",
        *base,
        "--cache-to",
        f"type=registry,ref={cache},mode=max",
        ctx,
        root=tmp_path / "a",
    ).check()
    raw = json.loads(
        subprocess.run(
            ["skopeo", "inspect", "--tls-verify=false", "--raw", f"docker://{cache}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    run_layer = raw["layers"][0]["digest"][7:]
    (data,) = [p for p in registry_blob_files(registry) if p.parent.name == run_layer]
    corrupt(data)
    # the COPY misses, so the corrupted RUN layer must be fetched: it fails verification
    (ctx / "last.txt").write_text("v2\n")
    out = tmp_path / "out"
    run = kiln(
        "build",
        *base,
        "--cache-from",
        cache,
        "-o",
        f"type=local,dest={out}",
        ctx,
        root=tmp_path / "b",
    ).check()
    assert "corrupt" in run.stderr
    assert "build 2/3 RUN echo precious > /data" in run.ran
    assert (out / "data").read_text() == "precious\n"


def test_force_compression_converts_cached_layers(kiln, busybox_image, registry, tmp_path: Path):
    ctx = multi_stage(tmp_path)
    cache = f"{registry.host}/cache/zstd:cache"
    base = ["--build-arg", f"BASE={busybox_image}"]
    kiln(
        "build",
        *base,
        "--cache-to",
        f"type=registry,ref={cache},mode=max,compression=zstd,force-compression=true",
        ctx,
        root=tmp_path / "a",
    ).check()
    raw = json.loads(
        subprocess.run(
            ["skopeo", "inspect", "--tls-verify=false", "--raw", f"docker://{cache}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert {layer["mediaType"] for layer in raw["layers"]} == {
        "application/vnd.oci.image.layer.v1.tar+zstd"
    }
    out = tmp_path / "out"
    run = kiln(
        "build", *base, "--cache-from", cache, "-o", f"type=local,dest={out}", ctx,
        root=tmp_path / "b",
    ).check()  # fmt: skip
    assert run.ran == []
    assert (out / "app" / "built").read_text() == "one\ntwo\n"


def test_ignore_error_turns_a_failed_export_into_a_warning(kiln, busybox_image, tmp_path: Path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    ctx = make_context(tmp_path / "ctx", "ARG BASE\nFROM ${BASE}\nRUN echo x > /x\n")
    base = ["--build-arg", f"BASE={busybox_image}"]
    failing = kiln("build", *base, "--cache-to", f"type=registry,ref={dead}/c:1", ctx)
    assert failing.returncode == 1 and dead in failing.stderr
    assert "Traceback" not in failing.stderr
    ok = kiln(
        "build", *base, "--cache-to", f"type=registry,ref={dead}/c:1,ignore-error=true", ctx
    ).check()
    assert "failed (ignored)" in ok.stderr


def test_an_interrupted_export_leaves_the_previous_cache_usable(
    kiln, busybox_image, registry, tmp_path: Path
):
    ctx = make_context(
        tmp_path / "ctx", "ARG BASE\nFROM ${BASE}\nRUN echo one > /one\nCOPY f /f\n", {"f": "1"}
    )
    cache = f"{registry.host}/cache/interrupted:cache"
    base = ["--build-arg", f"BASE={busybox_image}"]
    to = ["--cache-to", f"type=registry,ref={cache},mode=max"]
    kiln("build", *base, *to, ctx, root=tmp_path / "a").check()
    # a second export dies uploading a blob (its local copy is corrupt): the manifest,
    # written last, still names the first export's complete cache
    (ctx / "f").write_text("2")
    root = tmp_path / "b"
    kiln("build", *base, ctx, root=root).check()
    newest = max((root / "blobs" / "sha256").iterdir(), key=lambda p: p.stat().st_mtime)
    corrupt(newest)
    broken = kiln("build", *base, *to, ctx, root=root)
    assert broken.returncode == 1 and "Traceback" not in broken.stderr
    (ctx / "f").write_text("1")
    fresh = kiln("build", *base, "--cache-from", cache, ctx, root=tmp_path / "c").check()
    assert fresh.ran == []


def test_an_evicted_blob_is_a_miss_not_a_failure(kiln, busybox_image, tmp_path: Path):
    ctx = make_context(
        tmp_path / "ctx", "ARG BASE\nFROM ${BASE}\nRUN echo a > /a\nCOPY f /f\n", {"f": "1"}
    )
    cache = tmp_path / "cache"
    base = ["--build-arg", f"BASE={busybox_image}"]
    kiln("build", *base, "--cache-to", f"type=local,dest={cache},mode=max", ctx,
         root=tmp_path / "a").check()  # fmt: skip
    index = json.loads((cache / "index.json").read_text())
    manifest_hex = index["manifests"][0]["digest"][7:]
    manifest = json.loads((cache / "blobs" / "sha256" / manifest_hex).read_text())
    (cache / "blobs" / "sha256" / manifest["layers"][0]["digest"][7:]).unlink()
    (ctx / "f").write_text("2")  # the COPY misses: it needs the RUN's (now missing) layer
    out = tmp_path / "out"
    run = kiln("build", *base, "--cache-from", f"type=local,src={cache}",
               "-o", f"type=local,dest={out}", ctx, root=tmp_path / "b").check()  # fmt: skip
    assert "is gone" in run.stderr
    assert "build 2/3 RUN echo a > /a" in run.ran
    assert (out / "a").read_text() == "a\n"


@pytest.mark.parametrize(
    ("config", "layers"),
    [
        (b'{"layers": "x"}', []),
        (b'{"layers": [], "records": [{"digest": "sha256:' + b"1" * 64 + b'",'
         b' "layers": [{"layer": "x"}]}]}', []),
        (b'{"layers": [{"blob": "sha256:' + b"0" * 64 + b'", "parent": NaN}], "records": []}',
         []),
        (b"not json", []),
        (b'{"layers": [], "records": []}', [{"digest": "oops"}]),
        (b'{"layers": [], "records": []}', ["not a descriptor"]),
    ],
)  # fmt: skip
def test_a_malformed_cache_is_a_warning(
    kiln, busybox_image, tmp_path: Path, config: bytes, layers: list
):
    import hashlib

    cache = tmp_path / "cache"
    blobs = cache / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    config_hex = hashlib.sha256(config).hexdigest()
    (blobs / config_hex).write_bytes(config)
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.buildkit.cacheconfig.v0",
                   "digest": f"sha256:{config_hex}", "size": len(config)},
        "layers": layers,
    }).encode()  # fmt: skip
    manifest_hex = hashlib.sha256(manifest).hexdigest()
    (blobs / manifest_hex).write_bytes(manifest)
    (cache / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": f"sha256:{manifest_hex}", "size": len(manifest),
        "annotations": {"org.opencontainers.image.ref.name": "latest"}}]}))  # fmt: skip
    ctx = make_context(tmp_path / "ctx", f"FROM {busybox_image}\nRUN true\n")
    run = kiln("build", "--cache-from", f"type=local,src={cache}", ctx).check()
    assert "Traceback" not in run.stderr
    assert run.ran == ["build 2/2 RUN true"]  # nothing unusable was taken for a hit
