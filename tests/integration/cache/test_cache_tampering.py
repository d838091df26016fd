"""Tampered caches: a cache that names the wrong blob for a step is a miss, never an image
whose content differs from a build without the cache.

The attack: point one step's layer (its descriptor in the cache manifest and its entry in
the cache config) at another valid blob, keeping the step's own diff ID annotation.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.fixtures.build import corrupt, make_context
from tests.fixtures.registry import RegistryServer

pytestmark = pytest.mark.integration

DOCKERFILE = """\
ARG BASE
FROM ${BASE}
RUN echo one > /one
RUN echo two > /two
COPY a /a
"""


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def names_in(blob: bytes) -> set[str]:
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob))) as tar:
        return {m.name.lstrip("./") for m in tar.getmembers()}


class Layout:
    """A local cache directory (OCI image layout), read and rewritten."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def blob(self, digest: str) -> bytes:
        return (self.root / "blobs" / "sha256" / digest[7:]).read_bytes()

    def put(self, data: bytes) -> str:
        (self.root / "blobs" / "sha256" / sha256(data)[7:]).write_bytes(data)
        return sha256(data)

    def manifest(self) -> dict[str, Any]:
        index = json.loads((self.root / "index.json").read_text())
        return json.loads(self.blob(index["manifests"][0]["digest"]))

    def replace_manifest(self, manifest: dict[str, Any]) -> None:
        data = json.dumps(manifest).encode()
        index = json.loads((self.root / "index.json").read_text())
        index["manifests"][0].update(digest=self.put(data), size=len(data))
        (self.root / "index.json").write_text(json.dumps(index))


def relabel(manifest: dict[str, Any], config: dict[str, Any], step: str, blob: dict[str, Any]
            ) -> None:  # fmt: skip
    """Point the layer holding file *step* at *blob* (digest and size), keeping its diff ID
    annotation, in both the manifest's descriptors and the cache config's layer list."""
    (victim,) = [d for d in manifest["layers"] if d.get("_names") and step in d["_names"]]
    for entry in config["layers"]:
        if entry["blob"] == victim["digest"]:
            entry["blob"] = blob["digest"]
    victim.update(digest=blob["digest"], size=blob["size"])


def strip(manifest: dict[str, Any]) -> None:
    for desc in manifest["layers"]:
        desc.pop("_names", None)


def exported(kiln, busybox_image: str, tmp_path: Path
             ) -> tuple[Path, list[str], Layout, dict[str, Any], dict[str, Any]]:  # fmt: skip
    """Build DOCKERFILE into a local cache; its context, base flags, layout, manifest (each
    layer descriptor with the names in its tar as ``_names``) and cache config."""
    ctx = make_context(tmp_path / "ctx", DOCKERFILE, {"a": "a\n"})
    base = ["--build-arg", f"BASE={busybox_image}"]
    cache = Layout(tmp_path / "cache")
    kiln("build", *base, "--cache-to", f"type=local,dest={cache.root},mode=max", ctx,
         root=tmp_path / "first").check()  # fmt: skip
    manifest = cache.manifest()
    for desc in manifest["layers"]:
        desc["_names"] = names_in(cache.blob(desc["digest"]))
    return ctx, base, cache, manifest, json.loads(cache.blob(manifest["config"]["digest"]))


def save(cache: Layout, manifest: dict[str, Any], config: dict[str, Any]) -> None:
    strip(manifest)
    data = json.dumps(config).encode()
    manifest["config"].update(digest=cache.put(data), size=len(data))
    cache.replace_manifest(manifest)


def test_a_relabelled_layer_in_a_local_cache_is_never_used(kiln, busybox_image, tmp_path: Path):
    ctx, base, cache, manifest, config = exported(kiln, busybox_image, tmp_path)
    (one,) = [d for d in manifest["layers"] if "one" in d["_names"]]
    relabel(manifest, config, "two", one)  # the attack: two → one's blob
    save(cache, manifest, config)

    out = tmp_path / "out"
    run = kiln("build", *base, "--cache-from", f"type=local,src={cache.root}",
               "-o", f"type=local,dest={out}", ctx, root=tmp_path / "fresh").check()  # fmt: skip
    assert "two different layers" in run.stderr
    assert (out / "one").read_text() == "one\n" and (out / "two").read_text() == "two\n"
    assert [s.split(" ", 2)[2] for s in run.ran] == [
        "RUN echo one > /one", "RUN echo two > /two", "COPY a /a",
    ]  # fmt: skip


