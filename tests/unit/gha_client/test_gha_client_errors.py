"""Error paths of the GitHub Actions cache client, against in-process fakes (the happy
paths run against the real server in tests/integration/gha_client)."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from tests.fixtures.fake_time import FakeTime
from tests.fixtures.gha import token_for

from kiln.errors import CacheError
from kiln.gha.client import GO_VERSION, GhaClient, GhaEntry

TOKEN = token_for("refs/heads/main")
V1 = "/_apis/artifactcache/"
TWIRP = "/twirp/github.actions.results.api.v1.CacheService/"
Handler = Callable[[httpx.Request], httpx.Response]


class Fake:
    """Routes ``(METHOD, path)`` to handlers; records every request it was sent."""

    def __init__(self, routes: dict[tuple[str, str], Handler]) -> None:
        self.routes = routes
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = request.read()
        self.requests.append((request.method, request.url.path, dict(request.headers), body))
        handler = self.routes.get((request.method, request.url.path))
        if handler is None:
            return httpx.Response(404, json={"message": "no route"})
        return handler(request)

    def count(self, method: str, path: str) -> int:
        return sum(1 for m, p, _, _ in self.requests if (m, p) == (method, path))


def client(fake: Fake, *, api_version: int = 1, token: str = TOKEN, **kw: Any) -> GhaClient:
    return GhaClient(token=token, url="http://cache.test/", api_version=api_version,
                     transport=httpx.MockTransport(fake), **kw)  # fmt: skip


def seq(*handlers: Handler) -> Handler:
    """Answer with each handler in turn, then keep using the last one."""
    it = iter(handlers)
    current: list[Handler] = []

    def next_handler(request: httpx.Request) -> httpx.Response:
        h = next(it, None)
        if h is not None:
            current[:] = [h]
        return current[0](request)

    return next_handler


def status(code: int, **kw: Any) -> Handler:
    return lambda request: httpx.Response(code, **kw)


def drop(request: httpx.Request) -> httpx.Response:
    raise httpx.ReadError("connection reset by peer", request=request)


class CutStream(httpx.SyncByteStream):
    def __init__(self, data: bytes, request: httpx.Request) -> None:
        self.data, self.request = data, request

    def __iter__(self) -> Iterator[bytes]:
        yield self.data
        raise httpx.RemoteProtocolError("peer closed connection", request=self.request)


def test_401_is_a_token_error_and_the_token_is_scrubbed() -> None:
    echo = lambda r: httpx.Response(  # noqa: E731
        401, json={"message": f"bad token {r.headers['authorization']}"}
    )
    fake = Fake({("GET", V1 + "cache"): echo})
    with client(fake) as c, pytest.raises(CacheError) as caught:
        c.lookup("k")
    text = str(caught.value)
    assert "rejected the token" in text and "<token>" in text and TOKEN not in text
    assert caught.value.hint and "ACTIONS_RUNTIME_TOKEN" in caught.value.hint
    assert fake.count("GET", V1 + "cache") == 1  # not retried


def test_5xx_is_retried_until_the_budget_runs_out() -> None:
    fake = Fake({("GET", V1 + "cache"): status(503, json={"message": "overloaded"})})
    started = time.monotonic()
    with client(fake, timeout=1.0) as c, pytest.raises(CacheError, match="kept failing") as caught:
        c.lookup("k")
    assert time.monotonic() - started < 3
    assert "overloaded" in str(caught.value)
    assert fake.count("GET", V1 + "cache") >= 3


def test_a_429_is_waited_out_and_holds_back_the_next_request() -> None:
    throttled = status(429, headers={"Retry-After": "4"}, json={"message": "slow down"})
    fake = Fake({("GET", V1 + "cache"): seq(throttled, status(204))})
    time = FakeTime(frozen=True)  # both lookups start at the same instant
    with client(fake, retry=time.policy(deadline=60.0, attempts=None)) as c:
        assert c.lookup("first") is None  # 429, waited 4 s as told, then a miss
        assert time.sleeps == [4.0]
        assert c.lookup("second") is None  # not throttled itself, but held back too
        assert time.sleeps == [4.0, 4.0]
        time.now += 4.0
        assert c.lookup("third") is None
    assert time.sleeps == [4.0, 4.0]
    assert fake.count("GET", V1 + "cache") == 4  # the second lookup was sent once


def test_throttling_past_the_budget_gives_up_and_holds_back_the_others() -> None:
    throttled = status(429, headers={"Retry-After": "30"}, json={"message": "slow down"})
    fake = Fake({("GET", V1 + "cache"): throttled})
    time = FakeTime()
    with client(fake, retry=time.policy(deadline=10.0, attempts=None)) as c:
        with pytest.raises(CacheError, match="kept throttling requests"):
            c.lookup("k")
        with pytest.raises(CacheError, match="is throttling requests") as caught:
            c.save("k", b"data")  # not even the reservation is sent
    assert caught.value.why and "30s" in caught.value.why
    assert len(fake.requests) == 1 and time.sleeps == []


def test_the_timeout_is_the_budget_of_every_request() -> None:
    fake = Fake({("GET", V1 + "cache"): status(502)})
    time = FakeTime()
    with client(fake, timeout=60.0) as c:
        # the default policy (built from timeout), on a fake clock
        policy = c._requester.policy
        assert (policy.deadline, policy.attempts) == (60.0, None)
        c._requester.sender.policy = dataclasses.replace(policy, sleep=time.sleep,
                                                          clock=time.clock)  # fmt: skip
        with pytest.raises(CacheError, match="kept failing"):
            c.lookup("k")
    assert 50.0 < sum(time.sleeps) <= 60.0  # no attempt cap: the 60 s budget ends it
    assert fake.count("GET", V1 + "cache") == len(time.sleeps) + 1 > 10


def test_dropped_connections_are_retried_and_refused_ones_are_not() -> None:
    hit = {"cacheKey": "k", "cacheVersion": GO_VERSION, "archiveLocation": "http://cache.test/b"}
    fake = Fake({("GET", V1 + "cache"): seq(drop, drop, status(200, json=hit))})
    with client(fake) as c:
        entry = c.lookup("k")
    assert entry == GhaEntry("k", GO_VERSION, "http://cache.test/b")
    assert fake.count("GET", V1 + "cache") == 3

    attempts = []

    def refuse(request: httpx.Request) -> httpx.Response:
        attempts.append(request)
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    with client(Fake({("GET", V1 + "cache"): refuse})) as c, pytest.raises(CacheError) as caught:
        c.lookup("k")
    assert len(attempts) == 1
    assert "cannot reach the GitHub Actions cache at http://cache.test/" in str(caught.value)
    assert caught.value.hint and "kiln cache serve" in caught.value.hint


def test_a_failed_chunk_is_sent_again_whole() -> None:
    data = bytes(range(256)) * 1000  # 256 000 bytes: 3 chunks of 100 000
    fake = Fake({
        ("POST", V1 + "caches"): status(201, json={"cacheId": 7}),
        ("PATCH", V1 + "caches/7"): seq(status(502), status(500), status(204)),
        ("POST", V1 + "caches/7"): status(204),
    })  # fmt: skip
    with client(fake, chunk_size=100_000, parallel=1) as c:
        assert c.save("k", data) is True
    patches = [(h["content-range"], b) for m, p, h, b in fake.requests if m == "PATCH"]
    assert [r for r, _ in patches] == [
        "bytes 0-99999/*", "bytes 0-99999/*", "bytes 0-99999/*",
        "bytes 100000-199999/*", "bytes 200000-255999/*",
    ]  # fmt: skip
    assert all(b == data[:100_000] for _, b in patches[:3])
    assert b"".join(b for _, b in patches[2:]) == data
    reserve = json.loads(fake.requests[0][3])
    assert reserve == {"key": "k", "version": GO_VERSION, "cacheSize": len(data)}
    assert json.loads(fake.requests[-1][3]) == {"size": len(data)}


def test_v1_already_exists_in_a_400_is_false() -> None:
    body = {"typeKey": "ArtifactCacheItemAlreadyExistsException", "message": "Cache exists"}
    fake = Fake({("POST", V1 + "caches"): status(400, json=body)})
    with client(fake) as c:
        assert c.save("k", b"x") is False


def test_v1_commit_whose_answer_was_lost_is_confirmed_by_a_lookup() -> None:
    hit = {"cacheKey": "k", "cacheVersion": GO_VERSION, "archiveLocation": "http://cache.test/b"}
    fake = Fake({
        ("POST", V1 + "caches"): status(201, json={"cacheId": 9}),
        ("PATCH", V1 + "caches/9"): status(204),
        ("POST", V1 + "caches/9"): seq(drop, status(404, json={"message": "no upload"})),
        ("GET", V1 + "cache"): status(200, json=hit),
    })  # fmt: skip
    with client(fake) as c:
        assert c.save("k", b"abc") is True


def test_v2_errors() -> None:
    fake = Fake({(("POST", TWIRP + "CreateCacheEntry")): status(200, json={"ok": False})})
    with client(fake, api_version=2) as c, pytest.raises(CacheError, match="refused to create"):
        c.save("k", b"x")
    fake = Fake({})  # a server without the v2 API
    with client(fake, api_version=2) as c, pytest.raises(CacheError) as caught:
        c.lookup("k")
    assert "does not speak the v2" in str(caught.value) and caught.value.hint
    assert "version=1" in caught.value.hint
    fake = Fake({})
    with client(fake) as c, pytest.raises(CacheError) as caught:
        c.lookup("k")
    assert "no v1 cache API" in str(caught.value)
    fake = Fake({("POST", TWIRP + "CreateCacheEntry"): status(
        409, json={"code": "already_exists", "msg": "exists"})})  # fmt: skip
    with client(fake, api_version=2) as c:
        assert c.save("k", b"x") is False
    fake = Fake({("POST", TWIRP + "GetCacheEntryDownloadURL"): status(200, text="<html>")})
    with client(fake, api_version=2) as c, pytest.raises(CacheError, match="not JSON"):
        c.lookup("k")


def test_v2_signed_url_upload_errors_name_no_signature() -> None:
    create = {"ok": True, "signed_upload_url": "http://blob.test/kiln/cache/b?sp=w&sig=SECRET"}
    fake = Fake({
        ("POST", TWIRP + "CreateCacheEntry"): status(200, json=create),
        ("PUT", "/kiln/cache/b"): status(403, text="<Error><Message>expired</Message></Error>"),
    })  # fmt: skip
    with client(fake, api_version=2) as c, pytest.raises(CacheError) as caught:
        c.save("k", b"x")
    text = str(caught.value)
    assert "signed URL was refused" in text and "expired" in text and "SECRET" not in text
    put = next(h for m, _, h, _ in fake.requests if m == "PUT")
    assert "authorization" not in put  # the token never goes to the blob store
    assert put["x-ms-blob-type"] == "BlockBlob"


def entry(url: str = "http://blob.test/kiln/cache/b?sig=1") -> GhaEntry:
    return GhaEntry("k", GO_VERSION, url)


def test_a_resume_that_ignores_the_range_is_an_error() -> None:
    def blob(request: httpx.Request) -> httpx.Response:
        if "range" not in request.headers:
            return httpx.Response(200, headers={"Content-Length": "10"},
                                  stream=CutStream(b"01234", request))  # fmt: skip
        return httpx.Response(200, content=b"0123456789")

    fake = Fake({("GET", "/kiln/cache/b"): blob})
    with client(fake) as c, c.open(entry()) as chunks, pytest.raises(CacheError, match="resume"):
        b"".join(chunks)


def test_a_resume_at_the_wrong_offset_is_an_error() -> None:
    def blob(request: httpx.Request) -> httpx.Response:
        if "range" not in request.headers:
            return httpx.Response(200, headers={"Content-Length": "10"},
                                  stream=CutStream(b"01234", request))  # fmt: skip
        assert request.headers["range"] == "bytes=5-"
        return httpx.Response(206, headers={"Content-Range": "bytes 0-9/10"}, content=b"0" * 10)

    fake = Fake({("GET", "/kiln/cache/b"): blob})
    with client(fake) as c, c.open(entry()) as chunks, pytest.raises(CacheError, match="place"):
        b"".join(chunks)


def test_a_download_that_keeps_breaking_off_without_progress_gives_up() -> None:
    def blob(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"Content-Length": "10"}, stream=CutStream(b"", request))

    fake = Fake({("GET", "/kiln/cache/b"): blob})
    with (
        client(fake, timeout=0.5) as c,
        c.open(entry()) as chunks,
        pytest.raises(CacheError, match="kept breaking off"),
    ):
        b"".join(chunks)


def test_an_expired_download_url_is_looked_up_again() -> None:
    hit = {"cacheKey": "k", "cacheVersion": GO_VERSION,
           "archiveLocation": "http://blob.test/kiln/cache/fresh?sig=2"}  # fmt: skip
    fake = Fake({
        ("GET", "/kiln/cache/b"): status(403, text="<Error><Message>expired</Message></Error>"),
        ("GET", V1 + "cache"): status(200, json=hit),
        ("GET", "/kiln/cache/fresh"): status(200, content=b"payload"),
    })  # fmt: skip
    with client(fake) as c:
        assert c.read_bytes(entry(), max_size=100) == b"payload"
    gets = [(m, p) for m, p, _, _ in fake.requests]
    assert gets == [("GET", "/kiln/cache/b"), ("GET", V1 + "cache"), ("GET", "/kiln/cache/fresh")]
    assert all("authorization" not in h for m, p, h, _ in fake.requests if "kiln/cache" in p)
