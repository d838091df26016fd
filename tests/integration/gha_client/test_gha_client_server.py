"""kiln's GitHub Actions cache client against the real ``kiln cache serve``, v1 and v2.

The server runs as a subprocess (one per module); tests that need the wire observed or
disturbed talk to it through a :class:`FlakyFront` (cut downloads, 429/503 for a while,
connections refused).
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.fixtures.gha import GHA_SECRET, FlakyFront, GhaServer, Wire, token_for

from kiln.errors import CacheError
from kiln.gha.client import GO_VERSION, GhaClient, GhaEntry
from kiln.http.stats import TransferStats

pytestmark = pytest.mark.integration
MiB = 1 << 20
READ = 1


@pytest.fixture(params=["v1", "v2"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def scope() -> str:
    """A scope of its own for every test: the module shares one server."""
    return f"refs/heads/t-{uuid.uuid4().hex[:12]}"


def make_client(url: str, token: str, mode: str, **kw: Any) -> GhaClient:
    if mode == "v1":
        return GhaClient(token=token, url=url, api_version=1, **kw)
    return GhaClient(token=token, url_v2=url, api_version=2, **kw)


def random_file(path: Path, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "wb") as fh:
        left = size
        while left:
            piece = os.urandom(min(left, MiB))
            fh.write(piece)
            h.update(piece)
            left -= len(piece)
    return h.hexdigest()


def download(client: GhaClient, entry: GhaEntry) -> tuple[str, int, int]:
    """sha256, size and number of pieces of *entry*'s bytes."""
    h, size, pieces = hashlib.sha256(), 0, 0
    with client.open(entry) as chunks:
        for piece in chunks:
            h.update(piece)
            size += len(piece)
            pieces += 1
    return h.hexdigest(), size, pieces


def test_multi_chunk_round_trip(
    gha_server: GhaServer,
    flaky_front: Callable[[GhaServer], FlakyFront],
    mode: str,
    scope: str,
    tmp_path: Path,
) -> None:
    front = flaky_front(gha_server)
    size = 5 * MiB + 123
    digest = random_file(tmp_path / "blob", size)
    stats = TransferStats()
    with make_client(front.url, token_for(scope), mode, chunk_size=MiB, parallel=4,
                     stats=stats, category="cache") as client:  # fmt: skip
        assert client.scopes[0].name == scope and client.scopes[0].permission == 3
        assert client.lookup("blob-1") is None
        assert client.save("blob-1", tmp_path / "blob") is True
        entry = client.lookup("blob-1")
        assert entry is not None and entry.key == "blob-1" and entry.version == GO_VERSION
        got, got_size, pieces = download(client, entry)
        assert (got, got_size) == (digest, size)
        assert pieces > 1  # streamed, not handed over in one buffer
        assert stats.pushed("cache") == size and stats.pulled("cache") == size
        # a restore key matches by prefix when the primary key misses
        fallback = client.lookup("blob-2", restore_keys=["blob-"])
        assert fallback is not None and fallback.key == "blob-1"
        # another version is another entry
        assert client.lookup("blob-1", version="0" * 64) is None
    if mode == "v1":
        patches = front.seen("PATCH", "/_apis/artifactcache/caches/")
        assert sorted(str(r.content_range) for r in patches) == sorted(
            f"bytes {s}-{min(s + MiB, size) - 1}/*" for s in range(0, size, MiB)
        )
        commits = [r for r in front.seen("POST", "/_apis/artifactcache/caches/") if r.status]
        assert len(commits) == 1 and commits[0].status == 204
    else:
        puts = front.seen("PUT", "/kiln/cache/")
        assert [r.comp for r in puts].count("block") == 6
        assert puts[-1].comp == "blocklist" and puts[-1].status == 201
        assert front.seen("POST", "FinalizeCacheEntryUpload")[0].status == 200


