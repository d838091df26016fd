"""The v2 twirp API and the Azure-Blob-shaped signed URLs, over every metadata backend.

Includes what BuildKit's Go client (go-actions-cache with the Azure Go SDK) sends: 64-byte
block ids, numeric ``size_bytes``, ``restore_keys`` repeating the key, ranged downloads
(``x-ms-range``/``Range: bytes=N-``), the mutable ``#n`` index keys, and it dereferences
``x-ms-request-id`` on every blob response.
"""

from __future__ import annotations

import base64
import os
import secrets
from collections.abc import Callable
from urllib.parse import urlsplit

import httpx
import pytest
from tests.fixtures.gha import GO_VERSION, AppHarness, Wire, paced, token_for

from kiln.gha.scopes import READ

NPM_VERSION = "c" * 64


def wire(app: AppHarness, *scopes: str | tuple[str, int], base: str = "/") -> Wire:
    return Wire(app.client, token_for(*scopes), base)


def npm_block_id(prefix: str, index: int) -> str:
    """@azure/storage-blob's block ids: 48 characters, base64-encoded."""
    raw = prefix[:42] + str(index).rjust(48 - len(prefix[:42]), "0")
    return base64.b64encode(raw.encode()).decode()


def go_block_id() -> str:
    """The Azure Go SDK's block ids: 64 random bytes, base64-encoded."""
    return base64.b64encode(os.urandom(64)).decode()


def test_create_put_blob_finalize_download(gha_app: AppHarness) -> None:
    w = wire(gha_app, "refs/heads/main")
    data = secrets.token_bytes(2 * (1 << 20) + 3)
    miss = w.v2_lookup("k", NPM_VERSION)
    assert miss.status_code == 200 and miss.json()["ok"] is False
    created = w.v2_create("k", NPM_VERSION)
    assert created.status_code == 200
    upload_url = created.json()["signed_upload_url"]
    assert urlsplit(upload_url).path.count("/") == 3  # /<account>/<container>/<blob>
    put = w.put_blob(upload_url, data)
    assert put.status_code == 201 and put.headers["x-ms-request-id"]
    assert w.v2_lookup("k", NPM_VERSION).json()["ok"] is False  # not yet finalized
    fin = w.v2_finalize("k", NPM_VERSION, str(len(data)))  # the npm client: int64 as string
    assert fin.status_code == 200
    assert fin.json()["ok"] is True and isinstance(fin.json()["entry_id"], str)
    hit = w.v2_lookup("k", NPM_VERSION)
    assert hit.json()["ok"] is True and hit.json()["matched_key"] == "k"
    got = gha_app.client.get(hit.json()["signed_download_url"])
    assert got.status_code == 200 and got.content == data


def test_npm_block_upload_assembled_in_list_order(gha_app: AppHarness) -> None:
    w = wire(gha_app, "main")
    url = w.v2_create("big", NPM_VERSION).json()["signed_upload_url"]
    blocks = [secrets.token_bytes(100_000 + i) for i in range(5)]
    ids = [npm_block_id("9f1c2a4e-0b4e-4c55-9a9e-5c8b1d2e3f40", i) for i in range(5)]
    assert all(len(base64.b64decode(i)) == 48 for i in ids)
    for i in (3, 1, 4, 0, 2):  # staged concurrently, in any order
        resp = w.put_block(url, ids[i], blocks[i])
        assert resp.status_code == 201 and resp.headers["x-ms-request-id"]
    assert w.put_block_list(url, ids).status_code == 201
    size = sum(len(b) for b in blocks)
    assert w.v2_finalize("big", NPM_VERSION, str(size)).json()["ok"] is True
    loc = w.v2_lookup("big", NPM_VERSION).json()["signed_download_url"]
    assert gha_app.client.get(loc).content == b"".join(blocks)


