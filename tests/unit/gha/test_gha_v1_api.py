"""The v1 REST API (``_apis/artifactcache``) over every metadata backend, on a real uvicorn."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from tests.fixtures.gha import AppHarness, Wire, paced, token_for

from kiln.gha.scopes import READ

VERSION = "a" * 64


def wire(app: AppHarness, *scopes: str | tuple[str, int], base: str = "/") -> Wire:
    return Wire(app.client, token_for(*scopes), base)


def test_save_then_restore_exact(gha_app: AppHarness) -> None:
    w = wire(gha_app, "refs/heads/main")
    data = secrets.token_bytes(3 * (1 << 20) + 5)
    assert w.v1_lookup(["deps-1"], VERSION).status_code == 204
    w.v1_save("deps-1", VERSION, data)
    resp = w.v1_lookup(["deps-1"], VERSION)
    assert resp.status_code == 200
    body = resp.json()
    assert body["cacheKey"] == "deps-1"
    assert body["scope"] == "refs/heads/main"
    assert body["cacheVersion"] == VERSION
    assert body["creationTime"].endswith("Z")
    # archiveLocation is a signed URL that needs no token (the npm client sends none)
    got = gha_app.client.get(body["archiveLocation"])
    assert got.status_code == 200 and got.content == data
    assert got.headers["content-length"] == str(len(data))
    assert got.headers["x-ms-request-id"]


def test_entry_is_invisible_until_committed(gha_app: AppHarness) -> None:
    w = wire(gha_app, "main")
    cache_id = w.v1_reserve("k", VERSION, 8).json()["cacheId"]
    assert w.v1_chunk(cache_id, 0, b"12345678").status_code == 204
    assert w.v1_lookup(["k"], VERSION).status_code == 204
    # a commit with another size than what was uploaded fails and exposes nothing
    bad = w.v1_commit(cache_id, 9)
    assert bad.status_code == 400
    assert w.v1_lookup(["k"], VERSION).status_code == 204
    assert w.v1_commit(cache_id, 8).status_code == 204
    assert w.v1_lookup(["k"], VERSION).status_code == 200


def test_commit_with_a_gap_is_refused(gha_app: AppHarness) -> None:
    w = wire(gha_app, "main")
    cache_id = w.v1_reserve("k", VERSION).json()["cacheId"]
    w.v1_chunk(cache_id, 0, b"aaaa")
    w.v1_chunk(cache_id, 8, b"cccc")
    resp = w.v1_commit(cache_id, 12)
    assert resp.status_code == 400 and "does not make 12 bytes" in resp.json()["message"]
    w.v1_chunk(cache_id, 4, b"bbbb")
    assert w.v1_commit(cache_id, 12).status_code == 204
    loc = w.v1_lookup(["k"], VERSION).json()["archiveLocation"]
    assert gha_app.client.get(loc).content == b"aaaabbbbcccc"


def test_matching_order_prefix_and_restore_keys(gha_app: AppHarness) -> None:
    w = wire(gha_app, "main")
    w.v1_save("npm-linux-abc", VERSION, b"old")
    w.v1_save("npm-linux-def", VERSION, b"new")
    w.v1_save("npm-", VERSION, b"exact")
    w.v1_save("yarn-linux", VERSION, b"yarn")

    def hit(*keys: str) -> str | None:
        resp = w.v1_lookup(list(keys), VERSION)
        return None if resp.status_code == 204 else str(resp.json()["cacheKey"])

    assert hit("npm-linux-abc") == "npm-linux-abc"  # exact primary key
    assert hit("npm-linux") == "npm-linux-def"  # prefix of the primary key: newest wins
    assert hit("npm-") == "npm-"  # an exact match beats newer prefix matches
    assert hit("missing", "yarn-") == "yarn-linux"  # a restore key as a prefix
    assert hit("missing", "npm-linux-abc", "yarn-") == "npm-linux-abc"  # restore keys in order
    assert hit("nothing", "nope") is None


def test_version_must_match(gha_app: AppHarness) -> None:
    w = wire(gha_app, "main")
    w.v1_save("k", VERSION, b"data")
    assert w.v1_lookup(["k"], "b" * 64).status_code == 204
    # the same key with another version is another entry
    w.v1_save("k", "b" * 64, b"other")
    assert w.v1_lookup(["k"], "b" * 64).status_code == 200


def test_duplicate_reservation_conflicts(gha_app: AppHarness) -> None:
    w = wire(gha_app, "main")
    assert w.v1_reserve("k", VERSION).status_code == 201
    resp = w.v1_reserve("k", VERSION)
    assert resp.status_code == 409
    body = resp.json()
    assert "already exists" in body["message"].lower()
    assert body["typeKey"] == "ArtifactCacheItemAlreadyExistsException"


def test_missing_or_bad_token_is_401(gha_app: AppHarness) -> None:
    url = "/_apis/artifactcache/cache"
    params = {"keys": "k", "version": VERSION}
    assert gha_app.client.get(url, params=params).status_code == 401
    for token in (
        "garbage",
        token_for("main", secret=b"another-secret-of-enough-length"),
        token_for("main", ttl=-120),  # expired
    ):
        resp = gha_app.client.get(url, params=params, headers={"Authorization": f"Bearer {token}"})
        assert resp.status_code == 401, token


def test_read_only_token_cannot_write(gha_app: AppHarness) -> None:
    wire(gha_app, "main").v1_save("k", VERSION, b"data")
    ro = wire(gha_app, ("main", READ))
    resp = ro.v1_reserve("k2", VERSION)
    assert resp.status_code == 403
    assert resp.json()["message"].startswith("cache write denied:")
    assert ro.v1_lookup(["k"], VERSION).status_code == 200  # reading is fine


def test_token_without_readable_scope_is_denied_reads(gha_app: AppHarness) -> None:
    resp = wire(gha_app, ("main", 2)).v1_lookup(["k"], VERSION)
    assert resp.status_code == 403
    assert resp.json()["message"].startswith("cache read denied:")


def test_pull_request_scopes(gha_app: AppHarness) -> None:
    main = wire(gha_app, "refs/heads/main")
    main.v1_save("deps", VERSION, b"from main")
    pr = wire(gha_app, "refs/pull/7/merge", ("refs/heads/main", READ))
    # the PR reads main's entry through its fallback scope
    resp = pr.v1_lookup(["deps"], VERSION)
    assert resp.json()["scope"] == "refs/heads/main"
    # its own save goes to its own scope, and then wins over main's in its lookups
    pr.v1_save("deps", VERSION, b"from the PR")
    resp = pr.v1_lookup(["deps"], VERSION)
    assert resp.json()["scope"] == "refs/pull/7/merge"
    assert gha_app.client.get(resp.json()["archiveLocation"]).content == b"from the PR"
    # main never sees the PR's entry
    assert main.v1_lookup(["deps"], VERSION).json()["scope"] == "refs/heads/main"
    # and the PR cannot upload into an upload main reserved
    cache_id = main.v1_reserve("main-only", VERSION).json()["cacheId"]
    assert pr.v1_chunk(cache_id, 0, b"evil").status_code == 403
    assert pr.v1_commit(cache_id, 4).status_code == 403


def test_size_bounds(gha_app_factory: object) -> None:
    app = gha_app_factory(max_size=10_000, max_entry_size=1000)  # type: ignore[operator]
    w = wire(app, "main")
    resp = w.v1_reserve("big", VERSION, 5000)
    assert resp.status_code == 400 and "over" in resp.json()["message"]
    cache_id = w.v1_reserve("k", VERSION, 100).json()["cacheId"]
    # past the declared size
    assert w.v1_chunk(cache_id, 90, b"x" * 20).status_code == 413
    # body longer than its Content-Range
    headers = dict(w.headers)
    headers["Content-Range"] = "bytes 0-9/*"
    resp = app.client.patch(
        f"/_apis/artifactcache/caches/{cache_id}", content=b"y" * 50, headers=headers
    )
    assert resp.status_code == 413
    # body shorter than its Content-Range
    headers["Content-Range"] = "bytes 0-49/*"
    resp = app.client.patch(
        f"/_apis/artifactcache/caches/{cache_id}", content=b"y" * 10, headers=headers
    )
    assert resp.status_code == 400
    # no Content-Range at all
    resp = app.client.patch(
        f"/_apis/artifactcache/caches/{cache_id}", content=b"y", headers=w.headers
    )
    assert resp.status_code == 400
    # without a declared size, the per-entry cap applies
    other = w.v1_reserve("k2", VERSION).json()["cacheId"]
    assert w.v1_chunk(other, 999, b"ab").status_code == 413
    # a JSON body past the limit
    resp = app.client.post(
        "/_apis/artifactcache/caches",
        content=b'{"key": "' + b"x" * 100_000 + b'"}',
        headers={**w.headers, "Content-Type": "application/json"},
    )
    # 400, not 413, for a POST: the npm client reports a 400's message ("over the data cap")
    assert resp.status_code == 400
    assert "larger than the 65536 bytes allowed" in resp.json()["message"]


def test_bad_keys_are_refused(gha_app: AppHarness) -> None:
    w = wire(gha_app, "main")
    assert w.v1_reserve("a,b", VERSION).status_code == 400
    assert w.v1_reserve("k" * 513, VERSION).status_code == 400
    assert w.v1_reserve("", VERSION).status_code == 400
    assert w.v1_lookup([f"k{i}" for i in range(11)], VERSION).status_code == 400


def test_unknown_upload_is_404(gha_app: AppHarness) -> None:
    w = wire(gha_app, "main")
    assert w.v1_chunk(424242, 0, b"x").status_code == 404
    assert w.v1_commit(424242, 1).status_code == 404


def test_base_path_is_kept_like_github_urls(gha_app: AppHarness) -> None:
    """ACTIONS_CACHE_URL may carry a path (GitHub's does); the API lives under it."""
    w = wire(gha_app, "main", base="/some/tenant/")
    w.v1_save("k", VERSION, b"data")
    assert w.v1_lookup(["k"], VERSION).status_code == 200


def test_ranged_download_of_archive_location(gha_app: AppHarness) -> None:
    """go-actions-cache reopens a v1 download with ``Range: bytes=N-`` and wants 206."""
    w = wire(gha_app, "main")
    data = bytes(range(256)) * 100
    w.v1_save("k", VERSION, data)
    loc = w.v1_lookup(["k"], VERSION).json()["archiveLocation"]
    resp = gha_app.client.get(loc, headers={"Range": "bytes=1000-"})
    assert resp.status_code == 206
    assert resp.headers["content-range"] == f"bytes 1000-{len(data) - 1}/{len(data)}"
    assert resp.content == data[1000:]
    resp = gha_app.client.get(loc, headers={"Range": "bytes=10-19"})
    assert resp.status_code == 206 and resp.content == data[10:20]
    resp = gha_app.client.get(loc, headers={"Range": "bytes=-5"})
    assert resp.status_code == 206 and resp.content == data[-5:]
    resp = gha_app.client.get(loc, headers={"Range": f"bytes={len(data)}-"})
    assert resp.status_code == 416
    assert resp.headers["content-range"] == f"bytes */{len(data)}"
    head = gha_app.client.head(loc)
    assert head.status_code == 200 and head.headers["content-length"] == str(len(data))


@pytest.mark.parametrize("tamper", ["sig", "se", "sp"])
def test_archive_location_signature_is_checked(gha_app: AppHarness, tamper: str) -> None:
    w = wire(gha_app, "main")
    w.v1_save("k", VERSION, b"secret data")
    loc = w.v1_lookup(["k"], VERSION).json()["archiveLocation"]
    parts = urlsplit(loc)
    q = {k: v[0] for k, v in parse_qs(parts.query).items()}
    q[tamper] = {"sig": "AAAA", "se": str(int(q["se"]) + 100), "sp": "w"}[tamper]
    query = "&".join(f"{k}={v}" for k, v in q.items())
    resp = gha_app.client.get(f"{parts.scheme}://{parts.netloc}{parts.path}?{query}")
    assert resp.status_code == 403
    assert (
        resp.headers["x-ms-error-code"] == "AuthenticationFailed"
        or resp.headers["x-ms-error-code"] == "AuthorizationFailure"
    )
    assert b"secret data" not in resp.content


def test_expired_download_url_is_refused(gha_app_factory: object) -> None:
    app = gha_app_factory(url_ttl=-1)  # type: ignore[operator]
    w = wire(app, "main")
    w.v1_save("k", VERSION, b"data")
    loc = w.v1_lookup(["k"], VERSION).json()["archiveLocation"]
    assert app.client.get(loc).status_code == 403


def test_list_caches_for_the_npm_clients_diagnostics(gha_app: AppHarness) -> None:
    w = wire(gha_app, "main")
    w.v1_save("abc-1", VERSION, b"x")
    resp = gha_app.client.get(
        "/_apis/artifactcache/caches", params={"key": "abc"}, headers=w.headers
    )
    assert resp.status_code == 200
    assert resp.json()["totalCount"] == 1
    assert resp.json()["artifactCaches"][0]["cacheKey"] == "abc-1"


def test_anonymous_scope_for_trusted_networks(gha_app_factory: object) -> None:
    """Runners whose forge issues its own tokens (act_runner's external cache server)."""
    app = gha_app_factory(anonymous_scope="shared")  # type: ignore[operator]
    anon = Wire(app.client, "a-token-from-some-forge")
    anon.v1_save("k", VERSION, b"data")
    body = anon.v1_lookup(["k"], VERSION).json()
    assert body["scope"] == "shared"
    assert app.client.get(body["archiveLocation"]).content == b"data"
    # a real token still gets exactly its own scopes
    assert wire(app, "main").v1_lookup(["k"], VERSION).status_code == 204
    # and the management API stays closed to anonymous callers' admin actions
    assert app.client.post("/_kiln/v1/evict").status_code == 403


# --- stale reservations ------------------------------------------------------------------

MIB = 1 << 20


def stream_chunk(
    w: Wire, cache_id: int, pieces: list[bytes], between: Callable[[int], None]
) -> httpx.Response:
    """PATCH one chunk made of *pieces*, sent with :func:`paced`."""
    total = sum(len(p) for p in pieces)
    headers = {
        **w.headers,
        "Content-Type": "application/octet-stream",
        "Content-Range": f"bytes 0-{total - 1}/*",
    }
    return w.client.patch(
        f"{w.base}_apis/artifactcache/caches/{cache_id}",
        content=paced(pieces, between),
        headers=headers,
    )


def test_an_idle_reservation_is_taken_over(gha_app_factory: Callable[..., AppHarness]) -> None:
    """The job that reserved the key died mid-upload: its retry saves the key once the
    reservation has seen no progress for the timeout; the dead upload can no longer write."""
    app = gha_app_factory(reservation_timeout=60)
    dead, retry = wire(app, "main"), wire(app, "main")
    old_id = dead.v1_reserve("k", VERSION, 8).json()["cacheId"]
    assert dead.v1_chunk(old_id, 0, b"old-").status_code == 204
    old = app.metadata.get(old_id)
    assert old is not None and app.upload_path(old.blob).exists()
    app.clock.advance(59)
    held = retry.v1_reserve("k", VERSION, 8)
    assert held.status_code == 409  # not idle long enough yet
    assert held.json()["typeKey"] == "ArtifactCacheItemAlreadyExistsException"
    app.clock.advance(2)
    resp = retry.v1_reserve("k", VERSION, 8)
    assert resp.status_code == 201
    new_id = resp.json()["cacheId"]
    assert new_id != old_id
    assert not app.upload_path(old.blob).parent.exists()  # its staged data is discarded
    # the dead upload's next chunk and its commit are refused as a lost reservation's
    late = dead.v1_chunk(old_id, 4, b"data")
    assert late.status_code == 404 and "no upload in progress" in late.json()["message"]
    assert dead.v1_commit(old_id, 8).status_code == 404
    assert retry.v1_chunk(new_id, 0, b"new-data").status_code == 204
    assert retry.v1_commit(new_id, 8).status_code == 204
    hit = retry.v1_lookup(["k"], VERSION).json()
    assert app.client.get(hit["archiveLocation"]).content == b"new-data"
    stats = app.client.get("/_kiln/v1/stats", headers=app.auth("main")).json()
    assert stats["taken_over"] == 1 and stats["entries"] == 1 and stats["pending_uploads"] == 0


def test_a_reservation_without_any_chunk_is_taken_over(
    gha_app_factory: Callable[..., AppHarness],
) -> None:
    app = gha_app_factory(reservation_timeout=60)
    w = wire(app, "main")
    old_id = w.v1_reserve("k", VERSION).json()["cacheId"]
    app.clock.advance(61)
    new_id = w.v1_reserve("k", VERSION).json()["cacheId"]
    assert new_id != old_id
    assert w.v1_commit(old_id, 0).status_code == 404
    assert w.v1_commit(new_id, 0).status_code == 204
    assert w.v1_lookup(["k"], VERSION).status_code == 200


def test_an_upload_making_progress_keeps_its_reservation(
    gha_app_factory: Callable[..., AppHarness],
) -> None:
    app = gha_app_factory(reservation_timeout=60)
    first, second = wire(app, "main"), wire(app, "main")
    cache_id = first.v1_reserve("k", VERSION, 12).json()["cacheId"]
    for n, part in enumerate((b"aaaa", b"bbbb", b"cccc")):
        app.clock.advance(45)  # 135 s since the reservation, never 60 without progress
        assert second.v1_reserve("k", VERSION, 12).status_code == 409
        assert first.v1_chunk(cache_id, 4 * n, part).status_code == 204
    app.clock.advance(45)
    assert second.v1_reserve("k", VERSION, 12).status_code == 409
    assert first.v1_commit(cache_id, 12).status_code == 204
    # committed entries are never taken over, however long unused
    app.clock.advance(86400)
    dup = second.v1_reserve("k", VERSION, 12)
    assert dup.status_code == 409 and "already exists" in dup.json()["message"].lower()
    loc = second.v1_lookup(["k"], VERSION).json()["archiveLocation"]
    assert app.client.get(loc).content == b"aaaabbbbcccc"


def test_a_long_chunk_still_streaming_keeps_its_reservation(
    gha_app_factory: Callable[..., AppHarness],
) -> None:
    """One chunk takes longer than the timeout to arrive: its bytes are progress."""
    app = gha_app_factory(reservation_timeout=60)
    first, second = (
        wire(app, "main"),
        Wire(httpx.Client(base_url=app.url, trust_env=False), token_for("main")),
    )
    cache_id = first.v1_reserve("k", VERSION, 4 * MIB).json()["cacheId"]
    entry = app.metadata.get(cache_id)
    assert entry is not None
    pieces = [bytes([n]) * MIB for n in range(4)]
    refused: list[int] = []

    def between(n: int) -> None:
        app.wait_for_upload(entry.blob, n * MIB)
        app.clock.advance(40)  # 120 s since the reservation by the third piece
        refused.append(second.v1_reserve("k", VERSION, 4 * MIB).status_code)

    try:
        assert stream_chunk(first, cache_id, pieces, between).status_code == 204
    finally:
        second.client.close()
    assert refused == [409, 409, 409]
    assert first.v1_commit(cache_id, 4 * MIB).status_code == 204
    loc = first.v1_lookup(["k"], VERSION).json()["archiveLocation"]
    assert app.client.get(loc).content == b"".join(pieces)


def test_a_chunk_stalled_past_the_timeout_loses_to_a_new_reservation(
    gha_app_factory: Callable[..., AppHarness],
) -> None:
    """A chunk whose bytes stop arriving for the timeout: its reservation is taken over,
    and what arrives afterwards is refused and discarded, not mixed into the new upload."""
    app = gha_app_factory(reservation_timeout=60)
    first, second = (
        wire(app, "main"),
        Wire(httpx.Client(base_url=app.url, trust_env=False), token_for("main")),
    )
    cache_id = first.v1_reserve("k", VERSION, 2 * MIB).json()["cacheId"]
    entry = app.metadata.get(cache_id)
    assert entry is not None
    taken: list[int] = []

    def between(n: int) -> None:
        app.wait_for_upload(entry.blob, MIB)
        app.clock.advance(61)  # the client stalls
        resp = second.v1_reserve("k", VERSION, 3)
        taken.append(resp.json()["cacheId"])

    try:
        resp = stream_chunk(first, cache_id, [b"o" * MIB, b"o" * MIB], between)
        assert resp.status_code == 404 and "no upload in progress" in resp.json()["message"]
        (new_id,) = taken
        assert new_id != cache_id
        assert not app.upload_path(entry.blob).parent.exists()
        assert first.v1_commit(cache_id, 2 * MIB).status_code == 404
        assert second.v1_chunk(new_id, 0, b"new").status_code == 204
        assert second.v1_commit(new_id, 3).status_code == 204
    finally:
        second.client.close()
    loc = first.v1_lookup(["k"], VERSION).json()["archiveLocation"]
    assert app.client.get(loc).content == b"new"
