"""Contract of every metadata backend (SQLite, PostgreSQL): the same behaviour from each."""

from __future__ import annotations

import secrets
import threading

import pytest

from kiln.gha.server.metadata.base import AlreadyExists, MetadataStore, covered

V = "v" * 64


def blob() -> str:
    return secrets.token_hex(16)


def committed(
    store: MetadataStore, scope: str, key: str, size: int, now: float, version: str = V
) -> int:
    entry = store.reserve(scope, key, version, blob(), None, now)
    store.record_chunk(entry.id, 0, size, now)
    done = store.commit(entry.id, size, now)
    assert done is not None and done.ready
    return done.id


def test_reserve_is_unique_per_scope_key_version(metadata_store: MetadataStore) -> None:
    first = metadata_store.reserve("main", "k", V, blob(), 10, 1.0)
    assert first.id > 0 and first.state == "pending" and first.declared_size == 10
    with pytest.raises(AlreadyExists):
        metadata_store.reserve("main", "k", V, blob(), None, 2.0)
    # another scope, another version: independent entries
    assert metadata_store.reserve("pr", "k", V, blob(), None, 2.0).id != first.id
    assert metadata_store.reserve("main", "k", "other", blob(), None, 2.0).id != first.id
    # still taken once committed: entries are immutable
    metadata_store.record_chunk(first.id, 0, 10, 3.0)
    done = metadata_store.commit(first.id, 10, 3.0)
    assert done is not None and done.id == first.id and done.ready
    with pytest.raises(AlreadyExists):
        metadata_store.reserve("main", "k", V, blob(), None, 4.0)