def test_a_layer_relabelled_as_another_valid_blob_is_caught_when_read(
    kiln, busybox_image, tmp_path: Path
):
    """No contradiction inside the cache this time (the step points at a blob the cache does
    not otherwise name): the layer is checked when kiln reads it, and the step runs."""
    ctx, base, cache, manifest, config = exported(kiln, busybox_image, tmp_path)
    # a valid layer blob of the same shape that the cache does not name
    stranger = gzip.compress(tar_with({"stranger": b"not two\n"}), mtime=0)
    relabel(manifest, config, "two", {"digest": cache.put(stranger), "size": len(stranger)})
    save(cache, manifest, config)

    out = tmp_path / "out"
    tarball = tmp_path / "image.tar"
    run = kiln("build", *base, "--cache-from", f"type=local,src={cache.root}",
               "-o", f"type=local,dest={out}", "-o", f"type=oci,dest={tarball}", ctx,
               root=tmp_path / "fresh").check()  # fmt: skip
    assert "is not the layer its" in run.stderr
    assert (out / "two").read_text() == "two\n" and not (out / "stranger").exists()
    assert "RUN echo two > /two" in [s.split(" ", 2)[2] for s in run.ran]
    # the archive's layers are the layers its config says
    with tarfile.open(tarball) as tar:
        index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
        image = json.load(tar.extractfile(f"blobs/sha256/{index['manifests'][0]['digest'][7:]}"))  # type: ignore[arg-type]
        config_blob = json.load(tar.extractfile(f"blobs/sha256/{image['config']['digest'][7:]}"))  # type: ignore[arg-type]
        diff_ids = [
            sha256(gzip.decompress(tar.extractfile(f"blobs/sha256/{d['digest'][7:]}").read()))  # type: ignore[union-attr]
            for d in image["layers"]
        ]
    assert diff_ids == config_blob["rootfs"]["diff_ids"]


