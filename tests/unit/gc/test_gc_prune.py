"""kiln.gc.collect on synthetic KILN_ROOTs: what a prune removes, in what order, and what
it leaves to running builds (leases, held snapshot and mount locks, the use lock)."""

from __future__ import annotations

import fcntl
import threading
import time
from pathlib import Path

from tests.fixtures.kiln_state import StateMaker, du_bytes, set_age

from kiln.gc.collect import collect, usage
from kiln.gc.entries import Kind
from kiln.gc.policy import PruneOptions
from kiln.oci import digest_hex
from kiln.state import build_lease, use_lock

ALL = PruneOptions(all=True)


def prune(maker: StateMaker, options: PruneOptions = ALL) -> list[str]:
    outcome = collect(maker.root, options)
    assert outcome is not None
    assert not outcome.removed.errors
    return [i.name for i in outcome.removed.items]


def test_prune_all_leaves_a_fresh_machine(tmp_path: Path) -> None:
    maker = StateMaker(tmp_path / "root")
    key, layer = maker.record(age=100)
    mount = maker.mount(age=50, chain=(maker.blob(age=50),))
    snap = maker.snapshot(layer.diff_id, age=80)
    image = maker.snapshot(age=80, image=True)
    maker.source(age=10)
    maker.context_view(age=10)
    before = du_bytes(maker.root.path)
    outcome = collect(maker.root, ALL)
    assert outcome is not None and not outcome.removed.errors
    assert outcome.removed.total == outcome.plan.total_freed > 0
    assert maker.cache.get(key) is None
    assert list(maker.blobs.digests()) == []
    assert not (maker.root.snapshots / digest_hex(snap)).exists()
    assert not (maker.root.snapshots / "l" / digest_hex(snap)[:16]).is_symlink()
    assert not (maker.root.snapshots / f"{digest_hex(image)}.erofs").exists()
    assert not (maker.root.cache_mounts / mount).exists()
    assert not (maker.root.cache_mounts / f".{mount}.state.json").exists()
    assert (maker.root.cache_mounts / f".{mount}.lock").exists()  # lock files stay
    assert not any((maker.root.path / "contexts").iterdir())
    assert [p.name for p in next(maker.root.sources.iterdir()).iterdir()] == [".lock"]
    # what it says it freed is what left the disk (the trash is deleted too)
    assert before - du_bytes(maker.root.path) >= outcome.removed.total - 16 * 4096


def test_keep_storage_removes_least_recently_used_first(tmp_path: Path) -> None:
    maker = StateMaker(tmp_path / "root")
    keys = [maker.record(age=age, size=200_000)[0] for age in (400, 300, 200, 100)]
    found = usage(maker.root)
    assert found is not None
    keep = found[0].kept - 2 * 200_000  # room for all but about two records and their blobs
    outcome = collect(maker.root, PruneOptions(all=True, keep_storage=keep))
    assert outcome is not None and outcome.plan.after <= keep
    assert [k for k in keys if maker.cache.get(k) is not None] == keys[2:]  # the oldest went
    assert du_bytes(maker.root.path) <= keep


def test_until_and_without_all(tmp_path: Path) -> None:
    maker = StateMaker(tmp_path / "root")
    old, _ = maker.record(age=2 * 86400)
    new, _ = maker.record(age=60)
    orphan = maker.snapshot(age=3 * 86400)  # no record or blob has its layer
    assert prune(maker, PruneOptions()) == [orphan]  # dangling only: the records stay
    assert maker.cache.get(old) is not None
    set_age(maker.record_path(old), 2 * 86400)  # that get marked it used: age it again
    prune(maker, PruneOptions(all=True, until=86400))
    assert maker.cache.get(old) is None
    assert maker.cache.get(new) is not None


def test_a_blob_stays_while_a_mount_state_names_it(tmp_path: Path) -> None:
    maker = StateMaker(tmp_path / "root")
    shared = maker.blob(age=500)
    key, _ = maker.record(age=500, layer=shared)
    mount = maker.mount(age=10, chain=(shared,))
    prune(maker, PruneOptions(all=True, until=100))  # the record is old, the mount is not
    assert not maker.record_path(key).exists()
    assert maker.blobs.has(shared.digest)  # the state still names it
    set_age(maker.root.cache_mounts / f".{mount}.lock", 500)
    set_age(maker.root.cache_mounts / mount, 500)
    set_age(maker.root.cache_mounts / f".{mount}.state.json", 500)
    prune(maker, PruneOptions(all=True, until=100))
    assert not maker.blobs.has(shared.digest)


