"""MountStore when things are wrong: a blob of the imported chain gone or corrupt (an
older state or an empty mount, a warning, never a failed build) and a damaged state file
(the next export is whole, never a crash)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kiln.archive.compress import diff_id_of
from kiln.cache.mounts.store import MountStore
from kiln.cache.records import MountIdentity, MountLayer, MountRecord
from kiln.content import BlobLocator, BlobStore
from kiln.errors import MissingBlobError
from kiln.oci import Descriptor, Layer
from kiln.state import KilnRoot

CAP = 1 << 30


class OtherMachine:
    """A BlobProvider copying blobs from another store (a missing one is a KilnError)."""

    location = "other-machine"

    def __init__(self, store: BlobStore) -> None:
        self.store = store

    def fetch(self, desc: Descriptor, store: BlobStore) -> None:
        if not self.store.has(desc.digest):
            raise MissingBlobError(f"blob {desc.digest} is gone", digest=desc.digest)
        store.ingest(desc, [self.store.read(desc.digest)], f"blob {desc.digest}")


class Imported:
    """A MountSource of one record, its blobs fetchable from *provider*."""

    def __init__(self, locator: BlobLocator, provider: OtherMachine, record: MountRecord):
        self.locator, self.provider, self.record = locator, provider, record

    def mount(self, name: str) -> tuple[MountRecord, str] | None:
        if name != self.record.identity.name:
            return None
        for item in self.record.layers:
            self.locator.add(item.layer.digest, self.provider, diff_id=item.layer.diff_id)
        return self.record, "fake"


@dataclasses.dataclass
class Machine:
    store: MountStore
    warnings: list[str]

    @property
    def blobs(self) -> BlobStore:
        return self.store.blobs

    def seal(self, ident: MountIdentity) -> tuple[MountRecord | None, str]:
        record = self.store.seal(ident, CAP)
        return record, next(r.export for r in self.store.reports() if r.identity == ident)

    def restore_from(self, blobs: BlobStore, record: MountRecord) -> bool:
        self.store.source = Imported(self.store.locator, OtherMachine(blobs), record)
        return self.store.restore(record.identity)


@pytest.fixture
def machine(tmp_path: Path) -> Iterator[Callable[[str], Machine]]:
    made: list[Machine] = []

    def make(name: str) -> Machine:
        root = KilnRoot(tmp_path / name).ensure()
        blobs = BlobStore(root.blobs)
        warnings: list[str] = []
        store = MountStore(root, blobs, BlobLocator(blobs, diff_id_of),
                           now=lambda: "2026-03-01T00:00:00Z", warn=warnings.append)  # fmt: skip
        made.append(Machine(store, warnings))
        return made[-1]

    yield make
    for m in made:
        m.store.close()


def tree(root: Path) -> dict[str, tuple[str, str | None]]:
    return {
        str(p.relative_to(root)): (
            stat.filemode(os.lstat(p).st_mode),
            hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None,
        )
        for p in sorted(root.rglob("*"))
    }


IDENT = MountIdentity("/var/cache/apt", 100, 101, 0o750, "linux/amd64")


@pytest.fixture
def chain(machine: Callable[[str], Machine]) -> tuple[Machine, MountRecord]:
    """Machine a's mount as a chain of two: base {a, d/b}, then a delta adding d/c."""
    a = machine("a")
    host = a.store.directory(IDENT)
    host.mkdir()
    os.chown(host, IDENT.uid, IDENT.gid)
    os.chmod(host, IDENT.mode)
    (host / "a").write_bytes(os.urandom(5000))
    (host / "d").mkdir()
    (host / "d" / "b").write_bytes(b"b")
    assert a.seal(IDENT)[1] == "full"
    (host / "d" / "c").write_bytes(b"c")
    record, how = a.seal(IDENT)
    assert how == "delta" and record is not None and len(record.layers) == 2
    return a, record


def assert_empty_root(path: Path) -> None:
    st = os.lstat(path)
    assert list(path.iterdir()) == []
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (100, 101, 0o750)


# --------------------------------------------------------------------------- blobs
def test_a_missing_second_blob_restores_the_base_with_a_warning(
    machine: Callable[[str], Machine], chain: tuple[Machine, MountRecord]
) -> None:
    a, record = chain
    partial = BlobStore(a.blobs.root.parent / "partial")
    partial.put(a.blobs.read(record.layers[0].layer.digest))  # the second blob is gone
    b = machine("b")
    assert b.restore_from(partial, record) is True
    host = b.store.directory(IDENT)
    assert set(tree(host)) == {"a", "d", "d/b"}
    assert tree(host)["a"] == tree(a.store.directory(IDENT))["a"]
    (warning,) = b.warnings
    assert record.layers[1].layer.digest in warning and "1 of 2" in warning
    assert b.store.reports()[0].imported_bytes == record.layers[0].layer.blob.size
    # what it has is the base: exported as that, not as the chain it could not apply
    sealed, how = b.seal(IDENT)
    assert how == "unchanged" and sealed is not None
    assert sealed.layers == record.layers[:1]


