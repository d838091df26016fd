"""Tampered remote caches (local, registry, gha through a real ``kiln cache serve``): each
is a warning or a miss, and the build's result is what a build without cache gives.

(tests/integration/cache/test_cache_tampering.py relabels one layer as another in local
and registry caches; these are other ways of lying.)
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from tests.fixtures.build import make_context
from tests.fixtures.gha import GhaServer
from tests.fixtures.hostile import (
    OCI_LAYER_GZIP,
    LocalCache,
    RegistryAPI,
    gz,
    layer,
    layer_names,
    member,
    sha256,
    tree,
)
from tests.fixtures.registry import RegistryServer

from kiln.cache.backends.gha import blob_key, index_prefix
from kiln.gha.client import GhaClient

pytestmark = pytest.mark.integration

DOCKERFILE = """\
ARG BASE
FROM ${BASE}
RUN echo one > /f && echo one > /one
RUN echo two > /f && echo two > /two
COPY a /a
"""
ONE, TWO, COPY = ("RUN echo one > /f && echo one > /one",
                  "RUN echo two > /f && echo two > /two", "COPY a /a")  # fmt: skip
DIFF_ID = "containerd.io/uncompressed"


def ran(run: Any) -> list[str]:
    return [label.split(" ", 2)[2] for label in run.ran]


@dataclass
class Build:
    """The build every test tampers with: its context, flags, and the output of its first
    build (no cache: what every later build must give)."""

    ctx: Path
    base: list[str]
    expected: dict[str, tuple[Any, ...]]
    tmp: Path

    def again(self, kiln, cache_from: str, env: dict[str, str] | None = None) -> Any:
        """A fresh machine importing *cache_from*: must succeed with the expected output."""
        out = self.tmp / f"out-{secrets.token_hex(3)}"
        run = kiln("build", *self.base, "--cache-from", cache_from,
                   "-o", f"type=local,dest={out}", self.ctx, root=self.tmp / f"fresh-{out.name}",
                   env=env, timeout=120).check()  # fmt: skip
        assert "Traceback" not in run.stderr
        assert tree(out) == self.expected, "the result differs from a build without cache"
        return run


def first_build(kiln, busybox_image: str, tmp_path: Path, cache_to: str,
                env: dict[str, str] | None = None) -> Build:  # fmt: skip
    ctx = make_context(tmp_path / "ctx", DOCKERFILE, {"a": "a\n"})
    base = ["--build-arg", f"BASE={busybox_image}"]
    out = tmp_path / "expected"
    kiln("build", *base, "--cache-to", cache_to, "-o", f"type=local,dest={out}", ctx,
         root=tmp_path / "first", env=env).check()  # fmt: skip
    assert (out / "f").read_text() == "two\n"
    return Build(ctx, base, tree(out), tmp_path)


def records_by_step(cache: LocalCache) -> dict[str, dict[str, Any]]:
    """The config's records by the step whose layer they name (ONE, TWO, COPY)."""
    config, manifest = cache.config(), cache.manifest()
    names = {d["digest"]: layer_names(cache.blob(d["digest"])) for d in manifest["layers"]}
    out = {}
    for record in config["records"]:
        blob = config["layers"][record["layers"][0]["layer"]]["blob"]
        step = ONE if "one" in names[blob] else TWO if "two" in names[blob] else COPY
        out[step] = record
    return out


# --- local caches ------------------------------------------------------------------------


@pytest.fixture
def local(kiln, busybox_image: str, tmp_path: Path) -> tuple[Build, LocalCache]:
    cache = LocalCache(tmp_path / "cache")
    return first_build(kiln, busybox_image, tmp_path,
                       f"type=local,dest={cache.root},mode=max"), cache  # fmt: skip


def test_swapped_records_are_never_a_hit(kiln, local):
    build, cache = local
    config, manifest = cache.config(), cache.manifest()
    by_step = records_by_step(cache)
    one, two = by_step[ONE], by_step[TWO]
    one["layers"], two["layers"] = two["layers"], one["layers"]
    config["records"] = list(by_step.values())
    cache.save(manifest, config)
    build.again(kiln, f"type=local,src={cache.root}")


def test_a_config_whose_links_point_at_themselves_neither_hangs_nor_misleads(kiln, local):
    build, cache = local
    config, manifest = cache.config(), cache.manifest()
    for n, entry in enumerate(config["layers"]):
        entry["parent"] = n  # every layer its own parent
    for n, record in enumerate(config["records"]):
        record["inputs"] = [[{"link": n}]]  # every record its own input
    cache.save(manifest, config)
    run = build.again(kiln, f"type=local,src={cache.root}")
    assert ran(run) == []  # the layers are right: hits are fine, a loop is not


