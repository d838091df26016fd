"""kiln.gc.policy on hand-made inventories: least recently used first, --keep-storage,
until=, the fence of running builds, dangling-only without --all, shared blobs."""

from __future__ import annotations

from pathlib import Path

from kiln.gc.entries import How, Inventory, Item, Kind, Shared
from kiln.gc.policy import PruneOptions, plan

S = 10**9  # ns per second
NOW = 1_000_000 * S


def item(name: str, age: float, size: int = 100, *, kind: Kind = Kind.RECORDS,
         shared: set[str] | None = None, dangling: bool = False) -> Item:  # fmt: skip
    return Item(kind, name, size, NOW - int(age * S), How.GUARDED, shared=shared or set(),
                dangling=dangling)  # fmt: skip


def inventory(*items: Item, shared: tuple[Shared, ...] | list[Shared] = (),
              other: int = 0) -> Inventory:  # fmt: skip
    inv = Inventory(Path("/nowhere"), list(items), {s.key: s for s in shared})
    for entry in inv.shared.values():
        entry.referrers = sum(entry.key in i.shared for i in items)
    inv.loose[Kind.OTHER] = other
    return inv


def blob(key: str, size: int, age: float = 1000, kind: Kind = Kind.RECORDS) -> Shared:
    return Shared(key, [Path(f"/nowhere/{key}")], size, NOW - int(age * S), kind=kind)


def names(p: object) -> list[str]:
    return [i.name for i in p.items]  # type: ignore[attr-defined]


def test_all_removes_least_recently_used_first() -> None:
    inv = inventory(item("b", 20), item("a", 30), item("c", 10), item("snap", 25,
                    kind=Kind.SNAPSHOTS))  # fmt: skip
    chosen = plan(inv, PruneOptions(all=True), now=NOW, fence=NOW)
    assert names(chosen) == ["a", "snap", "b", "c"]
    assert chosen.total_freed == 400
    assert chosen.after == 0


def test_keep_storage_stops_once_the_total_fits() -> None:
    inv = inventory(item("old", 300), item("mid", 200), item("new", 100), other=50)
    assert inv.kept == 350
    chosen = plan(inv, PruneOptions(all=True, keep_storage=200), now=NOW, fence=NOW)
    assert names(chosen) == ["old", "mid"]  # 350 → 250 → 150 ≤ 200
    assert chosen.after == 150
    nothing = plan(inv, PruneOptions(all=True, keep_storage=350), now=NOW, fence=NOW)
    assert names(nothing) == []


def test_keep_storage_counts_the_blob_a_record_frees() -> None:
    inv = inventory(item("old", 300, shared={"sha256:big"}), item("new", 100),
                    shared=[blob("sha256:big", 10_000)])  # fmt: skip
    chosen = plan(inv, PruneOptions(all=True, keep_storage=5000), now=NOW, fence=NOW)
    assert names(chosen) == ["old"]  # its blob alone brings the total under
    assert chosen.frees[id(chosen.items[0])][0].key == "sha256:big"
    assert chosen.after == 100


def test_until_keeps_what_was_used_since() -> None:
    inv = inventory(item("week", 7 * 86400), item("day", 86400 + 5), item("hour", 3600))
    chosen = plan(inv, PruneOptions(all=True, until=86400), now=NOW, fence=NOW)
    assert names(chosen) == ["week", "day"]


def test_what_running_builds_used_stays() -> None:
    inv = inventory(item("before", 100), item("during", 10), item("dangling", 5, dangling=True))
    fence = NOW - 50 * S  # a build started 50 s ago
    chosen = plan(inv, PruneOptions(all=True), now=NOW, fence=fence)
    assert names(chosen) == ["before"]
    assert chosen.in_use == 2


def test_without_all_only_dangling_entries_go() -> None:
    inv = inventory(item("kept", 100), item("orphan", 50, kind=Kind.SNAPSHOTS, dangling=True),
                    item("unreadable", 10, dangling=True))  # fmt: skip
    chosen = plan(inv, PruneOptions(), now=NOW, fence=NOW)
    assert names(chosen) == ["orphan", "unreadable"]


def test_a_blob_goes_with_its_last_referrer_only() -> None:
    shared = blob("sha256:one", 1000, kind=Kind.RECORDS)
    mount = item("mount", 10, kind=Kind.MOUNTS, shared={"sha256:one"})
    inv = inventory(item("record", 100, shared={"sha256:one"}), mount, shared=[shared])
    only_old = plan(inv, PruneOptions(all=True, until=50), now=NOW, fence=NOW)
    assert names(only_old) == ["record"]
    assert only_old.frees[id(only_old.items[0])] == []  # the mount's state still names it
    both = plan(inv, PruneOptions(all=True), now=NOW, fence=NOW)
    assert names(both) == ["record", "mount"]
    assert [e.key for e in both.frees[id(both.items[1])]] == ["sha256:one"]
    assert both.freed[Kind.RECORDS] == 100 + 1000 and both.freed[Kind.MOUNTS] == 100


def test_a_blob_a_running_build_fetched_stays() -> None:
    inv = inventory(item("record", 100, shared={"sha256:b"}), shared=[blob("sha256:b", 500, age=1)])
    chosen = plan(inv, PruneOptions(all=True), now=NOW, fence=NOW - 10 * S)
    assert names(chosen) == ["record"]
    assert chosen.frees[id(chosen.items[0])] == []
