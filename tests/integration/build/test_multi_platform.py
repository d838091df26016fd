"""``--platform linux/amd64,linux/arm64``: every platform built (arm64 RUN steps under QEMU
through binfmt_misc), one image index pushed, one rootfs per platform, caches shared.

The base is a real two-platform index (``multiarch_busybox``: Debian's busybox-static for
amd64 and busybox-static:arm64)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from tests.fixtures.build import make_context
from tests.fixtures.docker import DockerEngine
from tests.fixtures.gha import gha_env
from tests.fixtures.registry import RegistryServer

pytestmark = pytest.mark.integration

BOTH = "linux/amd64,linux/arm64"
ARCH = {"linux/amd64": "x86_64", "linux/arm64": "aarch64"}


def raw(ref: str) -> dict:
    out = subprocess.run(["skopeo", "inspect", "--tls-verify=false", "--raw", f"docker://{ref}"],
                         capture_output=True, check=True).stdout  # fmt: skip
    return json.loads(out)


def config_of(ref: str) -> dict:
    out = subprocess.run(["skopeo", "inspect", "--tls-verify=false", "--config",
                          f"docker://{ref}"], capture_output=True, check=True).stdout  # fmt: skip
    return json.loads(out)


def steps(run) -> dict[str, object]:
    return {s["step"]: s["cached"] for s in run.metadata["steps"]}


def test_two_platforms_make_one_index_and_run_natively_and_emulated(
    kiln, multiarch_busybox: str, registry: RegistryServer, tmp_path: Path
):
    ctx = make_context(tmp_path / "ctx", f"FROM {multiarch_busybox}\nARG TARGETPLATFORM\n"
                       "RUN uname -m > /arch && echo $TARGETPLATFORM > /target\n")  # fmt: skip
    ref = f"{registry.host}/multi/app:v1"
    out = tmp_path / "out"
    run = kiln("build", "--platform", BOTH, "-t", ref, "--push", "-o", f"type=local,dest={out}",
               ctx).check()  # fmt: skip
    index = raw(ref)
    assert index["mediaType"] == "application/vnd.oci.image.index.v1+json"
    listed = {f"{m['platform']['os']}/{m['platform']['architecture']}": m["digest"]
              for m in index["manifests"]}  # fmt: skip
    assert set(listed) == {"linux/amd64", "linux/arm64"}
    assert run.metadata["containerimage.digest"] in run.stderr  # the index's digest is reported
    for platform, digest in listed.items():
        config = config_of(f"{ref.rsplit(':', 1)[0]}@{digest}")
        assert f"{config['os']}/{config['architecture']}" == platform
        folder = out / platform.replace("/", "_")
        assert (folder / "arch").read_text().strip() == ARCH[platform]
        assert (folder / "target").read_text().strip() == platform
    assert {p["platform"] for p in run.metadata["platforms"]} == set(listed)
    assert all(label.startswith(("linux/amd64 ", "linux/arm64 ")) for label in steps(run))


def test_docker_list_type_and_oci_archive_hold_the_index(
    kiln, multiarch_busybox: str, registry: RegistryServer, tmp_path: Path
):
    ctx = make_context(tmp_path / "ctx", f"FROM {multiarch_busybox}\nRUN uname -m > /arch\n")
    ref = f"{registry.host}/multi/list:v1"
    tar = tmp_path / "image.tar"
    kiln("build", "--platform", BOTH, "--output",
         f"type=registry,name={ref},oci-mediatypes=false", "-o", f"type=oci,dest={tar}",
         ctx).check()  # fmt: skip
    assert raw(ref)["mediaType"] == "application/vnd.docker.distribution.manifest.list.v2+json"
    layout = tmp_path / "layout"
    layout.mkdir()
    subprocess.run(["tar", "-xf", str(tar), "-C", str(layout)], check=True)
    (top,) = json.loads((layout / "index.json").read_text())["manifests"]
    inner = json.loads((layout / "blobs/sha256" / top["digest"][7:]).read_text())
    assert len(inner["manifests"]) == 2
    for entry in inner["manifests"]:  # every image and layer of both platforms is there
        manifest = json.loads((layout / "blobs/sha256" / entry["digest"][7:]).read_text())
        for layer in manifest["layers"]:
            assert (layout / "blobs/sha256" / layer["digest"][7:]).exists()


def test_a_build_platform_stage_runs_natively_and_once(
    kiln, multiarch_busybox: str, tmp_path: Path
):
    dockerfile = (
        f"FROM --platform=$BUILDPLATFORM {multiarch_busybox} AS tools\n"
        "RUN uname -m > /tool-arch\n"  # platform-independent: once for both targets
        f"FROM --platform=$BUILDPLATFORM {multiarch_busybox} AS cross\n"
        "ARG TARGETARCH\nRUN uname -m > /ran-on && echo for-$TARGETARCH > /cross\n"
        f"FROM {multiarch_busybox}\n"
        "COPY --from=tools /tool-arch /\nCOPY --from=cross /ran-on /cross /\n"
    )
    out = tmp_path / "out"
    run = kiln("build", "--platform", BOTH, "-o", f"type=local,dest={out}",
               make_context(tmp_path / "ctx", dockerfile)).check()  # fmt: skip
    for platform in ("linux/amd64", "linux/arm64"):
        folder = out / platform.replace("/", "_")
        assert (folder / "tool-arch").read_text().strip() == "x86_64"  # never emulated
        assert (folder / "ran-on").read_text().strip() == "x86_64"
        assert (folder / "cross").read_text().strip() == f"for-{platform.split('/')[1]}"
    tools = [cached for label, cached in steps(run).items() if "tools 2/2" in label]
    assert sorted(map(str, tools)) == ["False", "local"]  # ran once, found by the other
    cross = [cached for label, cached in steps(run).items() if "cross 2/2" in label]
    assert cross == [False, False]  # TARGETARCH differs: once per platform


@pytest.mark.parametrize("backend", ["registry", "gha"])
def test_one_cache_carries_every_platform(
    kiln, multiarch_busybox: str, registry: RegistryServer, gha_server_factory, tmp_path: Path,
    backend: str,
):  # fmt: skip
    dockerfile = (f"FROM {multiarch_busybox}\nRUN uname -m > /arch\nCOPY app.txt /app.txt\n"
                  "RUN cat /arch /app.txt > /report\n")  # fmt: skip
    env = None
    if backend == "registry":
        cache = f"{registry.host}/multi/cache:{tmp_path.name[-20:]}"
        flags = ["--cache-from", cache, "--cache-to", f"type=registry,ref={cache},mode=max"]
    else:
        server = gha_server_factory()
        env = gha_env(server, server.token("refs/heads/main"), "2")
        flags = ["--cache-from", "type=gha,scope=multi", "--cache-to",
                 "type=gha,scope=multi,mode=max"]  # fmt: skip
    image = f"{registry.host}/multi/cached:{backend}"
    flags += ["--platform", BOTH, "-t", image, "--push"]
    ctx = make_context(tmp_path / "ctx", dockerfile, {"app.txt": "v1\n"})
    cold = kiln("build", *flags, ctx, root=tmp_path / "m1", env=env).check()
    assert list(steps(cold).values()) == [False] * 6
    hit = kiln("build", *flags, ctx, root=tmp_path / "m2", env=env).check()
    assert set(steps(hit).values()) == {"remote"} and len(steps(hit)) == 6
    assert hit.metadata["layer_bytes_pulled"] == 0
    assert hit.metadata["containerimage.digest"] == cold.metadata["containerimage.digest"]
    (ctx / "app.txt").write_text("v2\n")
    partial = kiln("build", *flags, ctx, root=tmp_path / "m3", env=env).check()
    ran = sorted(label for label, cached in steps(partial).items() if cached is False)
    assert [label.split(" ")[0] for label in ran] == ["linux/amd64"] * 2 + ["linux/arm64"] * 2
    assert all("COPY app.txt" in label or "report" in label for label in ran)


def test_docker_runs_the_arm64_image_of_the_index(
    kiln, multiarch_busybox: str, registry: RegistryServer, docker_engine: DockerEngine,
    tmp_path: Path,
):  # fmt: skip
    ctx = make_context(tmp_path / "ctx", f"FROM {multiarch_busybox}\nRUN uname -m > /arch\n"
                       'CMD ["sh", "-c", "cat /arch; uname -m"]\n')  # fmt: skip
    ref = f"{registry.host}/multi/run:v1"
    kiln("build", "--platform", BOTH, "-t", ref, "--push", ctx).check()
    for platform, arch in ARCH.items():
        shown = docker_engine.run("run", "--rm", "--platform", platform, ref).stdout.split()
        assert shown == [arch, arch]


def test_a_base_without_the_platform_is_an_error_naming_what_it_has(
    kiln, busybox_image: str, multiarch_busybox: str, tmp_path: Path
):
    single = kiln("build", "--platform", "linux/arm64",
                  make_context(tmp_path / "a", f"FROM {busybox_image}\nRUN true\n"))  # fmt: skip
    assert single.returncode != 0
    assert "has no linux/arm64 image" in single.stderr and "linux/amd64" in single.stderr
    index = kiln("build", "--platform", "linux/s390x",
                 make_context(tmp_path / "b", f"FROM {multiarch_busybox}\nRUN true\n"))  # fmt: skip
    assert index.returncode != 0
    assert "no manifest for platform linux/s390x" in index.stderr
    assert "linux/amd64" in index.stderr and "linux/arm64" in index.stderr


def test_per_platform_runners_push_by_digest_and_imagetools_merges_them(
    kiln, multiarch_busybox: str, registry: RegistryServer, gha_server_factory,
    docker_engine: DockerEngine, tmp_path: Path,
):  # fmt: skip
    """Docker's "distribute the build across multiple runners": one job per platform, each
    with its own (default, platform-named) gha scope, pushed by digest, merged at the end."""
    server = gha_server_factory()
    env = gha_env(server, server.token("refs/heads/main"), "2")
    ctx = make_context(tmp_path / "ctx", f"FROM {multiarch_busybox}\nRUN uname -m > /arch\n"
                       'CMD ["cat", "/arch"]\n')  # fmt: skip
    repo = f"{registry.host}/multi/jobs"
    digests = []

    def job(platform: str, root: str):
        return kiln("build", "--platform", platform, "--output",
                    f"type=image,name={repo},push-by-digest=true,name-canonical=true,push=true",
                    "--cache-from", "type=gha", "--cache-to", "type=gha,mode=max", ctx,
                    root=tmp_path / root, env=env).check()  # fmt: skip

    for platform in ("linux/amd64", "linux/arm64"):
        run = job(platform, platform.replace("/", "-"))
        digest = run.metadata["containerimage.digest"]
        assert run.metadata["image.name"] == f"{repo}@{digest}"
        digests.append(digest)
    # each job kept its own cache (the default scope names the platform): a rerun of the
    # first on a fresh runner is a full hit although the second exported after it
    again = job("linux/amd64", "again")
    assert set(steps(again).values()) == {"remote"}

    merged = kiln("imagetools", "create", "-t", f"{repo}:latest",
                  *(f"{repo}@{d}" for d in digests[:1]), digests[1])  # fmt: skip
    assert merged.returncode == 0, merged.stderr
    shown = kiln("imagetools", "inspect", f"{repo}:latest")
    assert shown.returncode == 0, shown.stderr
    assert "Platform:  linux/amd64" in shown.stdout and "Platform:  linux/arm64" in shown.stdout
    for platform, arch in ARCH.items():
        assert docker_engine.run("run", "--rm", "--platform", platform,
                                 f"{repo}:latest").stdout.strip() == arch  # fmt: skip

    # --append keeps what the tag names; a third image joins the two
    extra = kiln("build", "--platform", "linux/amd64", "--build-arg", "X=1", "--output",
                 f"type=image,name={repo},push-by-digest=true,push=true",
                 make_context(tmp_path / "ctx2", f"FROM {multiarch_busybox}\nRUN echo x > /x\n"),
                 root=tmp_path / "extra").check()  # fmt: skip
    kiln(
        "imagetools",
        "create",
        "--append",
        "-t",
        f"{repo}:latest",
        extra.metadata["containerimage.digest"],
    ).check()
    assert len(raw(f"{repo}:latest")["manifests"]) == 3
