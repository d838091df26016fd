"""RemoteCaches: one session per backend, opened on first use, every one closed."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from kiln.attrs import Attrs
from kiln.cache.records import CacheEntry, MountRecord
from kiln.cache.remote.base import (
    CacheBackend,
    CacheContext,
    CacheSession,
    ExportOptions,
    ImportedCache,
)
from kiln.cache.remote.flags import parse_cache_from, parse_cache_to
from kiln.cache.remote.session import RemoteCaches
from kiln.content import BlobLocator, BlobStore
from kiln.errors import CacheError, KilnError
from kiln.http.stats import TransferStats
from kiln.oci import host_platform
from kiln.registry.client import RegistryClient


@dataclass(frozen=True)
class Spec:
    name: str
    options: ExportOptions = field(default_factory=ExportOptions)


class FakeSession(CacheSession[Spec, Spec]):
    log: list[str]
    fail_close = False

    def load(self, spec: Spec) -> ImportedCache | None:
        self.log.append(f"load {spec.name}")
        return None

    def export(self, spec: Spec, entries: list[CacheEntry], mounts: list[MountRecord]) -> None:
        self.log.append(f"export {spec.name}")
        if spec.name == "broken":
            raise CacheError("the service is down")

    def close(self) -> None:
        self.log.append(f"close {type(self).__name__}")
        if self.fail_close:
            raise KilnError("cannot close")


def backend(name: str, log: list[str], *, fail_close: bool = False) -> CacheBackend[Spec, Spec]:
    session_type = type(f"{name}Session", (FakeSession,), {"log": log, "fail_close": fail_close})

    class Backend(CacheBackend[Spec, Spec]):
        import_attributes = frozenset({"id"})
        export_attributes = frozenset({"id", "ignore"})

        def parse_import(self, attrs: Attrs) -> Spec:
            return Spec(attrs.get("id"))

        def parse_export(self, attrs: Attrs) -> Spec:
            return Spec(attrs.get("id"), ExportOptions(ignore_error=attrs.boolean("ignore", False)))

        def open(self, ctx: CacheContext) -> CacheSession[Spec, Spec]:
            log.append(f"open {name}")
            return session_type(ctx)  # type: ignore[no-any-return]

    Backend.name = name
    return Backend()


@pytest.fixture
def ctx(tmp_path: Path) -> Iterator[CacheContext]:
    store = BlobStore(tmp_path / "blobs")
    with RegistryClient() as client:
        yield CacheContext(client, store, BlobLocator(store), lambda m: None, TransferStats(),
                           host_platform())  # fmt: skip


def test_one_session_per_backend_and_every_one_closed(ctx: CacheContext) -> None:
    log: list[str] = []
    backends = {"a": backend("a", log, fail_close=True), "b": backend("b", log)}
    imports = [parse_cache_from(f"type={t},id={t}{n}", backends) for t in "ab" for n in (1, 2)]
    exports = [parse_cache_to("type=b,id=b3", backends)]
    caches = RemoteCaches(ctx, imports, exports)
    assert caches.load() == []
    caches.export(lambda mode: [])
    with pytest.raises(KilnError, match="cannot close"):
        caches.close()  # a's close fails: b's session is closed all the same
    assert log == ["open a", "load a1", "load a2", "open b", "load b1", "load b2", "export b3",
                   "close aSession", "close bSession"]  # fmt: skip


def test_a_failed_export_is_a_warning_only_with_ignore_error(ctx: CacheContext) -> None:
    log: list[str] = []
    warnings: list[str] = []
    backends = {"a": backend("a", log)}
    ctx = CacheContext(ctx.client, ctx.store, ctx.locator, warnings.append, ctx.stats, ctx.platform)
    ignored = RemoteCaches(ctx, [], [parse_cache_to("type=a,id=broken,ignore=true", backends)])
    ignored.export(lambda mode: [])
    assert warnings == ["cache export type=a,id=broken,ignore=true failed (ignored): "
                        "the service is down"]  # fmt: skip
    strict = RemoteCaches(ctx, [], [parse_cache_to("type=a,id=broken", backends)])
    with pytest.raises(CacheError, match="the service is down"):
        strict.export(lambda mode: [])
