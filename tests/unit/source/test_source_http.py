"""ADD <url> against a real loopback HTTP server: revalidation, retries through the shared
policy, and a store that a crash at any point leaves consistent."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from tests.fixtures.fake_time import FakeTime

from kiln.errors import KilnError
from kiln.source import http as source_http
from kiln.source.http import UrlFetcher, downloaded
from kiln.state import KilnRoot

LAST_MODIFIED = "Wed, 21 Oct 2015 07:28:00 GMT"


class Files:
    """What the server serves: ``path -> (etag, body)``, plus failures to play first."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[str, bytes]] = {}
        self.failures: list[str] = []  # "drop", "cut" (mid-body) or a status like "503"
        self.requests: list[tuple[str, str | None]] = []  # (path, If-None-Match)
        self.lock = threading.Lock()

    def put(self, path: str, body: bytes) -> None:
        self.files[path] = ('"' + hashlib.sha256(body).hexdigest()[:16] + '"', body)


class Handler(BaseHTTPRequestHandler):
    server: Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        files = self.server.files
        with files.lock:
            files.requests.append((self.path, self.headers.get("If-None-Match")))
            failure = files.failures.pop(0) if files.failures else None
        if self.path.startswith("/moved/"):
            self.send_response(302)
            self.send_header("Location", self.path.removeprefix("/moved"))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        entry = files.files.get(self.path)
        if failure == "drop" or (failure == "cut" and entry is None):
            self.close_connection = True  # no answer at all
            return
        if failure is not None and failure.isdigit():
            self._answer(int(failure), b"try later")
            return
        if entry is None:
            self._answer(404, b"no such file")
            return
        etag, body = entry
        if self.headers.get("If-None-Match") == etag:
            self._answer(304, b"", etag)
            return
        if failure == "cut":  # announce the whole body, send a piece, hang up
            self._answer(200, body[: len(body) // 2], etag, length=len(body))
            self.close_connection = True
            return
        self._answer(200, body, etag)

    def _answer(self, status: int, body: bytes, etag: str = "", length: int = -1) -> None:
        self.send_response(status)
        if etag:
            self.send_header("ETag", etag)
        self.send_header("Last-Modified", LAST_MODIFIED)
        if status != 304:
            self.send_header("Content-Length", str(len(body) if length < 0 else length))
        self.end_headers()
        with suppress(OSError):
            self.wfile.write(body)


class Server(ThreadingHTTPServer):
    files: Files


@pytest.fixture
def server() -> Iterator[tuple[str, Files]]:
    httpd = Server(("127.0.0.1", 0), Handler)
    httpd.files = Files()
    thread = threading.Thread(target=httpd.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", httpd.files
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


class Crash(BaseException):
    """kiln being killed: nothing catches it, nothing cleans up after it."""


def fetcher(root: KilnRoot, time: FakeTime, **policy: object) -> UrlFetcher:
    return UrlFetcher(root, retry=time.policy(**policy))


def stored(root: KilnRoot, url: str, digest: str) -> tuple[bytes, str]:
    download = downloaded(root, url, digest)
    return download.path.read_bytes(), download.filename


def test_a_download_is_kept_and_revalidated(server: tuple[str, Files], tmp_path: Path) -> None:
    base, files = server
    files.put("/files/tool.sh", b"#!/bin/sh\necho v1\n")
    root, time = KilnRoot(tmp_path), FakeTime()
    url = base + "/moved/files/tool.sh"
    first = fetcher(root, time).fetch(url, None)
    assert stored(root, url, first) == (b"#!/bin/sh\necho v1\n", "tool.sh")  # after redirect
    assert downloaded(root, url, first).mtime == 1445412480.0
    again = fetcher(root, time).fetch(url, None)
    assert again == first
    etag = files.files["/files/tool.sh"][0]
    assert [r for r in files.requests if r[0] == "/files/tool.sh"] == [
        ("/files/tool.sh", None),
        ("/files/tool.sh", etag),  # answered 304
    ]
    files.put("/files/tool.sh", b"#!/bin/sh\necho v2\n")
    changed = fetcher(root, time).fetch(url, None)
    assert changed != first and stored(root, url, changed)[0] == b"#!/bin/sh\necho v2\n"
    with pytest.raises(KilnError, match="changed during the build"):
        downloaded(root, url, first)
    assert time.sleeps == []


def test_a_503_and_dropped_connections_are_retried(
    server: tuple[str, Files], tmp_path: Path
) -> None:
    base, files = server
    files.put("/a.txt", b"x" * 100_000)
    files.failures = ["503", "drop", "cut", "502"]
    root, time = KilnRoot(tmp_path), FakeTime()
    digest = fetcher(root, time).fetch(base + "/a.txt", None)
    assert stored(root, base + "/a.txt", digest)[0] == b"x" * 100_000
    assert len(files.requests) == 5 and len(time.sleeps) == 4
    assert time.sleeps == sorted(time.sleeps)  # backing off
    left = {p.name for p in root.sources.glob("*/*")}
    assert left == {".lock", "meta.json", hashlib.sha256(b"x" * 100_000).hexdigest()}
    # the piece that was cut off left nothing behind


def test_giving_up_names_the_failure(server: tuple[str, Files], tmp_path: Path) -> None:
    base, files = server
    files.failures = ["503"] * 3
    time = FakeTime()
    with pytest.raises(KilnError, match=r"cannot download .*/gone: HTTP 503"):
        fetcher(KilnRoot(tmp_path), time, attempts=3).fetch(base + "/gone", None)
    assert len(files.requests) == 3 and len(time.sleeps) == 2
    with pytest.raises(KilnError, match=r"cannot download .*/gone: HTTP 404"):
        fetcher(KilnRoot(tmp_path), time).fetch(base + "/gone", None)
    assert len(files.requests) == 4  # a 404 is not retried


def test_a_checksum_mismatch_keeps_the_previous_download(
    server: tuple[str, Files], tmp_path: Path
) -> None:
    base, files = server
    files.put("/f", b"old")
    root, time, url = KilnRoot(tmp_path), FakeTime(), base + "/f"
    old = fetcher(root, time).fetch(url, None)
    files.put("/f", b"tampered")
    with pytest.raises(KilnError, match="checksum mismatch"):
        fetcher(root, time).fetch(url, "sha256:" + hashlib.sha256(b"new").hexdigest())
    assert stored(root, url, old) == (b"old", "f")
    good = "sha256:" + hashlib.sha256(b"tampered").hexdigest()
    assert stored(root, url, fetcher(root, time).fetch(url, good))[0] == b"tampered"


@pytest.mark.parametrize("crash_at", ["content", "meta", "cleanup"])
def test_a_crash_at_any_point_leaves_a_consistent_pair(
    server: tuple[str, Files], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crash_at: str
) -> None:
    base, files = server
    root, time, url = KilnRoot(tmp_path), FakeTime(), base + "/moved/app.tar"
    files.put("/app.tar", b"version one")
    old = fetcher(root, time).fetch(url, None)
    files.put("/app.tar", b"version two, longer")

    def crash(*args: object, **kw: object) -> None:
        raise Crash

    with monkeypatch.context() as patch:
        if crash_at == "content":  # killed with the body in a temporary file, not renamed
            (source_http._dir(root, url) / "..download.killed").write_bytes(b"version t")
            patch.setattr(source_http, "_check", crash)
        elif crash_at == "meta":  # the content is in place, meta.json not yet replaced
            patch.setattr(source_http, "write_atomic", crash)
        else:  # meta.json replaced, the old content not yet removed
            patch.setattr(source_http, "_remove_all_but", crash)
        with pytest.raises(Crash):
            fetcher(root, time).fetch(url, None)

    # the next build sees one complete pair: the old one, or the new one
    meta = source_http._read_meta(source_http._dir(root, url))
    assert meta is not None
    if crash_at == "cleanup":
        with pytest.raises(KilnError, match="changed during the build"):
            downloaded(root, url, old)
        new = source_http._source_digest(meta)
        assert stored(root, url, new) == (b"version two, longer", "app.tar")
    else:
        assert stored(root, url, old) == (b"version one", "app.tar")
    # and the next fetch brings it up to date and clears what the crash left
    new = fetcher(root, time).fetch(url, None)
    assert stored(root, url, new) == (b"version two, longer", "app.tar")
    left = {p.name for p in source_http._dir(root, url).iterdir()}
    assert left == {".lock", "meta.json", hashlib.sha256(b"version two, longer").hexdigest()}


def test_an_older_layout_is_downloaded_again(server: tuple[str, Files], tmp_path: Path) -> None:
    base, files = server
    files.put("/f", b"data")
    root, url = KilnRoot(tmp_path), base + "/f"
    old_dir = source_http._dir(root, url)
    old_dir.mkdir(parents=True)
    (old_dir / "content").write_bytes(b"stale")
    digest = "sha256:" + hashlib.sha256(b"data").hexdigest()
    etag = files.files["/f"][0]
    meta = {"digest": digest, "etag": etag, "mtime": None, "filename": "f"}
    (old_dir / "meta.json").write_text(json.dumps(meta))
    new = fetcher(root, FakeTime()).fetch(url, None)
    assert files.requests == [("/f", None)]  # no content named by digest: no revalidation
    assert stored(root, url, new) == (b"data", "f")
    assert not (old_dir / "content").exists()


def test_errors_never_show_credentials_or_a_signed_query(
    server: tuple[str, Files], tmp_path: Path
) -> None:
    base, _ = server
    url = base.replace("http://", "http://user:hunter2@") + "/gone?sig=SECRETSIG&se=1"
    with pytest.raises(KilnError, match=r"cannot download .*/gone: HTTP 404") as info:
        fetcher(KilnRoot(tmp_path), FakeTime()).fetch(url, None)
    assert "hunter2" not in str(info.value) and "SECRETSIG" not in str(info.value)
