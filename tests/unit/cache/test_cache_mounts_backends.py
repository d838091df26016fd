"""Cache mounts through every backend that carries them (fake registry, a local directory,
fake GitHub Actions cache): machine a seals a mount and exports it with its step records;
machine b loads the cache, gets the mount back with its blobs fetchable through its
locator, and restores the directory a had."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.fixtures.fake_gha import URL as GHA_URL
from tests.fixtures.fake_gha import FakeGha, gha_token
from tests.fixtures.fake_registry import HOST, FakeRegistry

from kiln.archive.compress import diff_id_of
from kiln.build import cache_backends
from kiln.cache.backends.gha import GhaSession
from kiln.cache.mounts.store import MountStore
from kiln.cache.records import CacheEntry, MountIdentity, MountRecord
from kiln.cache.remote.base import CacheContext, CacheExport, CacheImport, ImportedCache
from kiln.cache.remote.flags import parse_cache_from, parse_cache_to
from kiln.cache.remote.session import CacheSessions, RemoteCaches
from kiln.content import BlobLocator, BlobStore
from kiln.http.stats import TransferStats
from kiln.oci import OCI_LAYER_GZIP, OCI_LAYER_ZSTD, Descriptor, Layer, Platform, sha256_digest
from kiln.registry.client import RegistryClient
from kiln.state import KilnRoot

BACKENDS = cache_backends()
REPO = "cache/mounts"
REF = f"{HOST}/{REPO}:buildcache"
MAIN = "refs/heads/main"


class Machine:
    def __init__(self, path: Path, client: RegistryClient) -> None:
        self.root = KilnRoot(path).ensure()
        self.blobs = BlobStore(self.root.blobs)
        self.locator = BlobLocator(self.blobs, diff_id_of)
        self.warnings: list[str] = []
        platform = Platform("linux", "amd64")
        self.ctx = CacheContext(client, self.blobs, self.locator, self.warnings.append,
                                TransferStats(), platform, "kiln-app")  # fmt: skip
        self.mounts = MountStore(self.root, self.blobs, self.locator,
                                 now=lambda: "2026-03-01T00:00:00Z",
                                 warn=self.warnings.append)  # fmt: skip

    def sealed_mount(self) -> MountRecord:
        """A cache mount sealed as a chain of two blobs."""
        ident = MountIdentity("/root/.cache/go-build", 0, 0, 0o755, "linux/amd64")
        host = self.mounts.directory(ident)
        host.mkdir()
        (host / "ab").mkdir()
        (host / "ab" / "object-d").write_bytes(os.urandom(4000))
        assert self.mounts.seal(ident, 1 << 30) is not None
        (host / "trim.txt").write_text("1\n")
        record = self.mounts.seal(ident, 1 << 30)
        assert record is not None and len(record.layers) == 2
        return record

    def step(self) -> CacheEntry:
        data = b"a step layer"
        layer = Layer(Descriptor(OCI_LAYER_GZIP, self.blobs.put(data), len(data)),
                      sha256_digest(b"tar" + data))  # fmt: skip
        return CacheEntry(sha256_digest(b"key"), None, layer, "2026-01-01T00:00:00Z")

    def export(self, text: str, entries: list[CacheEntry], mounts: list[MountRecord]) -> None:
        sessions = CacheSessions(self.ctx)
        try:
            parse_cache_to(text, BACKENDS).export(sessions, entries, mounts)
        finally:
            sessions.close()

    def restore(self, caches: Any, ident: MountIdentity) -> dict[str, str | None]:
        """Restore *ident* from *caches* (a MountSource); what the directory holds."""
        self.mounts.source = caches
        assert self.mounts.restore(ident)
        return tree(self.mounts.directory(ident))


def tree(root: Path) -> dict[str, str | None]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            if p.is_file() else None for p in sorted(root.rglob("*"))}  # fmt: skip


class Loaded:
    """A MountSource over one ImportedCache (as RemoteCaches is over several)."""

    def __init__(self, cache: ImportedCache) -> None:
        self.cache = cache

    def mount(self, name: str) -> tuple[MountRecord, str] | None:
        record = self.cache.mount(name)
        return (record, self.cache.name) if record is not None else None


@pytest.fixture
def registry() -> FakeRegistry:
    return FakeRegistry()


@pytest.fixture
def machine(tmp_path: Path, registry: FakeRegistry) -> Iterator[Callable[[str], Machine]]:
    made: list[Machine] = []

    def make(name: str) -> Machine:
        made.append(Machine(tmp_path / name, registry.client()))
        return made[-1]

    yield make
    for m in made:
        m.mounts.close()
        m.ctx.client.close()


def manifest_layers(registry: FakeRegistry) -> tuple[list[str], dict[str, Any]]:
    body = json.loads(registry.manifest(REPO, "buildcache")[0])
    config = json.loads(registry.blob(REPO, body["config"]["digest"]))
    return [d["digest"] for d in body["layers"]], config


def test_registry_carries_the_mount_blobs_and_restores_the_mount(
    machine: Callable[[str], Machine], registry: FakeRegistry
) -> None:
    a = machine("a")
    mount, step = a.sealed_mount(), a.step()
    a.export(f"type=registry,ref={REF},mode=max", [step], [mount])
    layers, config = manifest_layers(registry)
    assert layers == [step.layer.digest, *(m.layer.digest for m in mount.layers)]
    for item in mount.layers:
        assert registry.blob(REPO, item.layer.digest) == a.blobs.read(item.layer.digest)
    assert [m["id"] for m in config["kiln.mounts"]] == ["/root/.cache/go-build"]

    b = machine("b")
    caches = RemoteCaches(b.ctx, [parse_cache_from(f"type=registry,ref={REF}", BACKENDS)], [])
    try:
        (loaded,) = caches.load()
        assert set(loaded.records) == {step.key}
        assert loaded.mount("not-a-mount") is None
        for item in mount.layers:  # nothing is fetchable before the mount is asked for
            assert b.locator.providers(item.layer.digest) == []
        assert caches.mount(mount.identity.name) == (mount, f"registry {REF}")
        for item in mount.layers:
            assert b.locator.providers(item.layer.digest) == [loaded.provider]
        assert b.restore(caches, mount.identity) == tree(a.mounts.directory(mount.identity))
    finally:
        caches.close()
    assert b.warnings == []


def test_registry_with_docker_media_types_carries_the_mount_as_gzip(
    machine: Callable[[str], Machine], registry: FakeRegistry
) -> None:
    a = machine("a")
    mount = a.sealed_mount()
    assert {m.layer.blob.media_type for m in mount.layers} == {OCI_LAYER_ZSTD}
    a.export(f"type=registry,ref={REF},mode=max,image-manifest=false,oci-mediatypes=false",
             [a.step()], [mount])  # fmt: skip
    b = machine("b")
    flag = parse_cache_from(f"type=registry,ref={REF}", BACKENDS)
    assert isinstance(flag, CacheImport)
    sessions = CacheSessions(b.ctx)
    try:
        loaded = flag.load(sessions)
        assert loaded is not None
        got = loaded.mount(mount.identity.name)
        assert got is not None and got.identity == mount.identity
        assert [m.layer.diff_id for m in got.layers] == [m.layer.diff_id for m in mount.layers]
        assert all(m.layer.blob.media_type.endswith("gzip") for m in got.layers)
        assert b.restore(Loaded(loaded), mount.identity) == tree(a.mounts.directory(mount.identity))
    finally:
        sessions.close()


def test_local_directory_carries_the_mount(machine: Callable[[str], Machine],
                                           tmp_path: Path) -> None:  # fmt: skip
    a = machine("a")
    mount = a.sealed_mount()
    dest = tmp_path / "layout"
    a.export(f"type=local,dest={dest},mode=max", [a.step()], [mount])
    for item in mount.layers:
        assert (dest / "blobs" / "sha256" / item.layer.digest[7:]).read_bytes() == a.blobs.read(
            item.layer.digest
        )
    b = machine("b")
    sessions = CacheSessions(b.ctx)
    try:
        loaded = parse_cache_from(f"type=local,src={dest}", BACKENDS).load(sessions)
        assert loaded is not None and loaded.mounts == {mount.identity.name: mount}
        assert b.restore(Loaded(loaded), mount.identity) == tree(a.mounts.directory(mount.identity))
    finally:
        sessions.close()


def test_gha_carries_the_mount(machine: Callable[[str], Machine]) -> None:
    gha = FakeGha()
    text = f"type=gha,url={GHA_URL},url_v2={GHA_URL},token={gha_token(MAIN)},version=1"
    a = machine("a")
    mount = a.sealed_mount()
    export = parse_cache_to(text + ",cache-mounts=true", BACKENDS)
    assert isinstance(export, CacheExport)
    session = GhaSession(a.ctx, client_factory=gha.factory())
    try:
        session.export(export.spec, [], [mount])  # no step records: the mount alone
    finally:
        session.close()
    b = machine("b")
    imported = parse_cache_from(text, BACKENDS)
    assert isinstance(imported, CacheImport)
    session = GhaSession(b.ctx, client_factory=gha.factory())
    try:
        loaded = session.load(imported.spec)
        assert loaded is not None and loaded.records == {}
        assert b.restore(Loaded(loaded), mount.identity) == tree(a.mounts.directory(mount.identity))
    finally:
        session.close()
    assert b.warnings == []
