"""MountStore between two machines: one seals its cache mount into a chain of blobs, the
other restores it from a fake MountSource whose blobs are fetched (through the second
machine's BlobLocator) from the first machine's store; then it seals its own changes."""

from __future__ import annotations

import hashlib
import os
import stat
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zstandard

from kiln.archive.compress import diff_id_of
from kiln.cache.mounts.store import MountStore
from kiln.cache.records import MountIdentity, MountRecord
from kiln.content import BlobLocator, BlobStore
from kiln.errors import MissingBlobError
from kiln.oci import Descriptor, Layer
from kiln.state import KilnRoot

CAP = 1 << 30


class OtherMachine:
    """A BlobProvider: copies blobs from another machine's store."""

    location = "other-machine"

    def __init__(self, store: BlobStore) -> None:
        self.store = store
        self.fetched: list[str] = []

    def fetch(self, desc: Descriptor, store: BlobStore) -> None:
        if not self.store.has(desc.digest):
            raise MissingBlobError(f"blob {desc.digest} is gone", digest=desc.digest)
        self.fetched.append(desc.digest)
        store.ingest(desc, [self.store.read(desc.digest)], f"blob {desc.digest}")


class Imported:
    """A MountSource: the records of an imported cache, their blobs made fetchable."""

    def __init__(self, locator: BlobLocator, provider: OtherMachine, *records: MountRecord):
        self.locator = locator
        self.provider = provider
        self.records = {r.identity.name: r for r in records}

    def mount(self, name: str) -> tuple[MountRecord, str] | None:
        record = self.records.get(name)
        if record is None:
            return None
        for item in record.layers:
            self.locator.add(item.layer.digest, self.provider, diff_id=item.layer.diff_id)
        return record, "fake"


class Machine:
    def __init__(self, path: Path, platform: str) -> None:
        self.root = KilnRoot(path).ensure()
        self.blobs = BlobStore(self.root.blobs)
        self.locator = BlobLocator(self.blobs, diff_id_of)
        self.warnings: list[str] = []
        self.messages: list[str] = []
        self.ticks = 0
        self.platform = platform
        self.store = MountStore(self.root, self.blobs, self.locator, now=self.now,
                                message=self.messages.append,
                                warn=self.warnings.append)  # fmt: skip

    def now(self) -> str:
        self.ticks += 1
        return f"2026-03-01T00:00:{self.ticks:02d}Z"

    def identity(self, mount_id: str = "/root/.cache", uid: int = 0, gid: int = 0,
                 mode: int = 0o755) -> MountIdentity:  # fmt: skip
        return MountIdentity(mount_id, uid, gid, mode, self.platform)

    def directory(self, ident: MountIdentity, spec: dict[str, bytes] | None = None) -> Path:
        """The mount's directory on this machine, made as a step would, with *spec*."""
        path = self.store.directory(ident)
        if not path.exists():
            path.mkdir()
            os.chown(path, ident.uid, ident.gid)
            os.chmod(path, ident.mode)
        for rel, data in (spec or {}).items():
            (path / rel).parent.mkdir(parents=True, exist_ok=True)
            (path / rel).write_bytes(data)
        return path

    def seal(self, ident: MountIdentity, cap: int = CAP) -> tuple[MountRecord | None, str]:
        record = self.store.seal(ident, cap)
        return record, next(r.export for r in self.store.reports() if r.identity == ident)

    def import_from(self, other: Machine, *records: MountRecord) -> OtherMachine:
        provider = OtherMachine(other.blobs)
        self.store.source = Imported(self.locator, provider, *records)
        return provider

    def blob_count(self) -> int:
        return len(list(self.blobs.digests()))


@pytest.fixture
def machine(tmp_path: Path) -> Iterator[Callable[..., Machine]]:
    made: list[Machine] = []

    def make(name: str, platform: str = "linux/amd64") -> Machine:
        made.append(Machine(tmp_path / name, platform))
        return made[-1]

    yield make
    for m in made:
        m.store.close()


def tree(root: Path) -> dict[str, tuple[Any, ...]]:
    out = {}
    for path in sorted(root.rglob("*")):
        st = os.lstat(path)
        data = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
        out[str(path.relative_to(root))] = (stat.filemode(st.st_mode), st.st_uid, st.st_gid, data)
    return out


def members(store: BlobStore, layer: Layer) -> list[str]:
    with store.path(layer.digest).open("rb") as fh:
        reader = zstandard.ZstdDecompressor().stream_reader(fh)
        with tarfile.open(fileobj=reader, mode="r|") as tar:
            return [m.name for m in tar]


BASE = {"pkg/big.bin": os.urandom(300_000), "pkg/index.json": b'{"v": 1}', "notes": b"n"}


@pytest.fixture
def exported(machine: Callable[..., Machine]) -> tuple[Machine, MountIdentity, MountRecord]:
    """Machine a's mount sealed twice: a full base, then a delta adding one file."""
    a = machine("a")
    ident = a.identity()
    a.directory(ident, BASE)
    first, how = a.seal(ident)
    assert how == "full" and first is not None and len(first.layers) == 1
    a.directory(ident, {"pkg/added": b"added later"})
    record, how = a.seal(ident)
    assert how == "delta" and record is not None
    assert record.layers[0] == first.layers[0] and len(record.layers) == 2
    assert record.size == sum(len(v) for v in BASE.values()) + len(b"added later")
    return a, ident, record


