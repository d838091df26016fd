"""Error paths that a healthy registry cannot produce on demand: throttling, 5xx, drops.

These run against ``httpx.MockTransport``; everything else is tested against the real
registry in tests/integration/registry. The retry policy itself is tested once, in
tests/unit/http; these check that the registry client uses it and keeps its errors.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from tests.fixtures.fake_time import FakeTime

from kiln.content import BlobStore
from kiln.errors import AuthError, NotFoundError, RegistryError
from kiln.oci import OCI_LAYER_GZIP, OCI_MANIFEST, Descriptor, sha256_digest
from kiln.registry.client import RegistryClient
from kiln.registry.reference import Reference
from kiln.registry.transport import is_loopback
from kiln.registry.upload import BlobPush

HOST = "127.0.0.1:5999"
REF = Reference.parse(f"{HOST}/team/app:v1")
MANIFEST = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST}).encode()

Handler = Callable[[httpx.Request], httpx.Response]


def _client(handler: Handler, time: FakeTime, attempts: int = 4, **kw: object) -> RegistryClient:
    policy = time.policy(attempts=attempts, base_delay=0.1, max_delay=5)
    return RegistryClient(retry=policy, transport=httpx.MockTransport(handler), **kw)  # type: ignore[arg-type]


def _manifest_ok() -> httpx.Response:
    return httpx.Response(200, content=MANIFEST, headers={"Content-Type": OCI_MANIFEST})


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> httpx.Response:
    body = {"errors": [{"code": "X", "message": message}]}
    return httpx.Response(status, json=body, headers=headers)


def test_throttling_honours_retry_after() -> None:
    answers = iter([_error(429, "slow down", {"Retry-After": "2"}), _manifest_ok()])
    time = FakeTime()
    with _client(lambda _: next(answers), time) as client:
        manifest = client.get_manifest(REF)
    assert manifest.raw == MANIFEST
    assert time.sleeps == [2.0]


def test_server_errors_back_off_exponentially_then_succeed() -> None:
    statuses = iter([500, 502, 503])
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.method)
        status = next(statuses, None)
        return _manifest_ok() if status is None else _error(status, "busy")

    time = FakeTime()
    with _client(handler, time) as client:
        assert client.get_manifest(REF).media_type == OCI_MANIFEST
    assert calls == ["GET"] * 4
    assert len(time.sleeps) == 3
    assert time.sleeps[0] < time.sleeps[1] < time.sleeps[2] <= 0.4


def test_retries_are_bounded_and_report_the_registry_message() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return _error(503, "storage backend unavailable")

    time = FakeTime()
    with _client(handler, time, attempts=3) as client, pytest.raises(RegistryError) as info:
        client.get_manifest(REF)
    assert len(calls) == 3 and len(time.sleeps) == 2
    text = str(info.value)
    assert "503" in text and "storage backend unavailable" in text and str(REF) in text


def test_dropped_connections_are_retried() -> None:
    failures = iter([httpx.ReadError("connection reset"), httpx.RemoteProtocolError("eof")])

    def handler(request: httpx.Request) -> httpx.Response:
        exc = next(failures, None)
        if exc is not None:
            raise exc
        return _manifest_ok()

    time = FakeTime()
    with _client(handler, time) as client:
        assert client.get_manifest(REF).raw == MANIFEST
    assert len(time.sleeps) == 2


def test_timeouts_give_up_with_a_clear_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out")

    with _client(handler, FakeTime(), attempts=2) as client, pytest.raises(RegistryError) as info:
        client.get_manifest(REF)
    assert f"registry {HOST} timed out" in str(info.value)
    assert isinstance(info.value.__cause__, httpx.ReadTimeout)


def test_refused_connection_is_not_retried() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        raise httpx.ConnectError("[Errno 111] Connection refused")

    time = FakeTime()
    with _client(handler, time) as client, pytest.raises(RegistryError) as info:
        client.get_manifest(REF)
    assert len(calls) == 1 and time.sleeps == []
    assert f"cannot reach registry {HOST}" in str(info.value)
    assert "--insecure" in str(info.value)


def test_a_503_is_retried_then_the_manifest_pulled() -> None:
    answers = iter([_error(503, "busy")])
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        return next(answers, None) or _manifest_ok()

    time = FakeTime()
    with _client(handler, time) as client:
        assert client.get_manifest(REF).raw == MANIFEST
    assert calls == ["/v2/team/app/manifests/v1"] * 2 and len(time.sleeps) == 1


def test_the_default_policy_gives_up_after_five_tries() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return _error(502, "bad gateway")

    time = FakeTime()
    client = RegistryClient(retry=time.policy(), transport=httpx.MockTransport(handler))
    with client, pytest.raises(RegistryError, match="failed") as info:
        client.get_manifest(REF)
    assert len(calls) == 5 and len(time.sleeps) == 4
    assert "502" in str(info.value) and "bad gateway" in str(info.value)


def test_a_429_holds_back_that_registry_only() -> None:
    other = Reference.parse("127.0.0.1:6000/team/app:v1")
    seen: list[tuple[str, float]] = []
    throttled = iter([_error(429, "slow down", {"Retry-After": "4"})])

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.netloc.decode(), time.now))
        if request.url.port == 5999:
            return next(throttled, None) or _manifest_ok()
        return _manifest_ok()

    time = FakeTime(frozen=True)  # every request below is sent at the same instant
    with _client(handler, time) as client:
        client.get_manifest(REF)  # 429, waits 4 s, pulled
        client.get_manifest(REF)  # still held: waits again
        client.get_manifest(other)  # another registry: not held
    assert time.sleeps == [4.0, 4.0]
    assert [host for host, _ in seen] == [HOST, HOST, HOST, "127.0.0.1:6000"]


def test_a_huge_retry_after_waits_at_most_max_retry_after() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if len(calls) == 1:
            return _error(429, "pull rate limit", {"Retry-After": "21600"})
        return _manifest_ok()

    time = FakeTime()
    with _client(handler, time) as client:
        client.get_manifest(REF)  # six hours asked: 30 s waited (the default cap), then pulled
        time.now += 30.0
        client.get_manifest(REF)  # not held any longer: the registry is usable again
    assert time.sleeps == [30.0] and len(calls) == 3


def test_a_retry_after_past_the_deadline_gives_up_at_once() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return _error(429, "pull rate limit", {"Retry-After": "21600"})

    time = FakeTime()
    policy = time.policy(attempts=4, base_delay=0.1, max_delay=5, max_retry_after=None)
    with RegistryClient(retry=policy, transport=httpx.MockTransport(handler)) as client:
        with pytest.raises(RegistryError) as info:
            client.get_manifest(REF)
        assert "429" in str(info.value) and "pull rate limit" in str(info.value)
        with pytest.raises(RegistryError, match=f"registry {HOST} is throttling") as held:
            client.get_manifest(REF)  # the hold outlasts the budget: nothing is sent
    assert len(calls) == 1 and time.sleeps == []
    assert held.value.why and "21600s" in held.value.why


def test_statuses_map_to_error_families() -> None:
    answers = {
        "401": _error(401, "authentication required"),
        "403": _error(403, "denied: requested access to the resource is denied"),
        "404": _error(404, "manifest unknown"),
        "400": _error(400, "manifest invalid"),
    }

    def handler(request: httpx.Request) -> httpx.Response:
        return answers[request.url.path.rsplit("/", 1)[1]]

    with _client(handler, FakeTime()) as client:
        for tag, family in [("401", AuthError), ("403", AuthError), ("404", NotFoundError)]:
            with pytest.raises(family) as info:
                client.get_manifest(REF.with_tag(tag))
            assert str(REF.with_tag(tag)) in str(info.value)
            if family is AuthError:
                assert f"kiln login {HOST}" in str(info.value)
        with pytest.raises(RegistryError) as info:
            client.get_manifest(REF.with_tag("400"))
        assert type(info.value) is RegistryError
        assert "400" in str(info.value) and "manifest invalid" in str(info.value)


class _DroppingStream(httpx.SyncByteStream):
    def __init__(self, data: bytes, drop_after: int) -> None:
        self.data, self.drop_after = data, drop_after

    def __iter__(self) -> Iterator[bytes]:
        yield self.data[: self.drop_after]
        raise httpx.ReadError("connection dropped mid-body")


@pytest.mark.parametrize("honour_range", [True, False])
def test_blob_download_resumes_after_a_drop(tmp_path: Path, honour_range: bool) -> None:
    data = bytes(range(256)) * 40
    digest = sha256_digest(data)
    ranges: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        ranges.append(request.headers.get("range"))
        if len(ranges) == 1:
            return httpx.Response(200, stream=_DroppingStream(data, 3000))
        start = int(request.headers["range"].removeprefix("bytes=").rstrip("-"))
        if not honour_range:
            return httpx.Response(200, content=data)
        return httpx.Response(
            206,
            content=data[start:],
            headers={"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"},
        )

    store = BlobStore(tmp_path / "blobs")
    desc = Descriptor(OCI_LAYER_GZIP, digest, len(data))
    with _client(handler, FakeTime()) as client:
        assert client.fetch_blob(REF.repo_ref, desc, store) == len(data)
        assert client.stats.layers_pulled() == len(data)
    assert ranges == [None, "bytes=3000-"]
    assert store.read(digest) == data


def test_blob_download_that_keeps_dropping_without_progress_gives_up(tmp_path: Path) -> None:
    data = b"never arrives"
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.headers.get("range"))
        return httpx.Response(200, stream=_DroppingStream(data, 0))

    store = BlobStore(tmp_path / "blobs")
    desc = Descriptor(OCI_LAYER_GZIP, sha256_digest(data), len(data))
    time = FakeTime()
    with _client(handler, time, attempts=3) as client, pytest.raises(RegistryError) as info:
        client.fetch_blob(REF.repo_ref, desc, store)
    assert calls == [None, None, None] and len(time.sleeps) == 2
    assert f"connection to registry {HOST} failed" in str(info.value)
    assert not store.has(desc.digest)


def test_blob_with_wrong_content_is_not_stored(tmp_path: Path) -> None:
    data = b"what the registry should have sent"
    with _client(lambda _: httpx.Response(200, content=b"x" * len(data)), FakeTime()) as client:
        store = BlobStore(tmp_path / "blobs")
        desc = Descriptor(OCI_LAYER_GZIP, sha256_digest(data), len(data))
        with pytest.raises(RegistryError, match="does not match its digest"):
            client.fetch_blob(REF.repo_ref, desc, store)
    assert list(store.root.iterdir()) == []


def test_upload_restarts_the_session_after_a_failed_put() -> None:
    data = b"layer bytes" * 100
    desc = Descriptor(OCI_LAYER_GZIP, sha256_digest(data), len(data))
    log: list[str] = []
    puts = iter([_error(500, "disk hiccup")])

    def handler(request: httpx.Request) -> httpx.Response:
        log.append(request.method)
        if request.method == "HEAD":
            return httpx.Response(404)
        if request.method == "POST":
            n = log.count("POST")
            return httpx.Response(202, headers={"Location": f"/v2/team/app/blobs/uploads/u{n}"})
        assert request.method == "PUT"
        assert request.url.params["digest"] == desc.digest
        assert request.url.path.endswith(f"/u{log.count('POST')}")  # the new session
        assert request.read() == data
        failure = next(puts, None)
        return failure or httpx.Response(201, headers={"Docker-Content-Digest": desc.digest})

    time = FakeTime()
    with _client(handler, time) as client:
        assert client.push_blob(REF.repo_ref, desc, data) == BlobPush.UPLOADED
        assert client.stats.pushed() == 2 * len(data)  # both attempts crossed the wire
    assert log == ["HEAD", "POST", "PUT", "POST", "PUT"]
    assert len(time.sleeps) == 1


def test_a_slow_upload_keeps_its_restarts() -> None:
    """The deadline bounds each try of an upload, not the whole push of a big blob."""
    data = b"big layer"
    desc = Descriptor(OCI_LAYER_GZIP, sha256_digest(data), len(data))
    time = FakeTime()
    puts: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "HEAD":
            return httpx.Response(404)
        if request.method == "POST":
            return httpx.Response(202, headers={"Location": "/v2/team/app/blobs/uploads/u"})
        puts.append(time.now)
        if len(puts) == 1:
            time.now += 900.0  # sending took longer than a whole request deadline
            return _error(500, "disk hiccup")
        return httpx.Response(201, headers={"Docker-Content-Digest": desc.digest})

    policy = time.policy(attempts=4, base_delay=0.1, max_delay=5, deadline=600.0)
    with RegistryClient(retry=policy, transport=httpx.MockTransport(handler)) as client:
        assert client.push_blob(REF.repo_ref, desc, data) == BlobPush.UPLOADED
    assert len(puts) == 2 and len(time.sleeps) == 1


def test_upload_gives_up_after_bounded_restarts() -> None:
    data = b"abc"
    desc = Descriptor(OCI_LAYER_GZIP, sha256_digest(data), len(data))

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "HEAD":
            return httpx.Response(404)
        if request.method == "POST":
            return httpx.Response(202, headers={"Location": "/v2/team/app/blobs/uploads/u"})
        raise httpx.WriteError("broken pipe")

    time = FakeTime()
    with _client(handler, time, attempts=3) as client, pytest.raises(RegistryError) as info:
        client.push_blob(REF.repo_ref, desc, data)
    assert len(time.sleeps) == 2
    assert desc.digest in str(info.value) and "broken pipe" in str(info.value)


def test_loopback_hosts() -> None:
    for host in ("localhost:5000", "127.0.0.1", "127.3.4.5:80", "[::1]:5000", "::1"):
        assert is_loopback(host), host
    for host in ("ghcr.io", "10.0.0.1:5000", "[2001:db8::1]:443", "localhost.example"):
        assert not is_loopback(host), host


def test_insecure_hosts_fall_back_to_plain_http() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.url.scheme}://{request.url.netloc.decode()}{request.url.path}")
        if request.url.scheme == "https":
            raise httpx.ConnectError("[SSL: WRONG_VERSION_NUMBER] wrong version number")
        return _manifest_ok()

    ref = Reference.parse("registry.internal:5000/app:v1")
    with _client(handler, FakeTime(), insecure={"registry.internal:5000"}) as client:
        client.get_manifest(ref)
        client.get_manifest(ref)  # the probe is remembered
    assert seen == [
        "https://registry.internal:5000/v2/",
        "http://registry.internal:5000/v2/app/manifests/v1",
        "http://registry.internal:5000/v2/app/manifests/v1",
    ]


def test_other_hosts_use_verified_https() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return _manifest_ok()

    with _client(handler, FakeTime()) as client:
        client.get_manifest(Reference.parse("busybox"))
    assert seen == ["https://registry-1.docker.io/v2/library/busybox/manifests/latest"]