def test_small_entry_is_one_put_and_bytes_round_trip(
    gha_server: GhaServer, flaky_front: Callable[[GhaServer], FlakyFront], mode: str, scope: str
) -> None:
    front = flaky_front(gha_server)
    with make_client(front.url, token_for(scope), mode) as client:
        assert client.save("small", b"hello index") is True
        entry = client.lookup("small")
        assert entry is not None
        assert client.read_bytes(entry, max_size=100) == b"hello index"
        with pytest.raises(CacheError, match="larger than 5 bytes"):
            client.read_bytes(entry, max_size=5)
        assert client.save("empty", b"") is True
        empty = client.lookup("empty")
        assert empty is not None and client.read_bytes(empty, max_size=0) == b""
    if mode == "v2":
        assert [r.comp for r in front.seen("PUT", "/kiln/cache/")] == [None, None]


def test_save_of_an_existing_key_is_false(gha_server: GhaServer, mode: str, scope: str) -> None:
    with make_client(gha_server.url, token_for(scope), mode) as client:
        assert client.save("dup", b"first") is True
        assert client.save("dup", b"second") is False
        entry = client.lookup("dup")
        assert entry is not None and client.read_bytes(entry, max_size=100) == b"first"


def test_save_mutable_counts_up_and_load_takes_the_newest(
    gha_server: GhaServer, mode: str, scope: str
) -> None:
    with make_client(gha_server.url, token_for(scope), mode) as client:
        assert client.load_mutable("index-x") is None
        assert client.save_mutable("index-x", b"one") == "index-x#1"
        assert client.save_mutable("index-x", b"two") == "index-x#2"
        newest = client.load_mutable("index-x")
        assert newest is not None and newest.key == "index-x#2"
        assert client.read_bytes(newest, max_size=100) == b"two"
        # a longer name sharing the prefix is not confused with it
        assert client.save_mutable("index-xy", b"other") == "index-xy#1"
        newest = client.load_mutable("index-x")
        assert newest is not None and newest.key == "index-x#2"


def test_save_mutable_skips_an_index_another_writer_holds(
    gha_server: GhaServer, mode: str, scope: str
) -> None:
    token = token_for(scope)
    with httpx.Client(base_url=gha_server.url, trust_env=False) as raw:
        # another writer has reserved #1 and is still uploading it
        wire = Wire(raw, token)
        held = (wire.v1_reserve("idx#1", GO_VERSION) if mode == "v1"
                else wire.v2_create("idx#1", GO_VERSION))  # fmt: skip
        assert held.status_code == (201 if mode == "v1" else 200), held.text
    with make_client(gha_server.url, token, mode) as client:
        assert client.save_mutable("idx", b"mine") == "idx#2"
        newest = client.load_mutable("idx")
        assert newest is not None and newest.key == "idx#2"


def test_concurrent_save_mutable_both_succeed(gha_server: GhaServer, mode: str, scope: str) -> None:
    token = token_for(scope)
    clients = [make_client(gha_server.url, token, mode) for _ in range(2)]
    start = threading.Barrier(2)
    saved: list[str] = []
    errors: list[BaseException] = []

    def run(client: GhaClient, data: bytes) -> None:
        try:
            start.wait()
            saved.append(client.save_mutable("race", data))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(c, bytes([i]) * 300_000))
               for i, c in enumerate(clients)]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    try:
        assert errors == []
        assert sorted(saved) == ["race#1", "race#2"]
        for key in saved:
            entry = clients[0].lookup(key)
            assert entry is not None and entry.key == key
        assert clients[0].save_mutable("race", b"third") == "race#3"
    finally:
        for c in clients:
            c.close()


def test_download_resumes_with_a_range_after_a_drop(
    gha_server: GhaServer,
    flaky_front: Callable[[GhaServer], FlakyFront],
    mode: str,
    scope: str,
    tmp_path: Path,
) -> None:
    front = flaky_front(gha_server)
    size = 3 * MiB + 7
    digest = random_file(tmp_path / "blob", size)
    stats = TransferStats()
    with make_client(front.url, token_for(scope), mode, stats=stats) as client:
        assert client.save("resume", tmp_path / "blob")
        entry = client.lookup("resume")
        assert entry is not None
        front.cut_next(700_000)
        front.cut_next(2_000_000)  # the resumed request is cut too
        assert download(client, entry)[:2] == (digest, size)
        assert stats.pulled() == size  # nothing fetched twice
    gets = front.seen("GET", "/kiln/cache/")
    assert [(r.range, r.status) for r in gets] == [
        (None, 0),
        ("bytes=700000-", 0),
        ("bytes=2700000-", 206),
    ]