def tar_with(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_a_relabelled_layer_in_a_registry_cache_gives_a_consistent_image(
    kiln, busybox_image, registry: RegistryServer, tmp_path: Path
):
    ctx = make_context(tmp_path / "ctx", DOCKERFILE, {"a": "a\n"})
    base = ["--build-arg", f"BASE={busybox_image}"]
    repo = f"{registry.host}/tamper/app"
    kiln("build", *base, "--cache-to", f"type=registry,ref={repo}:cache,mode=max", ctx,
         root=tmp_path / "first").check()  # fmt: skip
    api = f"http://{registry.host}/v2/tamper/app"
    oci = "application/vnd.oci.image.manifest.v1+json"
    with httpx.Client() as http:
        manifest = http.get(f"{api}/manifests/cache", headers={"Accept": oci}).json()
        for desc in manifest["layers"]:
            desc["_names"] = names_in(http.get(f"{api}/blobs/{desc['digest']}").content)
        config = http.get(f"{api}/blobs/{manifest['config']['digest']}").json()
        (one,) = [d for d in manifest["layers"] if "one" in d["_names"]]
        relabel(manifest, config, "two", one)
        strip(manifest)
        data = json.dumps(config).encode()
        start = http.post(f"{api}/blobs/uploads/")
        location = httpx.URL(start.headers["location"])
        url = (
            location
            if location.is_absolute_url
            else httpx.URL(f"http://{registry.host}").join(location)
        )
        http.put(url.copy_merge_params({"digest": sha256(data)}), content=data).raise_for_status()
        manifest["config"].update(digest=sha256(data), size=len(data))
        http.put(f"{api}/manifests/cache", content=json.dumps(manifest),
                 headers={"Content-Type": oci}).raise_for_status()  # fmt: skip

        image = f"{repo}:pushed"
        run = kiln("build", *base, "--cache-from", f"{repo}:cache", "-t", image, "--push", ctx,
                   root=tmp_path / "fresh").check()  # fmt: skip
        assert "two different layers" in run.stderr
        assert len(run.ran) == 3
        pushed = http.get(f"{api}/manifests/pushed", headers={"Accept": oci}).json()
        config_blob = http.get(f"{api}/blobs/{pushed['config']['digest']}").json()
        diff_ids = [
            sha256(gzip.decompress(http.get(f"{api}/blobs/{d['digest']}").content))
            for d in pushed["layers"]
        ]
        assert diff_ids == config_blob["rootfs"]["diff_ids"]  # docker pull would accept it


def test_a_corrupt_blob_in_a_local_cache_is_repaired_by_the_next_export(
    kiln, busybox_image, tmp_path: Path
):
    ctx = make_context(tmp_path / "ctx", DOCKERFILE, {"a": "a\n"})
    base = ["--build-arg", f"BASE={busybox_image}"]
    cache = Layout(tmp_path / "cache")
    flags = ["--cache-from", f"type=local,src={cache.root}",
             "--cache-to", f"type=local,dest={cache.root},mode=max"]  # fmt: skip
    env = {"SOURCE_DATE_EPOCH": "0"}
    kiln("build", *base, *flags, ctx, root=tmp_path / "a", env=env).check()
    layer = cache.root / "blobs" / "sha256" / cache.manifest()["layers"][0]["digest"][7:]
    good = layer.read_bytes()
    corrupt(layer)
    again = kiln("build", *base, *flags, ctx, root=tmp_path / "b", env=env).check()
    # found when the export checked what it keeps: the blob was removed, so its step ran
    assert [s.split(" ", 2)[2] for s in again.ran] == ["RUN echo one > /one"], again.stderr
    assert "running its step instead" in again.stderr
    assert layer.read_bytes() == good  # written again by the export (SOURCE_DATE_EPOCH: same bytes)
    third = kiln("build", *base, *flags, ctx, root=tmp_path / "c", env=env).check()
    assert third.ran == [] and len(third.cached) == 3


def test_steps_run_before_a_restart_are_reported_as_run(kiln, busybox_image, tmp_path: Path):
    """A corrupt cached blob found mid-build restarts the solve; what ran before the restart
    is reported as run (with its time), not as a local cache hit."""
    ctx = make_context(
        tmp_path / "ctx",
        "ARG BASE\nFROM ${BASE} AS a\nARG V\nRUN echo $V > /v\n"
        "FROM ${BASE}\nRUN echo b > /b\nCOPY --from=a /v /v\n",
    )
    base = ["--build-arg", f"BASE={busybox_image}"]
    cache = Layout(tmp_path / "cache")
    export = ["--cache-to", f"type=local,dest={cache.root},mode=max"]
    kiln("build", *base, "--build-arg", "V=1", *export, ctx, root=tmp_path / "first").check()
    for desc in cache.manifest()["layers"]:  # corrupt the layer of RUN echo b
        if "b" in names_in(cache.blob(desc["digest"])):
            corrupt(cache.root / "blobs" / "sha256" / desc["digest"][7:])
    out = tmp_path / "out"
    run = kiln("build", *base, "--build-arg", "V=2", "--cache-from",
               f"type=local,src={cache.root}", "-o", f"type=local,dest={out}", ctx,
               root=tmp_path / "fresh").check()  # fmt: skip
    assert "running its step instead" in run.stderr
    steps = {s["step"].split(" ", 2)[2]: s for s in run.metadata["steps"]}
    assert {text: s["cached"] for text, s in steps.items()} == {
        "RUN echo $V > /v": False, "RUN echo b > /b": False, "COPY --from=a /v /v": False,
    }  # fmt: skip
    assert steps["RUN echo $V > /v"]["seconds"] > 0
    assert (out / "v").read_text() == "2\n" and (out / "b").read_text() == "b\n"