def test_buildkit_go_client_protocol(gha_app: AppHarness) -> None:
    """64-byte block ids, numeric size_bytes, restore_keys repeating the key."""
    w = wire(gha_app, "buildkit")
    key = "buildkit-blob-1-sha256:" + "ab" * 32
    resp = w.v2_create(key, GO_VERSION)
    url = resp.json()["signed_upload_url"]
    chunks = [secrets.token_bytes(1 << 20), secrets.token_bytes(1 << 20), b"tail"]
    ids = [go_block_id() for _ in chunks]
    for block_id, chunk in zip(ids, chunks, strict=True):
        r = w.put_block(url, block_id, chunk)
        assert r.status_code == 201
        assert r.headers["x-ms-request-id"]
    assert w.put_block_list(url, ids).status_code == 201
    size = sum(len(c) for c in chunks)
    fin = w.v2_finalize(key, GO_VERSION, size)  # Go: a JSON number
    assert fin.json() == {"ok": True, "entry_id": fin.json()["entry_id"]}
    hit = w.v2_lookup(key, GO_VERSION, restore=[key])  # Go repeats the key
    assert hit.json()["matched_key"] == key
    loc = hit.json()["signed_download_url"]
    data = b"".join(chunks)
    # the Azure Go SDK reads with x-ms-range: bytes=N- (and re-reads from an offset)
    r = gha_app.client.get(loc, headers={"x-ms-range": f"bytes={size - 10}-"})
    assert r.status_code == 206
    assert r.headers["content-range"] == f"bytes {size - 10}-{size - 1}/{size}"
    assert r.content == data[-10:]
    assert r.headers["x-ms-request-id"]
    r = gha_app.client.get(loc, headers={"Range": "bytes=5-"})
    assert r.status_code == 206 and r.content == data[5:]
    r = gha_app.client.get(loc, headers={"x-ms-range": "bytes=0-3", "Range": "bytes=9-"})
    assert r.content == data[:4]  # x-ms-range wins, as in Azure


def test_buildkit_mutable_index_keys(gha_app: AppHarness) -> None:
    """BuildKit's index lives under ``index-<scope>-1-<hash>#<n>``: readers prefix-match
    ``…#`` and take the newest; a writer racing for the same ``#n`` gets already_exists."""
    w = wire(gha_app, "buildkit")
    base = "index-buildkit-1-3f2a9c1d"
    for n in (1, 2, 3):
        w.v2_save(f"{base}#{n}", GO_VERSION, f"index {n}".encode())
    hit = w.v2_lookup(f"{base}#", GO_VERSION, restore=[f"{base}#"])
    assert hit.json()["matched_key"] == f"{base}#3"
    assert gha_app.client.get(hit.json()["signed_download_url"]).content == b"index 3"
    dup = w.v2_create(f"{base}#3", GO_VERSION)
    assert dup.status_code == 409
    assert dup.json()["code"] == "already_exists"  # go-actions-cache maps it to os.ErrExist
    # the same through v1 (go-actions-cache without ACTIONS_CACHE_SERVICE_V2)
    resp = w.v1_lookup([f"{base}#"], GO_VERSION)
    assert resp.json()["cacheKey"] == f"{base}#3"


def test_duplicate_create_is_409_already_exists(gha_app: AppHarness) -> None:
    w = wire(gha_app, "main")
    assert w.v2_create("k", NPM_VERSION).status_code == 200
    resp = w.v2_create("k", NPM_VERSION)
    assert resp.status_code == 409
    assert resp.json()["code"] == "already_exists" and resp.json()["msg"]


def test_finalize_needs_the_whole_upload(gha_app: AppHarness) -> None:
    w = wire(gha_app, "main")
    url = w.v2_create("k", NPM_VERSION).json()["signed_upload_url"]
    w.put_block(url, go_block_id(), b"staged but never listed")
    resp = w.v2_finalize("k", NPM_VERSION, 23)
    assert resp.status_code == 400 and resp.json()["code"] == "invalid_argument"
    assert w.v2_lookup("k", NPM_VERSION).json()["ok"] is False
    w.put_blob(url, b"12345")
    assert w.v2_finalize("k", NPM_VERSION, 6).status_code == 400
    assert w.v2_finalize("k", NPM_VERSION, 5).json()["ok"] is True
    # finalizing again (a client retry) is harmless
    assert w.v2_finalize("k", NPM_VERSION, 5).json()["ok"] is True
    # finalizing something never created is not found
    assert w.v2_finalize("nope", NPM_VERSION, 5).status_code == 404


def test_block_list_with_unstaged_block(gha_app: AppHarness) -> None:
    w = wire(gha_app, "main")
    url = w.v2_create("k", NPM_VERSION).json()["signed_upload_url"]
    staged = go_block_id()
    w.put_block(url, staged, b"abc")
    resp = w.put_block_list(url, [staged, go_block_id()])
    assert resp.status_code == 400
    assert resp.headers["x-ms-error-code"] == "InvalidInput"
    assert resp.text.startswith("<?xml") and "<Code>InvalidInput</Code>" in resp.text
    assert resp.headers["x-ms-request-id"]


