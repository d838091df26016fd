"""kiln.gc.inventory on synthetic KILN_ROOTs: the kinds add up to what du says, and each
entry is what kiln knows of it (references, dangling, remembered tree sizes)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.fixtures.kiln_state import StateMaker, du_bytes, set_age

from kiln.gc import inventory as inventory_module
from kiln.gc import sizes
from kiln.gc.clock import Clock
from kiln.gc.entries import KINDS, Inventory, Item, Kind
from kiln.gc.inventory import take
from kiln.gc.measure import measure
from kiln.oci import Layer
from kiln.state import build_lease


def walk(maker: StateMaker, **kw: bool) -> Inventory:
    clock = Clock.read(maker.root)
    return take(maker.root, now=clock.now, busy_since=clock.busy_since, **kw)


def by_name(inv: Inventory, kind: Kind) -> dict[str, Item]:
    return {i.name: i for i in inv.items if i.kind == kind}


@dataclass
class Made:
    layer: Layer
    chain: Layer
    mount: str
    base: Layer
    orphan: str
    config: Layer


def populate(maker: StateMaker) -> Made:
    _key, layer = maker.record(age=100)
    maker.record(age=50, layer=layer)  # a second record (a content key) naming the same blob
    chain = maker.blob(8000, age=30)
    mount = maker.mount(age=20, chain=(chain,))
    base_diff = "sha256:" + "b" * 64
    base = maker.blob(9000, age=300, diff_id=base_diff)  # a base image layer, unpacked
    maker.snapshot(base_diff, age=300)
    orphan = maker.snapshot(age=400)
    maker.snapshot("sha256:" + "c" * 64, image=True, files=4)
    config = maker.blob(300, age=10)  # an image config: nothing names it
    maker.source(age=60)
    maker.source(age=60, complete=False)
    maker.context_view(age=5)
    (maker.root.cache_keys / ("c" * 64 + ".json")).write_text("{not json")
    junk = maker.root.blobs / ".ingest-abc"
    junk.write_bytes(b"x" * 5000)
    set_age(junk, 7200)
    fresh = maker.root.blobs / ".ingest-def"  # being written right now
    fresh.write_bytes(b"x" * 5000)
    (maker.root.path / "unknown-file").write_bytes(b"?" * 100)
    return Made(layer, chain, mount, base, orphan, config)


def test_the_kinds_add_up_to_what_du_says(tmp_path: Path) -> None:
    maker = StateMaker(tmp_path / "root")
    populate(maker)
    with build_lease(maker.root.tmp):  # a live lease: counted as scratch
        maker.root.tempdir("step-")  # a session of this process, alive
        inv = walk(maker)
        assert inv.total == sum(inv.size_of(kind) for kind in KINDS)
        assert inv.total == du_bytes(maker.root.path)
    assert inv.size_of(Kind.SCRATCH) > 0
    assert inv.kept == inv.total - inv.size_of(Kind.SCRATCH)
    clock = Clock.read(maker.root)
    assert measure(maker.root, now=clock.now, busy_since=clock.busy_since) == inv.kept
    sizes_only = walk(maker, parse=False, scratch=False)
    assert sizes_only.kept == inv.kept


def test_entries_are_what_kiln_knows_of_them(tmp_path: Path) -> None:
    maker = StateMaker(tmp_path / "root")
    made = populate(maker)
    inv = walk(maker)
    layer, chain, base, config = made.layer, made.chain, made.base, made.config
    records = by_name(inv, Kind.RECORDS)
    group = records[f"layer {layer.digest}"]
    assert group.count == 2 and len(group.paths) == 2 and not group.dangling
    assert inv.shared[layer.digest].kind == Kind.RECORDS
    assert inv.footprint(group) == group.size + inv.shared[layer.digest].size
    unreadable = [i for i in records.values() if i.note == "unreadable"]
    assert len(unreadable) == 1 and unreadable[0].dangling
    assert inv.shared[chain.digest].kind == Kind.MOUNTS
    mount = next(i for i in inv.items if i.kind == Kind.MOUNTS)
    assert mount.name == f"mount-{made.mount[:6]}" and not mount.dangling
    assert mount.shared == {chain.digest}
    blobs = by_name(inv, Kind.BLOBS)
    assert not blobs[f"blob {base.digest}"].dangling
    assert blobs[f"blob {config.digest}"].dangling
    snapshots = by_name(inv, Kind.SNAPSHOTS)
    assert not snapshots["sha256:" + "b" * 64].dangling
    assert snapshots[made.orphan].dangling
    image = snapshots["sha256:" + "c" * 64]  # a layer image: one file, no link
    assert [p.name for p in image.paths] == ["c" * 64 + ".erofs"] and image.size >= 12_000
    sources = by_name(inv, Kind.SOURCES).values()
    assert sorted(s.dangling for s in sources) == [False, True]
    assert all(s.paths[0].name == "meta.json" for s in sources if not s.dangling)
    leftovers = [i for i in inv.items if i.name.startswith("leftover")]
    assert [i.name for i in leftovers] == ["leftover blobs/sha256/.ingest-abc"]  # not the fresh one
    assert len(by_name(inv, Kind.CONTEXTS)) == 1


def test_a_record_whose_blob_is_gone_is_dangling(tmp_path: Path) -> None:
    maker = StateMaker(tmp_path / "root")
    _key, layer = maker.record(age=10)
    maker.blobs.remove(layer.digest)
    [item] = [i for i in walk(maker).items if i.kind == Kind.RECORDS and i.count]
    assert item.dangling and item.note == "its blob is gone"


def test_snapshot_sizes_are_remembered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    maker = StateMaker(tmp_path / "root")
    snap = maker.snapshot(files=20)
    first = walk(maker)
    walked: list[Path] = []
    real = sizes.tree_size

    def counting(path: Path, seen: sizes.Seen) -> int:
        walked.append(path)
        return real(path, seen)

    monkeypatch.setattr(sizes, "tree_size", counting)
    monkeypatch.setattr(inventory_module, "tree_size", counting)
    second = walk(maker)
    assert second.total == first.total
    assert not any(p.name == snap.split(":")[1] for p in walked)  # not walked again


def test_a_cache_mount_is_measured_again_after_it_is_used(tmp_path: Path) -> None:
    maker = StateMaker(tmp_path / "root")
    name = maker.mount(age=100)
    before = walk(maker).size_of(Kind.MOUNTS)
    (maker.root.cache_mounts / name / "more").write_bytes(b"m" * 40_000)  # a step wrote it
    os.utime(maker.root.cache_mounts / f".{name}.lock")  # ... and marked its use first
    after = walk(maker)
    assert after.size_of(Kind.MOUNTS) >= before + 40_000
    assert after.total == du_bytes(maker.root.path)
    clock = Clock.read(maker.root)
    (maker.root.cache_mounts / name / "again").write_bytes(b"m" * 40_000)
    os.utime(maker.root.cache_mounts / f".{name}.lock")
    cheap = measure(maker.root, now=clock.now, busy_since=clock.busy_since)
    assert cheap == walk(maker).kept >= after.kept + 40_000