def test_concurrent_reservations_have_exactly_one_winner(metadata_store: MetadataStore) -> None:
    winners: list[int] = []
    losers: list[str] = []
    barrier = threading.Barrier(8)

    def attempt() -> None:
        barrier.wait()
        try:
            winners.append(metadata_store.reserve("main", "race", V, blob(), None, 1.0).id)
        except AlreadyExists:
            losers.append("lost")

    threads = [threading.Thread(target=attempt) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1 and len(losers) == 7


def test_pending_entries_are_invisible_until_commit(metadata_store: MetadataStore) -> None:
    entry = metadata_store.reserve("main", "k", V, blob(), None, 1.0)
    assert metadata_store.match("main", V, "k", prefix=False) is None
    assert metadata_store.list_entries(None, "") == []
    assert [e.id for e in metadata_store.list_entries(None, "", include_pending=True)] == [entry.id]
    metadata_store.record_chunk(entry.id, 0, 5, 2.0)
    done = metadata_store.commit(entry.id, 5, 3.0)
    assert done is not None and done.size == 5 and done.committed_at == 3.0
    assert metadata_store.commit(entry.id, 5, 4.0) is None  # only once
    hit = metadata_store.match("main", V, "k", prefix=False)
    assert hit is not None and hit.id == entry.id
    assert metadata_store.chunks(entry.id) == []  # upload bookkeeping is gone


def test_chunks_and_blocks_bookkeeping(metadata_store: MetadataStore) -> None:
    entry = metadata_store.reserve("main", "k", V, blob(), None, 1.0)
    metadata_store.record_chunk(entry.id, 64, 36, 2.0)
    metadata_store.record_chunk(entry.id, 0, 64, 2.0)
    metadata_store.record_chunk(entry.id, 64, 36, 2.5)  # a retried chunk replaces itself
    assert metadata_store.chunks(entry.id) == [(0, 64), (64, 36)]
    assert covered(metadata_store.chunks(entry.id), 100)
    metadata_store.record_block(entry.id, "QUFB", 10, 3.0)
    metadata_store.record_block(entry.id, "QkJC", 20, 3.0)
    metadata_store.record_block(entry.id, "QUFB", 11, 3.0)
    assert metadata_store.blocks(entry.id) == {"QUFB": 11, "QkJC": 20}
    metadata_store.replace_chunks(entry.id, 31, 4.0)
    assert metadata_store.chunks(entry.id) == [(0, 31)]
    assert metadata_store.blocks(entry.id) == {}
    stale = metadata_store.stale_pending(4.5, 10)
    assert [e.id for e in stale] == [entry.id]
    assert metadata_store.stale_pending(3.9, 10) == []  # activity bumped last_access


def test_covered() -> None:
    assert covered([(0, 10), (10, 5)], 15)
    assert covered([(0, 10), (5, 10)], 15)  # overlap is fine
    assert not covered([(0, 10), (11, 4)], 15)  # a gap
    assert not covered([(0, 10)], 15)  # short
    assert not covered([(0, 20)], 15)  # past the end
    assert covered([], 0)


def test_match_exact_then_prefix_newest_wins(metadata_store: MetadataStore) -> None:
    committed(metadata_store, "main", "deps-linux-aaa", 1, now=10.0)
    newer = committed(metadata_store, "main", "deps-linux-bbb", 1, now=20.0)
    committed(metadata_store, "main", "deps-linux", 1, now=5.0)
    committed(metadata_store, "main", "deps-linux-ccc", 1, now=30.0, version="other")
    committed(metadata_store, "other-scope", "deps-linux-zzz", 1, now=40.0)
    exact = metadata_store.match("main", V, "deps-linux", prefix=False)
    assert exact is not None and exact.key == "deps-linux"
    pref = metadata_store.match("main", V, "deps-linux-", prefix=True)
    assert pref is not None and pref.id == newer
    # prefix matching compares bytes: no LIKE wildcards, no collation surprises
    assert metadata_store.match("main", V, "deps_linux", prefix=True) is None
    assert metadata_store.match("main", V, "deps%", prefix=True) is None
    assert metadata_store.match("main", V, "DEPS", prefix=True) is None
    other = metadata_store.match("main", "other", "deps", prefix=True)
    assert other is not None and other.key == "deps-linux-ccc"


def test_touch_lru_and_unused(metadata_store: MetadataStore) -> None:
    a = committed(metadata_store, "main", "a", 100, now=1.0)
    b = committed(metadata_store, "main", "b", 200, now=2.0)
    c = committed(metadata_store, "main", "c", 300, now=3.0)
    metadata_store.touch(a, 10.0, hit=True)
    metadata_store.touch(a, 5.0, hit=True)  # never moves back in time
    assert [e.id for e in metadata_store.least_recently_used(10)] == [b, c, a]
    assert [e.id for e in metadata_store.unused_since(3.5, 10)] == [b, c]
    got = metadata_store.get(a)
    assert got is not None and got.hits == 2 and got.last_access == 10.0
    totals = metadata_store.totals()
    assert (totals.entries, totals.bytes, totals.pending) == (3, 600, 0)


def test_delete_list_counters(metadata_store: MetadataStore) -> None:
    a = committed(metadata_store, "main", "key-a", 1, now=1.0)
    committed(metadata_store, "pr", "key-b", 2, now=2.0)
    listed = metadata_store.list_entries(["main", "pr"], "key-")
    assert [e.key for e in listed] == ["key-b", "key-a"]  # newest first
    assert [e.key for e in metadata_store.list_entries(["pr"], "")] == ["key-b"]
    assert metadata_store.list_entries([], "") == []
    gone = metadata_store.delete(a)
    assert gone is not None and gone.key == "key-a"
    assert metadata_store.delete(a) is None
    assert not metadata_store.has_blob(gone.blob)
    metadata_store.bump("hits")
    metadata_store.bump("hits", 2)
    metadata_store.bump("misses")
    assert metadata_store.counters() == {"hits": 3, "misses": 1}


def test_blob_lookup(metadata_store: MetadataStore) -> None:
    name = blob()
    entry = metadata_store.reserve("main", "k", V, name, None, 1.0)
    assert metadata_store.has_blob(name)
    found = metadata_store.get_by_blob(name)
    assert found is not None and found.id == entry.id
    assert metadata_store.find("main", "k", V) == found
    assert metadata_store.get_by_blob(blob()) is None


# --- taking over idle reservations -------------------------------------------------------


def test_take_over_an_idle_reservation(metadata_store: MetadataStore) -> None:
    old_blob = blob()
    old = metadata_store.reserve("main", "k", V, old_blob, 100, 1.0)
    assert metadata_store.record_chunk(old.id, 0, 10, 2.0) is True
    assert metadata_store.record_block(old.id, "QUFB", 10, 2.0) is True
    # active at 2.0: not idle before 2.0
    with pytest.raises(AlreadyExists):
        metadata_store.take_over("main", "k", V, blob(), None, 3.0, 2.0)
    assert metadata_store.find("main", "k", V) == metadata_store.get(old.id)
    new_blob = blob()
    new, replaced = metadata_store.take_over("main", "k", V, new_blob, 7, 3.0, 2.5)
    assert replaced is not None and replaced.id == old.id and replaced.blob == old_blob
    assert replaced.last_access == 2.0 and replaced.state == "pending"
    assert new.id != old.id and new.blob == new_blob and new.state == "pending"
    assert (new.declared_size, new.created_at, new.last_access) == (7, 3.0, 3.0)
    assert metadata_store.find("main", "k", V) == new
    # the old upload is gone with its bookkeeping, and nothing more is recorded for it
    assert metadata_store.get(old.id) is None and not metadata_store.has_blob(old_blob)
    assert metadata_store.chunks(old.id) == [] and metadata_store.blocks(old.id) == {}
    assert metadata_store.record_chunk(old.id, 10, 10, 4.0) is False
    assert metadata_store.record_block(old.id, "QkJC", 10, 4.0) is False
    assert metadata_store.replace_chunks(old.id, 10, 4.0) is False
    assert metadata_store.note_activity(old.id, 4.0) is False
    assert metadata_store.chunks(old.id) == [] and metadata_store.blocks(old.id) == {}
    assert metadata_store.commit(old.id, 10, 4.0) is None
    # the new upload goes on as any other
    assert metadata_store.chunks(new.id) == []
    assert metadata_store.record_chunk(new.id, 0, 7, 4.0) is True
    done = metadata_store.commit(new.id, 7, 5.0)
    assert done is not None and done.ready and done.blob == new_blob
    assert metadata_store.totals().pending == 0


def test_take_over_of_a_free_key_just_reserves(metadata_store: MetadataStore) -> None:
    entry, replaced = metadata_store.take_over("main", "k", V, blob(), None, 5.0, 4.0)
    assert replaced is None and entry.state == "pending"
    assert metadata_store.find("main", "k", V) == entry


def test_activity_keeps_a_reservation(metadata_store: MetadataStore) -> None:
    entry = metadata_store.reserve("main", "k", V, blob(), None, 1.0)
    assert metadata_store.note_activity(entry.id, 10.0) is True
    assert metadata_store.note_activity(entry.id, 5.0) is True  # never moves back in time
    got = metadata_store.get(entry.id)
    assert got is not None and got.last_access == 10.0
    with pytest.raises(AlreadyExists):
        metadata_store.take_over("main", "k", V, blob(), None, 11.0, 9.0)
    metadata_store.replace_chunks(entry.id, 3, 20.0)
    with pytest.raises(AlreadyExists):
        metadata_store.take_over("main", "k", V, blob(), None, 21.0, 19.0)
    assert metadata_store.find("main", "k", V) == metadata_store.get(entry.id)
    assert metadata_store.chunks(entry.id) == [(0, 3)]


def test_committed_entries_are_never_taken_over(metadata_store: MetadataStore) -> None:
    entry_id = committed(metadata_store, "main", "k", 5, now=1.0)
    with pytest.raises(AlreadyExists):
        metadata_store.take_over("main", "k", V, blob(), None, 1e9, 1e9)
    got = metadata_store.get(entry_id)
    assert got is not None and got.ready and got.size == 5
    assert metadata_store.note_activity(entry_id, 2.0) is False  # not an upload any more
    assert metadata_store.record_chunk(entry_id, 0, 1, 2.0) is False
    assert metadata_store.chunks(entry_id) == []
    hit = metadata_store.match("main", V, "k", prefix=False)
    assert hit is not None and hit.id == entry_id


@pytest.mark.parametrize("plain", [0, 3])
def test_concurrent_take_overs_have_exactly_one_winner(
    metadata_store: MetadataStore, plain: int
) -> None:
    """Eight clients reserve a key whose reservation is idle at once (*plain* of them
    through a plain reserve first, as the service does): exactly one gets it."""
    idle = metadata_store.reserve("main", "race", V, blob(), None, 1.0)
    metadata_store.record_chunk(idle.id, 0, 4, 1.0)
    winners: list[tuple[int, int | None]] = []
    losers: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def attempt(n: int) -> None:
        metadata_store.get(idle.id)  # this thread's connection is open before the race
        barrier.wait()
        try:
            if n < plain:
                entry = metadata_store.reserve("main", "race", V, blob(), None, 100.0)
                got: tuple[int, int | None] = (entry.id, None)
            else:
                entry, old = metadata_store.take_over("main", "race", V, blob(), None, 100.0, 40.0)
                got = (entry.id, None if old is None else old.id)
        except AlreadyExists:
            with lock:
                losers.append("lost")
            return
        with lock:
            winners.append(got)

    threads = [threading.Thread(target=attempt, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1 and len(losers) == 7, (winners, losers)
    ((winner, replaced),) = winners
    assert replaced == idle.id  # the plain reservations all lost to the idle row
    held = metadata_store.find("main", "race", V)
    assert held is not None and held.id == winner and held.state == "pending"
    assert metadata_store.get(idle.id) is None
    assert len(metadata_store.list_entries(None, "race", include_pending=True)) == 1