def test_an_enormous_cache_config_is_a_warning_and_a_miss(kiln, local):
    build, cache = local
    data = json.dumps(cache.config()).encode()
    cache.save(cache.manifest(), data[:-1] + b" " * (17 << 20) + b"}")  # still valid JSON
    run = build.again(kiln, f"type=local,src={cache.root}")
    assert "larger than" in run.stderr and "WARNING" in run.stderr
    assert ran(run) == [ONE, TWO, COPY]


@pytest.mark.parametrize("wrong", ["last", "first"])
def test_a_duplicated_diff_id_annotation_is_read_as_go_reads_it(kiln, local, wrong: str):
    """Two ``containerd.io/uncompressed`` keys on TWO's layer, one of them ONE's diff ID:
    the last one counts (as in Go); when it is the wrong one, the step runs."""
    build, cache = local
    manifest = cache.manifest()
    by_digest = {d["digest"]: d for d in manifest["layers"]}
    names = {d: layer_names(cache.blob(d)) for d in by_digest}
    (two,) = [d for d, n in names.items() if "two" in n]
    (one,) = [d for d, n in names.items() if "one" in n]
    real, fake = by_digest[two]["annotations"][DIFF_ID], by_digest[one]["annotations"][DIFF_ID]
    pair = [f'"{DIFF_ID}": "{real}"', f'"{DIFF_ID}": "{fake}"']
    if wrong == "first":
        pair.reverse()
    text = json.dumps(manifest).replace(f'"{DIFF_ID}": "{real}"', ", ".join(pair))
    assert text.count(DIFF_ID) == len(manifest["layers"]) + 1
    raw = text.encode()
    index = cache.index()
    index["manifests"][0].update(digest=cache.put(raw), size=len(raw))
    (cache.root / "index.json").write_text(json.dumps(index))
    run = build.again(kiln, f"type=local,src={cache.root}")
    assert ran(run) == ([TWO] if wrong == "last" else [])


# --- registry caches ---------------------------------------------------------------------


