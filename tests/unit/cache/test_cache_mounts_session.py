"""RemoteCaches and cache mounts: each mount an export selects is sealed once, under the
smallest cache-mount-max-size of the exports that select it; each export gets only the
mounts it selects; on import the first source holding a mount provides it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kiln.attrs import Attrs
from kiln.cache.records import CacheEntry, MountIdentity, MountLayer, MountRecord
from kiln.cache.remote.base import (
    COMMON_EXPORT_ATTRS,
    MOUNT_EXPORT_ATTRS,
    CacheBackend,
    CacheContext,
    CacheSession,
    ExportOptions,
    ImportedCache,
    export_options,
)
from kiln.cache.remote.flags import parse_cache_from, parse_cache_to
from kiln.cache.remote.session import RemoteCaches
from kiln.content import BlobLocator, BlobStore
from kiln.http.stats import TransferStats
from kiln.oci import OCI_LAYER_ZSTD, Descriptor, Layer, host_platform, sha256_digest
from kiln.registry.client import RegistryClient

GO = MountIdentity("/root/.cache/go-build", platform="linux/amd64")
PIP = MountIdentity("pip", uid=1000, gid=1000, platform="linux/amd64")
NPM = MountIdentity("npm", platform="linux/amd64")


def record(ident: MountIdentity, tag: str = "") -> MountRecord:
    blob = Descriptor(OCI_LAYER_ZSTD, sha256_digest(f"{ident.id}{tag}".encode()), 10)
    layer = Layer(blob, sha256_digest(f"tar {ident.id}{tag}".encode()))
    return MountRecord(ident, (MountLayer(layer, 5),), 5, "2026-03-01T00:00:00Z")


@dataclass(frozen=True)
class Spec:
    name: str
    options: ExportOptions


class Provider:
    """Where an import's blobs come from (never fetched here)."""

    def __init__(self, location: str) -> None:
        self.location = location

    def fetch(self, desc: Descriptor, store: BlobStore) -> None:
        raise AssertionError("not fetched in these tests")


class Sessions:
    """What the fake backend's sessions were given."""

    def __init__(self) -> None:
        self.exported: dict[str, list[MountRecord]] = {}
        self.imports: dict[str, list[MountRecord]] = {}
        self.providers: dict[str, Provider] = {}


def fake_backend(seen: Sessions) -> CacheBackend[Spec, Spec]:
    class Session(CacheSession[Spec, Spec]):
        def load(self, spec: Spec) -> ImportedCache | None:
            provider = seen.providers.setdefault(spec.name, Provider(spec.name))
            return ImportedCache(spec.name, {}, provider, self.ctx.locator, self.ctx.warn,
                                 seen.imports[spec.name])  # fmt: skip

        def export(self, spec: Spec, entries: list[CacheEntry],
                   mounts: list[MountRecord]) -> None:  # fmt: skip
            seen.exported[spec.name] = mounts

    class Backend(CacheBackend[Spec, Spec]):
        name = "fake"
        import_attributes = frozenset({"id"})
        export_attributes = frozenset({"id"}) | COMMON_EXPORT_ATTRS | MOUNT_EXPORT_ATTRS

        def parse_import(self, attrs: Attrs) -> Spec:
            return Spec(attrs.get("id"), ExportOptions())

        def parse_export(self, attrs: Attrs) -> Spec:
            return Spec(attrs.pop("id"), export_options(attrs, self.name))

        def open(self, ctx: CacheContext) -> CacheSession[Spec, Spec]:
            return Session(ctx)

    return Backend()


class Mounts:
    """The build's MountExports: the identities its steps use; seals are recorded."""

    def __init__(self, *identities: MountIdentity, empty: frozenset[str] = frozenset()) -> None:
        self.used = list(identities)
        self.empty = empty
        self.sealed: list[tuple[str, int]] = []

    def identities(self) -> list[MountIdentity]:
        return self.used

    def seal(self, identity: MountIdentity, max_size: int) -> MountRecord | None:
        self.sealed.append((identity.id, max_size))
        return None if identity.id in self.empty else record(identity, f"@{max_size}")