def test_bad_block_ids_and_bodies(gha_app: AppHarness) -> None:
    w = wire(gha_app, "main")
    url = w.v2_create("k", NPM_VERSION).json()["signed_upload_url"]
    assert w.put_block(url, "not base64!", b"x").status_code == 400
    too_long = base64.b64encode(b"x" * 65).decode()
    assert w.put_block(url, too_long, b"x").status_code == 400
    entity = b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "b">]><BlockList/>'
    resp = gha_app.client.put(f"{url}&comp=blocklist", content=entity)
    assert resp.status_code == 400
    assert gha_app.client.put(f"{url}&comp=appendblock", content=b"").status_code == 400


def test_upload_past_the_entry_cap(gha_app_factory: object) -> None:
    app = gha_app_factory(max_size=100_000, max_entry_size=1000)  # type: ignore[operator]
    w = wire(app, "main")
    url = w.v2_create("k", NPM_VERSION).json()["signed_upload_url"]
    resp = w.put_blob(url, b"x" * 1001)
    assert resp.status_code == 413 and resp.headers["x-ms-error-code"] == "RequestBodyTooLarge"

    def chunked() -> object:
        for _ in range(20):
            yield b"y" * 100

    # no Content-Length: the limit is enforced while streaming
    resp = app.client.put(url, content=chunked(), headers={"x-ms-blob-type": "BlockBlob"})  # type: ignore[arg-type]
    assert resp.status_code == 413
    ids = [go_block_id(), go_block_id()]
    assert w.put_block(url, ids[0], b"a" * 600).status_code == 201
    assert w.put_block(url, ids[1], b"b" * 600).status_code == 413  # blocks add up
    assert w.v2_lookup("k", NPM_VERSION).json()["ok"] is False


def test_signed_urls_are_bound_to_their_permission(gha_app: AppHarness) -> None:
    w = wire(gha_app, "main")
    upload = w.v2_create("k", NPM_VERSION).json()["signed_upload_url"]
    assert gha_app.client.get(upload).status_code == 403  # an upload URL cannot read
    w.put_blob(upload, b"data")
    w.v2_finalize("k", NPM_VERSION, 4)
    download = w.v2_lookup("k", NPM_VERSION).json()["signed_download_url"]
    resp = w.put_blob(download, b"overwrite")  # a download URL cannot write
    assert resp.status_code == 403
    assert gha_app.client.get(download).content == b"data"
    # the finished upload's URL can no longer write: the entry is immutable
    assert w.put_blob(upload, b"again").status_code == 404
    # a URL for another blob name does not verify
    parts = urlsplit(download)
    other = parts.path[:-32] + "0" * 32
    resp = gha_app.client.get(f"{parts.scheme}://{parts.netloc}{other}?{parts.query}")
    assert resp.status_code == 403
    assert resp.headers["x-ms-request-id"]
    assert gha_app.client.get("/kiln/cache/../../etc/passwd").status_code == 404


def test_tokens_and_scopes(gha_app: AppHarness) -> None:
    anonymous = gha_app.client.post(
        "/twirp/github.actions.results.api.v1.CacheService/CreateCacheEntry",
        json={"key": "k", "version": NPM_VERSION},
    )
    assert anonymous.status_code == 401 and anonymous.json()["code"] == "unauthenticated"
    ro = wire(gha_app, ("main", READ))
    resp = ro.v2_create("k", NPM_VERSION)
    assert resp.status_code == 403 and resp.json()["code"] == "permission_denied"
    assert resp.json()["msg"].startswith("cache write denied:")
    assert ro.v2_finalize("k", NPM_VERSION, 1).status_code == 403
    none = wire(gha_app, ("main", 2))
    resp = none.v2_lookup("k", NPM_VERSION)
    assert resp.status_code == 403 and resp.json()["msg"].startswith("cache read denied:")
    # a pull request writes its own scope and reads the base branch's
    wire(gha_app, "main").v2_save("deps", NPM_VERSION, b"main")
    pr = wire(gha_app, "refs/pull/1/merge", ("main", READ))
    assert pr.v2_lookup("deps", NPM_VERSION).json()["ok"] is True
    pr.v2_save("deps", NPM_VERSION, b"pr")  # no conflict: another scope
    loc = pr.v2_lookup("deps", NPM_VERSION).json()["signed_download_url"]
    assert gha_app.client.get(loc).content == b"pr"