def test_429_for_a_while_is_retried(
    gha_server: GhaServer, flaky_front: Callable[[GhaServer], FlakyFront], mode: str, scope: str
) -> None:
    front = flaky_front(gha_server)
    with make_client(front.url, token_for(scope), mode, chunk_size=100_000) as client:
        front.fail_next(2, 429, retry_after=1)
        started = time.monotonic()
        assert client.save("busy", b"x" * 350_000) is True
        assert time.monotonic() - started >= 1.8  # Retry-After was honoured, twice
        # 503s on the chunk uploads: each chunk is sent again, whole
        chunks = "/_apis/artifactcache/caches/" if mode == "v1" else "/kiln/cache/"
        front.fail_next(3, 503, match=chunks, method="PATCH" if mode == "v1" else "PUT")
        data = os.urandom(350_000)
        assert client.save("busy-2", data) is True
        entry = client.lookup("busy-2")
        assert entry is not None and client.read_bytes(entry, max_size=MiB) == data
    assert [r.status for r in front.requests[:2]] == [429, 429]
    assert len([r for r in front.requests if r.status == 503]) == 3


def test_throttling_past_the_timeout_gives_up(
    gha_server: GhaServer, flaky_front: Callable[[GhaServer], FlakyFront], mode: str, scope: str
) -> None:
    front = flaky_front(gha_server)
    front.fail_for(30, 429, retry_after=5)
    with make_client(front.url, token_for(scope), mode, timeout=2) as client:
        started = time.monotonic()
        with pytest.raises(CacheError, match="throttling"):
            client.lookup("anything")
        assert time.monotonic() - started < 2


def test_a_read_only_token_cannot_save(gha_server: GhaServer, mode: str, scope: str) -> None:
    with make_client(gha_server.url, token_for(scope), mode) as writer:
        assert writer.save("shared", b"from main")
    with make_client(gha_server.url, token_for((scope, READ)), mode) as reader:
        assert [s.permission for s in reader.scopes] == [READ]
        entry = reader.lookup("shared")
        assert entry is not None and reader.read_bytes(entry, max_size=100) == b"from main"
        with pytest.raises(CacheError) as caught:
            reader.save("pr-entry", b"nope")
        assert "read-only" in str(caught.value)
        with pytest.raises(CacheError, match="read-only"):
            reader.save_mutable("idx", b"nope")


def test_a_bad_token_is_refused_without_being_shown(gha_server: GhaServer, mode: str) -> None:
    forged = token_for("refs/heads/main", secret=GHA_SECRET[::-1])
    with make_client(gha_server.url, forged, mode) as client:
        with pytest.raises(CacheError) as caught:
            client.lookup("k")
        text = str(caught.value)
        assert "token" in text and "invalid" in text
        assert forged not in text and forged not in repr(caught.value.__cause__)
        assert forged.split(".")[2] not in text
    with pytest.raises(CacheError, match="malformed") as caught:
        make_client(gha_server.url, "s3cr3t-not-a-jwt", mode)
    assert "s3cr3t" not in str(caught.value) and caught.value.hint


def test_server_down_is_an_error_with_a_hint(
    gha_server: GhaServer, flaky_front: Callable[[GhaServer], FlakyFront], mode: str, scope: str
) -> None:
    front = flaky_front(gha_server)
    with make_client(front.url, token_for(scope), mode, timeout=30) as client:
        assert client.lookup("k") is None  # a kept-alive connection now exists
        front.stop()
        started = time.monotonic()
        with pytest.raises(CacheError) as caught:
            client.lookup("k")
        assert time.monotonic() - started < 5  # refused at once, not retried for 30 s
        with pytest.raises(CacheError) as caught_save:
            client.save("k", b"data")
    for exc in (caught.value, caught_save.value):
        assert f"127.0.0.1:{front.port}" in str(exc)
        assert exc.hint is not None and "kiln cache serve" in exc.hint
        assert isinstance(exc.__cause__, httpx.ConnectError)