@pytest.fixture
def ctx(tmp_path: Path) -> Iterator[CacheContext]:
    store = BlobStore(tmp_path / "blobs")
    with RegistryClient() as client:
        yield CacheContext(client, store, BlobLocator(store), lambda m: None, TransferStats(),
                           host_platform())  # fmt: skip


def export(ctx: CacheContext, mounts: Mounts, *flags: str) -> dict[str, list[MountRecord]]:
    seen = Sessions()
    backends = {"fake": fake_backend(seen)}
    caches = RemoteCaches(ctx, [], [parse_cache_to(f"type=fake,{f}", backends) for f in flags])
    try:
        caches.export(lambda mode: [], mounts)
    finally:
        caches.close()
    return seen.exported


def test_a_mount_of_two_exports_is_sealed_once_under_the_smaller_cap(ctx: CacheContext) -> None:
    mounts = Mounts(GO, PIP)
    exported = export(ctx, mounts, "id=big,mode=max,cache-mount-max-size=2GB",
                      "id=small,mode=max,cache-mount-max-size=300MB",
                      "id=default,mode=max")  # fmt: skip
    assert sorted(mounts.sealed) == [("/root/.cache/go-build", 300_000_000), ("pip", 300_000_000)]
    sealed = [record(GO, "@300000000"), record(PIP, "@300000000")]
    assert exported == {"big": sealed, "small": sealed, "default": sealed}


def test_an_export_gets_only_the_mounts_it_selects(ctx: CacheContext) -> None:
    mounts = Mounts(GO, PIP, NPM)
    exported = export(ctx, mounts, "id=pip-only,mode=max,cache-mounts=pip,cache-mount-max-size=1MB",
                      "id=go-npm,cache-mounts=npm;/root/.cache/go-build,cache-mount-max-size=5MB",
                      "id=other,mode=max,cache-mounts=yarn",
                      "id=none,mode=min")  # fmt: skip
    # each cap is that of the exports selecting the mount: pip 1MB, go and npm 5MB
    assert sorted(mounts.sealed) == [
        ("/root/.cache/go-build", 5_000_000),
        ("npm", 5_000_000),
        ("pip", 1_000_000),
    ]
    assert exported["pip-only"] == [record(PIP, "@1000000")]
    assert exported["go-npm"] == [record(GO, "@5000000"), record(NPM, "@5000000")]
    assert exported["other"] == [] and exported["none"] == []


def test_a_mount_no_export_selects_is_never_sealed(ctx: CacheContext) -> None:
    mounts = Mounts(GO, PIP)
    exported = export(ctx, mounts, "id=min", "id=off,mode=max,cache-mounts=false")
    assert mounts.sealed == []
    assert exported == {"min": [], "off": []}


def test_a_mount_sealed_as_nothing_goes_to_no_export(ctx: CacheContext) -> None:
    mounts = Mounts(GO, PIP, empty=frozenset({"pip"}))
    exported = export(ctx, mounts, "id=all,mode=max")
    assert sorted(mounts.sealed) == [("/root/.cache/go-build", 1 << 30), ("pip", 1 << 30)]
    assert exported == {"all": [record(GO, f"@{1 << 30}")]}


def test_the_first_import_holding_a_mount_provides_it(ctx: CacheContext) -> None:
    seen = Sessions()
    seen.imports = {"one": [record(GO, "one")], "two": [record(GO, "two"), record(PIP, "two")],
                    "three": []}  # fmt: skip
    backends = {"fake": fake_backend(seen)}
    imports = [parse_cache_from(f"type=fake,id={n}", backends) for n in ("three", "one", "two")]
    caches = RemoteCaches(ctx, imports, [])
    try:
        assert len(caches.load()) == 3
        assert caches.mount(GO.name) == (record(GO, "one"), "one")
        assert caches.mount(PIP.name) == (record(PIP, "two"), "two")
        assert caches.mount(NPM.name) is None
        # the blobs of what was handed out are fetchable from the source that had them
        go_blob, pip_blob = record(GO, "one").layers[0], record(PIP, "two").layers[0]
        assert ctx.locator.providers(go_blob.layer.digest) == [seen.providers["one"]]
        assert ctx.locator.providers(pip_blob.layer.digest) == [seen.providers["two"]]
        assert ctx.locator.providers(record(GO, "two").layers[0].layer.digest) == []
    finally:
        caches.close()
