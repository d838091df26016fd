"""Quota and cleanup: LRU over the size cap, max age, abandoned uploads, orphans."""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import Callable

import anyio
import pytest
from tests.fixtures.gha import AppHarness, Wire, token_for

from kiln.gha.server.eviction import Evictor

VERSION = "e" * 64
Factory = Callable[..., AppHarness]


def keys_present(app: AppHarness) -> set[str]:
    return {e.key for e in app.metadata.list_entries(None, "")}


def evictor(app: AppHarness) -> Evictor:
    ev: Evictor = app.app.state.evictor
    return ev


def test_lru_eviction_over_the_size_cap(
    gha_app_factory: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kiln.gha.server")
    app = gha_app_factory(max_size=1000)
    w = Wire(app.client, token_for("main"))
    for key in ("a", "b", "c"):
        w.v1_save(key, VERSION, b"x" * 300)
        app.clock.advance(10)
    w.v1_lookup(["a"], VERSION)  # "a" is used again: "b" is now the least recently used
    app.clock.advance(10)
    w.v1_save("d", VERSION, b"x" * 300)  # 1200 bytes > 1000
    evictor(app).run()  # (the pass the commit triggered may have run already)
    assert keys_present(app) == {"a", "c", "d"}
    assert any("evicted" in r.getMessage() and "key b" in r.getMessage() for r in caplog.records)
    stored = {s.blob for s in app.storage.stored()}
    assert {e.blob for e in app.metadata.list_entries(None, "")} == stored  # data went too
    stats = app.client.get("/_kiln/v1/stats", headers=app.auth("main")).json()
    assert stats["evictions"] == 1 and stats["entries"] == 3 and stats["bytes"] == 900


def test_eviction_report(gha_app_factory: Factory) -> None:
    app = gha_app_factory(max_size=1000, eviction_interval=3600)
    w = Wire(app.client, token_for("main"))
    w.v1_save("a", VERSION, b"x" * 600)
    app.clock.advance(1)
    # write past the cap behind the server's back, so no commit triggers a pass
    entry = app.metadata.reserve("main", "b", VERSION, secrets.token_hex(16), None, app.clock())
    app.metadata.record_chunk(entry.id, 0, 600, app.clock())

    async def body():  # type: ignore[no-untyped-def]
        yield b"y" * 600

    async def seal() -> None:
        await app.storage.write_at(entry.blob, 0, body())
        await app.storage.seal(entry.blob, 600)

    anyio.run(seal)
    app.metadata.commit(entry.id, 600, app.clock())
    report = evictor(app).run()
    assert (report.evicted, report.freed_bytes, report.expired, report.abandoned) == (1, 600, 0, 0)
    assert keys_present(app) == {"b"}


def test_eviction_runs_by_itself_after_a_commit(gha_app_factory: Factory) -> None:
    app = gha_app_factory(max_size=500)
    w = Wire(app.client, token_for("main"))
    w.v1_save("old", VERSION, b"x" * 400)
    app.clock.advance(1)
    w.v1_save("new", VERSION, b"y" * 400)
    deadline = time.monotonic() + 10
    while keys_present(app) != {"new"}:
        assert time.monotonic() < deadline, keys_present(app)
        time.sleep(0.05)


def test_entries_unused_for_max_age_are_evicted(gha_app_factory: Factory) -> None:
    app = gha_app_factory(max_age=7 * 86400)
    w = Wire(app.client, token_for("main"))
    w.v1_save("stale", VERSION, b"1")
    w.v1_save("used", VERSION, b"2")
    app.clock.advance(6 * 86400)
    loc = w.v1_lookup(["used"], VERSION).json()["archiveLocation"]
    app.client.get(loc)
    app.clock.advance(2 * 86400)  # "stale" unused for 8 days, "used" for 2
    report = evictor(app).run()
    assert report.expired == 1
    assert keys_present(app) == {"used"}
    stats = app.client.get("/_kiln/v1/stats", headers=app.auth("main")).json()
    assert stats["expired"] == 1 and stats["evictions"] == 1


def test_abandoned_uploads_are_cleaned_and_free_their_key(gha_app_factory: Factory) -> None:
    app = gha_app_factory(upload_timeout=3600)
    w = Wire(app.client, token_for("main"))
    cache_id = w.v1_reserve("k", VERSION).json()["cacheId"]
    w.v1_chunk(cache_id, 0, b"partial")
    assert len(list(app.storage.uploads())) == 1
    app.clock.advance(1800)
    w.v1_chunk(cache_id, 7, b"more")  # activity keeps it alive
    app.clock.advance(1800)
    assert evictor(app).run().abandoned == 0
    app.clock.advance(3601)
    assert evictor(app).run().abandoned == 1
    assert list(app.storage.uploads()) == []
    assert w.v1_chunk(cache_id, 11, b"late").status_code == 404
    assert w.v1_reserve("k", VERSION).status_code == 201  # the key is free again


def test_an_idle_upload_nobody_else_wants_can_still_finish(gha_app_factory: Factory) -> None:
    """Past the reservation timeout an upload is only *reclaimable*: until another save
    takes its key, or ``upload_timeout`` passes, it is kept and its client may go on."""
    app = gha_app_factory(reservation_timeout=60, upload_timeout=3600)
    w = Wire(app.client, token_for("main"))
    cache_id = w.v1_reserve("k", VERSION, 8).json()["cacheId"]
    assert w.v1_chunk(cache_id, 0, b"1234").status_code == 204
    app.clock.advance(600)
    report = evictor(app).run(full=True)
    assert report.abandoned == 0 and report.orphans == 0
    assert w.v1_chunk(cache_id, 4, b"5678").status_code == 204
    assert w.v1_commit(cache_id, 8).status_code == 204
    loc = w.v1_lookup(["k"], VERSION).json()["archiveLocation"]
    assert app.client.get(loc).content == b"12345678"


def test_a_taken_over_upload_is_not_swept_again(gha_app_factory: Factory) -> None:
    app = gha_app_factory(reservation_timeout=60, upload_timeout=120)
    w = Wire(app.client, token_for("main"))
    old_id = w.v1_reserve("k", VERSION).json()["cacheId"]
    w.v1_chunk(old_id, 0, b"old")
    app.clock.advance(61)
    new_id = w.v1_reserve("k", VERSION).json()["cacheId"]
    app.clock.advance(61)  # 122 s since the old upload's activity, 61 since the new one's
    assert evictor(app).run().abandoned == 0
    assert w.v1_chunk(new_id, 0, b"new").status_code == 204
    assert w.v1_commit(new_id, 3).status_code == 204
    stats = app.client.get("/_kiln/v1/stats", headers=app.auth("main")).json()
    assert (stats["taken_over"], stats["abandoned"], stats["entries"]) == (1, 0, 1)


def test_orphaned_data_is_swept(gha_app_factory: Factory) -> None:
    app = gha_app_factory(orphan_grace=600)
    Wire(app.client, token_for("main")).v1_save("kept", VERSION, b"kept")
    orphan, stray_upload = secrets.token_hex(16), secrets.token_hex(16)

    async def leave_orphans() -> None:
        async def body():  # type: ignore[no-untyped-def]
            yield b"crash leftovers"

        await app.storage.write_at(orphan, 0, body())
        await app.storage.seal(orphan, 15)  # sealed, but its row never got committed
        await app.storage.write_at(stray_upload, 0, body())

    anyio.run(leave_orphans)
    assert evictor(app).run(full=True).orphans == 0  # too young: maybe a commit in flight
    old = time.time() - 3600
    for path in (app.storage.root / "entries").rglob(orphan):  # type: ignore[attr-defined]
        os.utime(path, (old, old))
    os.utime(app.storage.root / "uploads" / stray_upload, (old, old))  # type: ignore[attr-defined]
    app.clock.advance(0)
    assert evictor(app).run(full=True).orphans == 2
    assert {s.blob for s in app.storage.stored()} == {
        e.blob for e in app.metadata.list_entries(None, "")
    }
    assert keys_present(app) == {"kept"}