def test_restore_applies_the_whole_chain(
    machine: Callable[..., Machine], exported: tuple[Machine, MountIdentity, MountRecord]
) -> None:
    a, ident, record = exported
    b = machine("b")
    provider = b.import_from(a, record)
    assert not b.store.directory(ident).exists()
    b.store.prefetch(ident)
    assert b.store.restore(ident) is True
    assert tree(b.store.directory(ident)) == tree(a.store.directory(ident))
    assert sorted(provider.fetched) == sorted(m.layer.digest for m in record.layers)
    assert b.warnings == []
    (report,) = b.store.reports()
    assert report.restored_from == "fake"
    assert report.imported_bytes == record.blob_bytes
    assert any("restored" in m and "2 blobs" in m for m in b.messages)


def test_seal_right_after_a_restore_is_unchanged_and_writes_no_blob(
    machine: Callable[..., Machine], exported: tuple[Machine, MountIdentity, MountRecord]
) -> None:
    a, ident, record = exported
    b = machine("b")
    b.import_from(a, record)
    assert b.store.restore(ident)
    before = b.blob_count()
    sealed, how = b.seal(ident)
    assert how == "unchanged"
    assert sealed == record  # the same chain, size and time
    assert b.blob_count() == before
    assert b.store.reports()[0].exported_bytes == 0


def test_a_modified_file_is_one_delta_holding_only_that_change(
    machine: Callable[..., Machine], exported: tuple[Machine, MountIdentity, MountRecord]
) -> None:
    a, ident, record = exported
    b = machine("b")
    b.import_from(a, record)
    assert b.store.restore(ident)
    before = b.blob_count()
    b.directory(ident, {"pkg/index.json": b'{"v": 2}'})
    sealed, how = b.seal(ident)
    assert how == "delta" and sealed is not None
    assert sealed.layers[:2] == record.layers and len(sealed.layers) == 3
    delta = sealed.layers[2]
    assert b.blob_count() == before + 1 and b.blobs.has(delta.layer.digest)
    assert members(b.blobs, delta.layer) == ["pkg/index.json"]
    assert delta.content == len(b'{"v": 2}')
    assert delta.layer.blob.size * 50 < record.layers[0].layer.blob.size

    c = machine("c")  # a third machine gets b's state from the three blobs
    c.import_from(b, sealed)
    assert c.store.restore(ident)
    assert tree(c.store.directory(ident)) == tree(b.store.directory(ident))
    assert (c.store.directory(ident) / "pkg/index.json").read_bytes() == b'{"v": 2}'


def test_a_restored_mount_root_has_the_identity_owner_and_mode(
    machine: Callable[..., Machine],
) -> None:
    a = machine("a")
    ident = a.identity("/home/app/.cache", uid=1000, gid=1001, mode=0o2770)
    a.directory(ident, {"x": b"x"})
    os.chown(a.store.directory(ident) / "x", 1000, 1001)
    record, _ = a.seal(ident)
    assert record is not None
    b = machine("b")
    b.import_from(a, record)
    assert b.store.restore(ident)
    st = os.lstat(b.store.directory(ident))
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1000, 1001, 0o2770)
    assert stat.S_ISDIR(st.st_mode)
    assert tree(b.store.directory(ident)) == tree(a.store.directory(ident))


def test_an_identity_of_another_platform_is_another_directory(
    machine: Callable[..., Machine],
) -> None:
    a = machine("a")
    amd = a.identity("/go/cache")
    arm = MountStore(a.root, a.blobs, a.locator, now=a.now)
    arm_ident = MountIdentity("/go/cache", 0, 0, 0o755, "linux/arm64")
    assert arm_ident != amd and arm_ident.name != amd.name
    assert arm.directory(arm_ident) != a.store.directory(amd)
    a.directory(amd, {"obj": b"amd64 object"})
    record, _ = a.seal(amd)
    assert record is not None

    b = machine("b", platform="linux/arm64")  # holds only the amd64 mount: not for it
    b.import_from(a, record)
    ident = b.identity("/go/cache")
    assert ident.platform == "linux/arm64"
    assert b.store.restore(ident) is False
    assert not b.store.directory(ident).exists()
    assert b.seal(ident)[0] is None


def test_a_mount_this_build_did_not_use_is_carried_as_imported(
    machine: Callable[..., Machine], exported: tuple[Machine, MountIdentity, MountRecord]
) -> None:
    a, ident, record = exported
    b = machine("b")
    provider = b.import_from(a, record)
    sealed, how = b.seal(ident)
    assert (sealed, how) == (record, "carried")
    assert b.blob_count() == 0 and provider.fetched == []  # nothing fetched nor written


def test_an_empty_mount_never_exported_is_nothing(machine: Callable[..., Machine]) -> None:
    a = machine("a")
    ident = a.identity()
    assert a.seal(ident)[0] is None  # no directory, nothing imported
    a.directory(ident)
    assert a.seal(ident)[0] is None  # an empty directory
    assert a.blob_count() == 0
    a.directory(ident, {"now": b"something"})
    record, how = a.seal(ident)
    assert how == "full" and record is not None and record.size == len(b"something")