def registry_cache(api: RegistryAPI, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    manifest, _ = api.manifest(name, "cache")
    return manifest, json.loads(api.blob(name, manifest["config"]["digest"]))


def put_registry_cache(api: RegistryAPI, name: str, manifest: dict[str, Any],
                       config: dict[str, Any]) -> None:  # fmt: skip
    data = json.dumps(config).encode()
    manifest["config"].update(digest=api.put_blob(name, data), size=len(data))
    api.put_manifest(name, "cache", json.dumps(manifest).encode())


def test_a_record_naming_a_blob_of_another_repository_is_a_miss(
    kiln, busybox_image, registry: RegistryServer, api: RegistryAPI, tmp_path: Path
):
    """TWO's record points at a valid layer (its own diff ID annotated, so no claim is
    false) that lives only in another repository of the same registry."""
    name = f"hostile/cache-{secrets.token_hex(4)}"
    build = first_build(kiln, busybox_image, tmp_path,
                        f"type=registry,ref={registry.host}/{name}:cache,mode=max")  # fmt: skip
    stranger_tar = layer([member("two", "not two\n"), member("f", "evil\n")])
    stranger = gz(stranger_tar)
    digest = api.put_blob(f"hostile/elsewhere-{secrets.token_hex(4)}", stranger)
    manifest, config = registry_cache(api, name)
    names = {d["digest"]: layer_names(api.blob(name, d["digest"])) for d in manifest["layers"]}
    notes = {"mediaType": OCI_LAYER_GZIP, "diffID": sha256(stranger_tar), "size": len(stranger)}
    config["layers"].append({"blob": digest, "annotations": notes})
    for record in config["records"]:
        if "two" in names.get(config["layers"][record["layers"][0]["layer"]]["blob"], ()):
            record["layers"][0]["layer"] = len(config["layers"]) - 1
    put_registry_cache(api, name, manifest, config)
    run = build.again(kiln, f"type=registry,ref={registry.host}/{name}:cache")
    assert TWO in ran(run)


def test_a_truncated_blob_in_a_registry_cache_is_a_miss(
    kiln, busybox_image, registry: RegistryServer, api: RegistryAPI, tmp_path: Path
):
    name = f"hostile/cache-{secrets.token_hex(4)}"
    build = first_build(kiln, busybox_image, tmp_path,
                        f"type=registry,ref={registry.host}/{name}:cache,mode=max")  # fmt: skip
    manifest, _ = registry_cache(api, name)
    (two,) = [d["digest"] for d in manifest["layers"]
              if "two" in layer_names(api.blob(name, d["digest"]))]  # fmt: skip
    data = registry.storage / "docker/registry/v2/blobs/sha256" / two[7:9] / two[7:] / "data"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    run = build.again(kiln, f"type=registry,ref={registry.host}/{name}:cache")
    assert TWO in ran(run) and "WARNING" in run.stderr


# --- gha caches ----------------------------------------------------------------------------

BRANCH = "refs/heads/main"


@dataclass
class Gha:
    server: GhaServer
    token: str
    scope: str
    flags: str

    def client(self) -> GhaClient:
        return GhaClient(token=self.token, url=self.server.url, api_version=1, timeout=30)

    @property
    def prefix(self) -> str:
        return index_prefix(self.scope, BRANCH)

    def index(self) -> bytes:
        with self.client() as client:
            entry = client.load_mutable(self.prefix)
            assert entry is not None
            return client.read_bytes(entry, max_size=64 << 20)

    def replace_index(self, data: bytes) -> None:
        """A newer index entry (``#n+1``): the one every import reads from now on."""
        with self.client() as client:
            client.save_mutable(self.prefix, data)


@pytest.fixture
def gha(kiln, busybox_image: str, gha_server: GhaServer, tmp_path: Path) -> tuple[Build, Gha]:
    """The module's ``kiln cache serve`` (each test a scope of its own) holding the
    first build's cache."""
    token = gha_server.token(BRANCH)
    scope = f"hostile-{secrets.token_hex(4)}"
    flags = f"type=gha,url={gha_server.url},token={token},scope={scope},timeout=20s"
    build = first_build(kiln, busybox_image, tmp_path, f"{flags},mode=max")
    return build, Gha(gha_server, token, scope, flags)


@pytest.mark.parametrize("content", ["garbage", "another-build"])
def test_a_replaced_gha_index_is_a_warning_or_a_miss(kiln, busybox_image, gha, tmp_path,
                                                     content: str):  # fmt: skip
    build, cache = gha
    if content == "another-build":  # a real index, of a build with other steps
        other = make_context(tmp_path / "other", "ARG BASE\nFROM ${BASE}\nRUN echo other > /f\n")
        other_scope = f"other-{secrets.token_hex(4)}"
        kiln("build", *build.base, "--cache-to",
             cache.flags.replace(cache.scope, other_scope) + ",mode=max", other,
             root=tmp_path / "other-root").check()  # fmt: skip
        with cache.client() as client:
            entry = client.load_mutable(index_prefix(other_scope, BRANCH))
            assert entry is not None
            data = client.read_bytes(entry, max_size=1 << 20)
    else:
        data = b"\x00\xffnot json at all"
    cache.replace_index(data)
    run = build.again(kiln, cache.flags)
    assert ran(run) == [ONE, TWO, COPY]
    if content != "another-build":
        assert "cannot import gha cache" in run.stderr


def test_an_enormous_gha_index_is_a_warning_and_a_miss(kiln, gha):
    build, cache = gha
    cache.replace_index(cache.index()[:-1] + b" " * (17 << 20) + b"}")
    run = build.again(kiln, cache.flags)
    assert "larger than" in run.stderr and ran(run) == [ONE, TWO, COPY]


def test_a_gha_index_naming_a_stranger_layer_is_caught_when_read(kiln, gha):
    """TWO's layer entry now names another valid blob of the service (uploaded as a
    buildkit blob), keeping TWO's diff ID: the claim is checked when the layer is read."""
    build, cache = gha
    config = json.loads(cache.index())
    stranger = gz(layer([member("two", "not two\n"), member("f", "evil\n")]))
    digest = sha256(stranger)
    with cache.client() as client:
        assert client.save(blob_key(digest), stranger)
    two = two_diff_id(build, config)
    for entry in config["layers"]:
        if entry["annotations"]["diffID"] == two:
            entry.update(blob=digest)
            entry["annotations"]["size"] = len(stranger)
    cache.replace_index(json.dumps(config).encode())
    run = build.again(kiln, cache.flags)
    assert TWO in ran(run) and "is not the layer its" in run.stderr


def two_diff_id(build: Build, config: dict[str, Any]) -> str:
    """The diff ID of TWO's layer: the only one whose blob holds ``two``."""
    root = build.tmp / "first" / "blobs" / "sha256"
    for entry in config["layers"]:
        if "two" in layer_names((root / entry["blob"][7:]).read_bytes()):
            return str(entry["annotations"]["diffID"])
    raise AssertionError("no layer of TWO in the index")


def test_a_truncated_gha_blob_is_a_miss(kiln, gha):
    build, cache = gha
    config = json.loads(cache.index())
    want = two_diff_id(build, config)
    (digest,) = [e["blob"] for e in config["layers"] if e["annotations"]["diffID"] == want]
    entries = cache.server.root / "storage" / "entries"
    (two,) = [p for p in entries.rglob("*") if p.is_file() and sha256(p.read_bytes()) == digest]
    two.write_bytes(two.read_bytes()[: two.stat().st_size // 2])
    run = build.again(kiln, cache.flags)
    assert TWO in ran(run) and "WARNING" in run.stderr