def corrupt_bytes(a: Machine, record: MountRecord) -> tuple[BlobStore, MountRecord]:
    """The first blob replaced by garbage (a digest of its own, so it downloads)."""
    store = BlobStore(a.blobs.root.parent / "garbage")
    data = os.urandom(3000)
    first = record.layers[0].layer
    bad = Layer(Descriptor(first.blob.media_type, store.put(data), len(data)), first.diff_id)
    for item in record.layers[1:]:
        store.put(a.blobs.read(item.layer.digest))
    return store, dataclasses.replace(record, layers=(MountLayer(bad, 1), *record.layers[1:]))


def wrong_diff_id(a: Machine, record: MountRecord) -> tuple[BlobStore, MountRecord]:
    """The first blob intact but said to be another layer."""
    first = record.layers[0].layer
    bad = Layer(first.blob, record.layers[1].layer.diff_id)
    return a.blobs, dataclasses.replace(record, layers=(MountLayer(bad, 1), *record.layers[1:]))


@pytest.mark.parametrize("spoil", [corrupt_bytes, wrong_diff_id])
def test_a_corrupt_first_blob_gives_an_empty_mount_with_a_warning(
    machine: Callable[[str], Machine],
    chain: tuple[Machine, MountRecord],
    spoil: Callable[[Machine, MountRecord], tuple[BlobStore, MountRecord]],
) -> None:
    a, record = chain
    blobs, bad = spoil(a, record)
    b = machine("b")
    assert b.restore_from(blobs, bad) is True  # the step goes on, with an empty cache
    host = b.store.directory(IDENT)
    assert_empty_root(host)
    (warning,) = b.warnings
    assert bad.layers[0].layer.digest in warning and "empty" in warning
    assert b.seal(IDENT)[0] is None  # nothing to export
    (host / "new").write_bytes(b"the step's output")
    sealed, how = b.seal(IDENT)
    assert how == "full" and sealed is not None and len(sealed.layers) == 1


# --------------------------------------------------------------------------- state
def state_path(m: Machine) -> Path:
    return m.store.dir / f".{IDENT.name}.state.json"


GARBAGE_STATES = {
    "empty": b"",
    "not-json": b"\x00\xffgarbage{",
    "a-list": b"[]",
    "a-number": b"42",
    "old-version": json.dumps({"version": 0, "chain": [], "table": {}}).encode(),
    "no-table": json.dumps({"version": 1, "chain": []}).encode(),
    "chain-not-a-list": json.dumps({"version": 1, "chain": 7, "table": {}}).encode(),
    "chain-of-strings": json.dumps({"version": 1, "chain": ["x"], "table": {}}).encode(),
    "table-a-list": json.dumps({"version": 1, "chain": [], "table": []}).encode(),
    "table-of-words": json.dumps({"version": 1, "chain": [], "table": {"a": ["x"]}}).encode(),
    "content-not-a-number": b'{"version":1,"table":{},"chain":[{"blob":{"mediaType":"m",'
    b'"digest":"sha256:' + b"0" * 64 + b'","size":1},"diffID":"d","content":"many"}]}',
}


@pytest.mark.parametrize("data", list(GARBAGE_STATES.values()), ids=list(GARBAGE_STATES))
def test_a_damaged_state_file_means_export_everything_again(
    machine: Callable[[str], Machine], chain: tuple[Machine, MountRecord], data: bytes
) -> None:
    a, record = chain
    state_path(a).write_bytes(data)
    sealed, how = a.seal(IDENT)
    assert how == "full" and sealed is not None and len(sealed.layers) == 1
    assert sealed.layers[0].content == record.size == sealed.size
    assert a.warnings == []
    b = machine("b")
    assert b.restore_from(a.blobs, sealed)
    assert tree(b.store.directory(IDENT)) == tree(a.store.directory(IDENT))
    assert a.seal(IDENT)[1] == "unchanged"  # and the state file is whole again


def spoil_state(m: Machine, edit: Callable[[dict], None]) -> None:
    raw = json.loads(state_path(m).read_bytes())
    edit(raw)
    state_path(m).write_text(json.dumps(raw))  # Python's json writes inf as Infinity


def flip_digest(raw: dict) -> None:
    raw["chain"][0]["blob"]["digest"] = "sha256:" + "G" * 64  # one bit off a lowercase hex


def infinite_size(raw: dict) -> None:
    raw["table"]["d/b"][3] = float("inf")


def test_a_state_file_with_a_damaged_digest_means_a_full_export(
    chain: tuple[Machine, MountRecord],
) -> None:
    a, _ = chain
    spoil_state(a, flip_digest)
    sealed, how = a.seal(IDENT)
    assert how == "full" and sealed is not None


def test_a_state_file_with_an_infinite_number_means_a_full_export(
    chain: tuple[Machine, MountRecord],
) -> None:
    a, _ = chain
    spoil_state(a, infinite_size)
    sealed, how = a.seal(IDENT)
    assert how == "full" and sealed is not None