def test_what_a_running_build_used_stays(tmp_path: Path) -> None:
    maker = StateMaker(tmp_path / "root")
    used, layer = maker.record(age=500)
    unused, _ = maker.record(age=500)
    snap = maker.snapshot(layer.diff_id, age=500)
    with build_lease(maker.root.tmp):  # a build starts ...
        time.sleep(0.02)
        assert maker.cache.get(used) is not None  # ... and looks its step up
        assert maker.blobs.touch(layer.digest)
        names = prune(maker)
        assert maker.cache.get(used) is not None and maker.blobs.has(layer.digest)
        assert maker.cache.get(unused) is None
        assert snap in names  # not mounted, not marked: it can be unpacked again
    time.sleep(0.05)  # a later tick of the file-system clock than those lookups
    prune(maker)  # the build is over: now it goes
    assert maker.cache.get(used) is None


def test_a_held_snapshot_and_a_busy_mount_stay(tmp_path: Path) -> None:
    maker = StateMaker(tmp_path / "root")
    snap = maker.snapshot(age=500)
    mount = maker.mount(age=500)
    with open(maker.root.snapshots / f".{digest_hex(snap)}.lock", "a") as held, \
            open(maker.root.cache_mounts / f".{mount}.lock", "a") as busy:  # fmt: skip
        fcntl.flock(held, fcntl.LOCK_SH)  # mounted by a step
        fcntl.flock(busy, fcntl.LOCK_SH)  # a sharing=shared step uses it
        outcome = collect(maker.root, ALL)
        assert outcome is not None and outcome.removed.busy == 2
        assert (maker.root.snapshots / digest_hex(snap)).is_dir()
        assert (maker.root.cache_mounts / mount).is_dir()
    assert sorted(prune(maker)) == sorted([snap, mount])


def test_the_use_lock_orders_a_lookup_and_a_prune(tmp_path: Path) -> None:
    """A lookup waits while the prune deletes under the use lock: it then sees the
    record gone (a miss), never a record whose blob is gone."""
    maker = StateMaker(tmp_path / "root")
    key, layer = maker.record(age=500)
    guard = use_lock(maker.root.gc_lock)
    result: list[object] = []
    with guard.exclusive():
        lookup = threading.Thread(target=lambda: result.append(maker.cache.get(key)))
        lookup.start()
        time.sleep(0.1)
        assert lookup.is_alive()  # waiting for the lock
        maker.record_path(key).unlink()
        maker.blobs.remove(layer.digest)
    lookup.join(5)
    assert result == [None]


def test_dead_sessions_and_leases_are_swept(tmp_path: Path) -> None:
    maker = StateMaker(tmp_path / "root")
    dead = maker.root.tmp / "session-1-dead"
    (dead / "step-x").mkdir(parents=True)
    (dead / "step-x" / "f").write_bytes(b"x" * 10_000)
    (maker.root.tmp / "session-1-dead.lock").touch()
    (maker.root.tmp / "build-1-dead.lock").touch()
    names = prune(maker, PruneOptions())
    assert names == ["dead session-1-dead"]
    assert not dead.exists() and not (maker.root.tmp / "build-1-dead.lock").exists()


def test_context_views_wait_for_a_quiet_machine(tmp_path: Path) -> None:
    maker = StateMaker(tmp_path / "root")
    view = maker.context_view(age=500)
    with build_lease(maker.root.tmp):  # another build may be binding it
        outcome = collect(maker.root, ALL)
        assert outcome is not None and outcome.removed.busy == 1 and view.exists()
    assert prune(maker) == [f"context view {view.name[:12]}"]


def test_du_after_a_prune_still_adds_up(tmp_path: Path) -> None:
    maker = StateMaker(tmp_path / "root")
    for age in (300, 200, 100):
        maker.record(age=age, size=50_000)
        maker.snapshot(age=age)
    outcome = collect(maker.root, PruneOptions(all=True, keep_storage=200_000))
    assert outcome is not None
    left = collect(maker.root, PruneOptions(keep_storage=10**12))
    assert left is not None
    assert left.inventory.total == du_bytes(maker.root.path)
    assert left.inventory.size_of(Kind.RECORDS) > 0