def test_restore_keys(gha_app: AppHarness) -> None:
    w = wire(gha_app, "main")
    w.v2_save("cargo-linux-1111", NPM_VERSION, b"a")
    w.v2_save("cargo-linux-2222", NPM_VERSION, b"b")
    resp = w.v2_lookup("cargo-linux-3333", NPM_VERSION, restore=["cargo-linux-", "cargo-"])
    assert resp.json()["matched_key"] == "cargo-linux-2222"
    resp = w.v2_lookup("cargo-linux-3333", NPM_VERSION, restore=["cargo-linux-1111"])
    assert resp.json()["matched_key"] == "cargo-linux-1111"


def test_twirp_routing(gha_app: AppHarness) -> None:
    w = wire(gha_app, "main", base="/any/base/path/")
    w.v2_save("k", NPM_VERSION, b"x")  # a base path is tolerated (go-actions-cache keeps it)
    resp = w.twirp("DeleteEverything", {})
    assert resp.status_code == 404 and resp.json()["code"] == "bad_route"
    resp = gha_app.client.post(
        "/twirp/github.actions.results.api.v1.CacheService/CreateCacheEntry",
        content=b"\x0a\x01k",
        headers={**w.headers, "Content-Type": "application/protobuf"},
    )
    assert resp.status_code == 404 and resp.json()["code"] == "bad_route"
    resp = gha_app.client.post(
        "/twirp/github.actions.results.api.v1.CacheService/CreateCacheEntry",
        content=b"{not json",
        headers={**w.headers, "Content-Type": "application/json"},
    )
    assert resp.status_code == 400 and resp.json()["code"] == "invalid_argument"


@pytest.mark.parametrize("size_bytes", ["5", 5, 5.0])
def test_size_bytes_as_string_or_number(gha_app: AppHarness, size_bytes: object) -> None:
    w = wire(gha_app, "main")
    url = w.v2_create("k", NPM_VERSION).json()["signed_upload_url"]
    w.put_blob(url, b"12345")
    assert w.v2_finalize("k", NPM_VERSION, size_bytes).json()["ok"] is True  # type: ignore[arg-type]


def test_head_and_empty_entry(gha_app: AppHarness) -> None:
    w = wire(gha_app, "main")
    w.v2_save("empty", NPM_VERSION, b"")
    loc = w.v2_lookup("empty", NPM_VERSION).json()["signed_download_url"]
    head = gha_app.client.head(loc)
    assert head.status_code == 200 and head.headers["content-length"] == "0"
    assert head.headers["x-ms-request-id"] and head.headers["etag"]
    assert gha_app.client.get(loc).content == b""


# --- stale reservations ------------------------------------------------------------------

MIB = 1 << 20
Factory = Callable[..., AppHarness]


def blob_of(url: str) -> str:
    return urlsplit(url).path.rsplit("/", 1)[-1]


def test_an_idle_cache_entry_is_taken_over(gha_app_factory: Factory) -> None:
    """The job that created the entry died mid-upload: its retry's CreateCacheEntry wins
    once the upload has seen no progress for the timeout; the dead upload's URL is dead."""
    app = gha_app_factory(reservation_timeout=60)
    dead, retry = wire(app, "main"), wire(app, "main")
    old_url = dead.v2_create("k", NPM_VERSION).json()["signed_upload_url"]
    staged = go_block_id()
    assert dead.put_block(old_url, staged, b"old block").status_code == 201
    app.clock.advance(59)
    held = retry.v2_create("k", NPM_VERSION)
    assert held.status_code == 409 and held.json()["code"] == "already_exists"
    app.clock.advance(2)
    resp = retry.v2_create("k", NPM_VERSION)
    assert resp.status_code == 200 and resp.json()["ok"] is True
    new_url = resp.json()["signed_upload_url"]
    assert blob_of(new_url) != blob_of(old_url)
    assert not app.upload_path(blob_of(old_url)).parent.exists()  # staged data discarded
    # every later request of the dead upload is refused as a lost reservation's
    for late in (
        dead.put_block(old_url, go_block_id(), b"late"),
        dead.put_block_list(old_url, [staged]),
        dead.put_blob(old_url, b"late blob"),
    ):
        assert late.status_code == 404 and late.headers["x-ms-error-code"] == "BlobNotFound"
    # v2 finalizes by key: the dead client's finalize meets the new, empty upload
    fin = dead.v2_finalize("k", NPM_VERSION, 9)
    assert fin.status_code == 400 and fin.json()["code"] == "invalid_argument"
    assert retry.v2_lookup("k", NPM_VERSION).json()["ok"] is False
    assert retry.put_blob(new_url, b"new data").status_code == 201
    fin = retry.v2_finalize("k", NPM_VERSION, "8")
    assert fin.status_code == 200 and fin.json()["ok"] is True
    hit = retry.v2_lookup("k", NPM_VERSION).json()
    assert app.client.get(hit["signed_download_url"]).content == b"new data"
    stats = app.client.get("/_kiln/v1/stats", headers=app.auth("main")).json()
    assert stats["taken_over"] == 1 and stats["pending_uploads"] == 0


