"""MountStore.seal over several builds: when a chain is compacted into one blob, the size
cap (LRU trim), and secrets (targets inside the mount, files holding a secret's bytes)."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from kiln.archive.compress import diff_id_of
from kiln.cache.mounts.store import COMPACT_FLOOR, MAX_CHAIN, MountStore
from kiln.cache.records import MountIdentity, MountRecord
from kiln.content import BlobLocator, BlobStore
from kiln.oci import Descriptor
from kiln.state import KilnRoot

CAP = 1 << 30
IDENT = MountIdentity("/root/.cache/pip", 0, 0, 0o755, "linux/amd64")


class Build:
    """One build's MountStore on a machine (a KilnRoot kept between builds)."""

    def __init__(self, path: Path, secrets: Sequence[Path] = ()) -> None:
        self.root = KilnRoot(path).ensure()
        self.blobs = BlobStore(self.root.blobs)
        self.locator = BlobLocator(self.blobs, diff_id_of)
        self.warnings: list[str] = []
        self.store = MountStore(self.root, self.blobs, self.locator,
                                now=lambda: "2026-03-01T00:00:00Z", warn=self.warnings.append,
                                secrets=secrets)  # fmt: skip
        self.host = self.store.directory(IDENT)

    def write(self, spec: dict[str, bytes]) -> None:
        for rel, data in spec.items():
            (self.host / rel).parent.mkdir(parents=True, exist_ok=True)
            (self.host / rel).write_bytes(data)

    def seal(self, cap: int = CAP) -> tuple[MountRecord, str]:
        record = self.store.seal(IDENT, cap)
        assert record is not None
        return record, self.store.reports()[0].export


@pytest.fixture
def build(tmp_path: Path) -> Iterator[Callable[..., Build]]:
    """``build(machine, secrets=...)``: the next build on *machine*."""
    made: list[Build] = []

    def make(name: str = "a", secrets: Sequence[Path] = ()) -> Build:
        made.append(Build(tmp_path / name, secrets))
        return made[-1]

    yield make
    for b in made:
        b.store.close()


class Copy:
    location = "machine a"

    def __init__(self, store: BlobStore) -> None:
        self.source = store

    def fetch(self, desc: Descriptor, store: BlobStore) -> None:
        store.ingest(desc, [self.source.read(desc.digest)], desc.digest)


def restored(on: Build, origin: Build, record: MountRecord) -> dict[str, bytes | None]:
    """What *on* gets restoring *record* (blobs from *origin*'s store): path → content."""

    class Source:
        def mount(self, name: str) -> tuple[MountRecord, str] | None:
            for item in record.layers:
                on.locator.add(item.layer.digest, Copy(origin.blobs))
            return (record, "a") if name == IDENT.name else None

    on.store.source = Source()
    assert on.store.restore(IDENT)
    host = on.store.directory(IDENT)
    return {
        str(p.relative_to(host)): p.read_bytes() if stat.S_ISREG(os.lstat(p).st_mode) else None
        for p in sorted(host.rglob("*"))
    }


def local(b: Build) -> dict[str, bytes | None]:
    return {str(p.relative_to(b.host)): p.read_bytes() if p.is_file() else None
            for p in sorted(b.host.rglob("*"))}  # fmt: skip


# --------------------------------------------------------------------------- compaction
def test_a_chain_longer_than_max_chain_is_compacted_into_one_blob(
    build: Callable[..., Build],
) -> None:
    lengths, exports = [], []
    for n in range(MAX_CHAIN + 2):
        b = build()  # a build per change, on one machine
        b.host.mkdir(exist_ok=True)
        b.write({"wheels/base.whl": b"w" * 5000, f"http/{n}": f"response {n}".encode()})
        record, how = b.seal()
        lengths.append(len(record.layers))
        exports.append(how)
    assert lengths == [*range(1, MAX_CHAIN + 1), 1, 2]
    assert exports == ["full", *["delta"] * (MAX_CHAIN - 1), "compacted", "delta"]
    now, how = build().seal()  # unchanged since: the compacted blob and one delta
    assert how == "unchanged" and now == record
    assert now.layers[0].content == now.size - len(f"response {MAX_CHAIN + 1}")
    assert restored(build("b"), b, record) == local(b)


def test_a_chain_that_carries_mostly_deleted_content_is_compacted(
    build: Callable[..., Build],
) -> None:
    a = build()
    a.host.mkdir()
    a.write({"big.whl": os.urandom(COMPACT_FLOOR + (COMPACT_FLOOR >> 1)), "small": b"s"})
    base, how = a.seal()
    assert how == "full"
    (a.host / "big.whl").unlink()
    a.write({"new": b"n" * 100})
    record, how = build().seal()
    assert how == "compacted"
    assert len(record.layers) == 1 and record.layers[0] != base.layers[0]
    assert record.layers[0].layer.blob.size * 100 < base.layers[0].layer.blob.size
    assert record.size == record.layers[0].content == 101
    assert restored(build("b"), a, record) == {"small": b"s", "new": b"n" * 100}


def test_deltas_outweighing_the_base_are_compacted_only_above_the_floor(
    build: Callable[..., Build],
) -> None:
    a = build()
    a.host.mkdir()
    a.write({"tiny": b"t"})
    a.seal()
    a.write({"medium": os.urandom(20_000)})  # far bigger than the base, below the floor
    record, how = build().seal()
    assert how == "delta" and len(record.layers) == 2
    a.write({"large": os.urandom(COMPACT_FLOOR + 1000)})
    record, how = build().seal()
    assert how == "compacted" and len(record.layers) == 1
    assert set(restored(build("b"), a, record)) == {"tiny", "medium", "large"}


# --------------------------------------------------------------------------- size cap
def test_a_mount_over_its_cap_loses_its_least_recently_used_files(
    build: Callable[..., Build],
) -> None:
    a = build()
    a.host.mkdir()
    a.write({"old/1": b"1" * 400, "old/2": b"2" * 400, "fresh": b"f" * 400})
    first, _ = a.seal()
    for rel, when in (("old/1", 1000), ("old/2", 2000), ("fresh", 3000)):
        os.utime(a.host / rel, (when, when))
    b = build()
    record, how = b.seal(cap=500)
    assert how == "delta" and record.size == 400
    assert not (a.host / "old" / "1").exists() and not (a.host / "old" / "2").exists()
    (warning,) = b.warnings
    assert "cache-mount-max-size" in warning and "2 least recently used" in warning
    # the delta deletes them on top of the chain that still holds them
    assert record.layers[0] == first.layers[0]
    assert restored(build("b"), a, record) == {"old": None, "fresh": b"f" * 400}


# --------------------------------------------------------------------------- secrets
def test_secret_targets_and_files_holding_a_secret_are_not_exported(
    build: Callable[..., Build], tmp_path: Path
) -> None:
    secret = tmp_path / "npmrc"
    secret.write_bytes(b"//registry.npmjs.org/:_authToken=abc123")
    a = build(secrets=[secret])
    a.host.mkdir()
    a.write({"run/token": b"mounted secret", ".npmrc": secret.read_bytes(), "pkg": b"p"})
    a.store.used(IDENT, ["run/token"])
    record, how = a.seal()
    assert how == "full" and record.size == 1
    (warning,) = a.warnings  # the secret target is left out silently, the copy with a reason
    assert ".npmrc" in warning and "secret" in warning
    assert restored(build("b"), a, record) == {"run": None, "pkg": b"p"}

    later = build(secrets=[secret])  # the next build: the target is still left out
    again, how = later.seal()
    assert how == "unchanged" and again.layers == record.layers


def test_a_file_left_out_for_holding_a_secret_stays_out_in_a_build_without_it(
    build: Callable[..., Build], tmp_path: Path
) -> None:
    secret = tmp_path / "npmrc"
    secret.write_bytes(b"//registry.npmjs.org/:_authToken=abc123")
    a = build(secrets=[secret])
    a.host.mkdir()
    a.write({".npmrc": secret.read_bytes(), "pkg": b"p"})
    assert a.seal()[0].size == 1
    record, _ = build().seal()  # no --secret this time (the step was cached)
    assert ".npmrc" not in restored(build("b"), a, record)