def test_a_v2_upload_making_progress_keeps_its_entry(gha_app_factory: Factory) -> None:
    app = gha_app_factory(reservation_timeout=60)
    first, second = wire(app, "main"), wire(app, "main")
    url = first.v2_create("k", NPM_VERSION).json()["signed_upload_url"]
    blocks = [b"first ", b"second ", b"third"]
    ids = [go_block_id() for _ in blocks]
    for block_id, block in zip(ids, blocks, strict=True):
        app.clock.advance(45)  # never 60 s without progress
        dup = second.v2_create("k", NPM_VERSION)
        assert dup.status_code == 409 and dup.json()["code"] == "already_exists"
        assert first.put_block(url, block_id, block).status_code == 201
    app.clock.advance(45)
    assert second.v2_create("k", NPM_VERSION).status_code == 409
    assert first.put_block_list(url, ids).status_code == 201
    app.clock.advance(45)
    assert second.v2_create("k", NPM_VERSION).status_code == 409
    size = sum(len(b) for b in blocks)
    assert first.v2_finalize("k", NPM_VERSION, size).json()["ok"] is True
    app.clock.advance(86400)  # committed entries are never taken over
    assert second.v2_create("k", NPM_VERSION).status_code == 409
    loc = second.v2_lookup("k", NPM_VERSION).json()["signed_download_url"]
    assert app.client.get(loc).content == b"".join(blocks)


def test_a_long_put_blob_still_streaming_keeps_its_entry(gha_app_factory: Factory) -> None:
    """@azure/storage-blob sends up to 128 MiB in one Put Blob: while its bytes arrive,
    the upload is making progress, even past the timeout."""
    app = gha_app_factory(reservation_timeout=60)
    first = wire(app, "main")
    second = Wire(httpx.Client(base_url=app.url, trust_env=False), token_for("main"))
    url = first.v2_create("k", NPM_VERSION).json()["signed_upload_url"]
    pieces = [bytes([n]) * MIB for n in range(4)]
    codes: list[str] = []

    def between(n: int) -> None:
        app.wait_for_upload(blob_of(url), n * MIB)
        app.clock.advance(40)
        codes.append(second.v2_create("k", NPM_VERSION).json()["code"])

    try:
        put = app.client.put(
            url, content=paced(pieces, between), headers={"x-ms-blob-type": "BlockBlob"}
        )
    finally:
        second.client.close()
    assert put.status_code == 201
    assert codes == ["already_exists"] * 3
    assert first.v2_finalize("k", NPM_VERSION, 4 * MIB).json()["ok"] is True
    loc = first.v2_lookup("k", NPM_VERSION).json()["signed_download_url"]
    assert app.client.get(loc).content == b"".join(pieces)


def test_a_put_blob_stalled_past_the_timeout_loses_its_entry(gha_app_factory: Factory) -> None:
    app = gha_app_factory(reservation_timeout=60)
    first = wire(app, "main")
    second = Wire(httpx.Client(base_url=app.url, trust_env=False), token_for("main"))
    old_url = first.v2_create("k", NPM_VERSION).json()["signed_upload_url"]
    new_urls: list[str] = []

    def between(n: int) -> None:
        app.wait_for_upload(blob_of(old_url), MIB)
        app.clock.advance(61)  # the client stalls
        new_urls.append(second.v2_create("k", NPM_VERSION).json()["signed_upload_url"])

    try:
        put = app.client.put(
            old_url,
            content=paced([b"o" * MIB, b"o" * MIB], between),
            headers={"x-ms-blob-type": "BlockBlob"},
        )
        assert put.status_code == 404 and put.headers["x-ms-error-code"] == "BlobNotFound"
        assert not app.upload_path(blob_of(old_url)).parent.exists()
        (new_url,) = new_urls
        assert second.put_blob(new_url, b"new").status_code == 201
        assert second.v2_finalize("k", NPM_VERSION, 3).json()["ok"] is True
    finally:
        second.client.close()
    loc = first.v2_lookup("k", NPM_VERSION).json()["signed_download_url"]
    assert app.client.get(loc).content == b"new"
