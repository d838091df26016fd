"""Crash safety of ``kiln cache serve``: ``kill -9`` at any moment loses no committed entry
and never exposes a partial one. The server runs as a subprocess; after each kill it is
restarted on the same root and checked from the outside."""

from __future__ import annotations

import hashlib
import os
import random
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.fixtures.gha import GhaServer, NpmHarness, ServerFactory, Wire

VERSION = "d" * 64


def content(key: str, size: int) -> bytes:
    """Deterministic bytes for *key*, so any visible entry can be checked."""
    seed = hashlib.sha256(key.encode()).digest()
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(seed + counter.to_bytes(8, "big")).digest()
        counter += 1
    return bytes(out[:size])


def wire(server: GhaServer, client: httpx.Client) -> Wire:
    return Wire(client, server.token("refs/heads/main"), server.url)


def fetch(server: GhaServer, client: httpx.Client, key: str) -> bytes | None:
    resp = wire(server, client).v1_lookup([key], VERSION)
    if resp.status_code == 204:
        return None
    assert resp.status_code == 200, resp.text
    got = client.get(resp.json()["archiveLocation"])
    assert got.status_code == 200
    return got.content


def slow_body(total: int, stop: threading.Event) -> Iterator[bytes]:
    sent = 0
    while sent < total and not stop.is_set():
        yield b"z" * 65536
        sent += 65536
        time.sleep(0.01)


def test_kill_during_uploads_exposes_nothing(gha_server_factory: ServerFactory) -> None:
    server = gha_server_factory("--upload-timeout", "2s", "--eviction-interval", "1s")
    client = httpx.Client(timeout=30, trust_env=False)
    w = wire(server, client)
    committed = content("committed", 300_000)
    w.v1_save("committed", VERSION, committed, chunk=100_000)
    # a v1 chunk and a v2 Put Blob are mid-body when the server dies
    cache_id = w.v1_reserve("v1-partial", VERSION, 10 << 20).json()["cacheId"]
    w.v1_chunk(cache_id, 0, b"a" * 1000)
    upload_url = w.v2_create("v2-partial", VERSION).json()["signed_upload_url"]
    stop = threading.Event()
    errors: list[BaseException] = []

    def upload(method: str, url: str, headers: dict[str, str]) -> None:
        try:
            with httpx.Client(timeout=30, trust_env=False) as c:
                c.request(method, url, content=slow_body(10 << 20, stop), headers=headers)
        except httpx.HTTPError as exc:
            errors.append(exc)

    v1_headers = {**w.headers, "Content-Range": f"bytes 1000-{(10 << 20) - 1}/*"}
    threads = [
        threading.Thread(
            target=upload,
            args=("PATCH", f"{server.url}_apis/artifactcache/caches/{cache_id}", v1_headers),
        ),
        threading.Thread(target=upload, args=("PUT", upload_url, {"x-ms-blob-type": "BlockBlob"})),
    ]
    for t in threads:
        t.start()
    time.sleep(0.5)
    server.kill()
    stop.set()
    for t in threads:
        t.join(timeout=30)
    assert len(errors) == 2  # both uploads were cut off by the kill

    server.start()
    assert fetch(server, client, "committed") == committed
    assert fetch(server, client, "v1-partial") is None
    assert w.v2_lookup("v2-partial", VERSION).json()["ok"] is False
    # the interrupted upload cannot be committed with what arrived
    assert w.v1_commit(cache_id, 10 << 20).status_code == 400
    # abandoned reservations are cleaned up, and their keys can be saved again
    deadline = time.monotonic() + 20
    while w.v1_reserve("v1-partial", VERSION).status_code != 201:
        assert time.monotonic() < deadline, server.log_text()
        time.sleep(0.25)
    assert "abandoned upload" in server.log_text()
    client.close()


def test_kill_right_after_commits_loses_nothing(gha_server_factory: ServerFactory) -> None:
    server = gha_server_factory()
    client = httpx.Client(timeout=30, trust_env=False)
    w = wire(server, client)
    saved = {}
    for i in range(5):
        key = f"entry-{i}"
        saved[key] = content(key, 50_000 + i)
        if i % 2:
            w.v1_save(key, VERSION, saved[key], chunk=20_000)
        else:
            w.v2_save(key, VERSION, saved[key])
    server.kill()  # immediately after the last commit was acknowledged
    server.start()
    for key, data in saved.items():
        assert fetch(server, client, key) == data
    client.close()


@pytest.mark.parametrize("round_", range(3))
def test_kill_at_a_random_moment(gha_server_factory: ServerFactory, round_: int) -> None:
    """Saves run in a loop while the server is killed at a random moment; afterwards every
    acknowledged entry is present and intact, and every visible entry is complete."""
    server = gha_server_factory()
    client = httpx.Client(timeout=30, trust_env=False)
    acknowledged: list[str] = []
    attempted: list[str] = []
    stop = threading.Event()

    def saver() -> None:
        w = wire(server, httpx.Client(timeout=30, trust_env=False))
        i = 0
        while not stop.is_set():
            key = f"r{round_}-{i}"
            attempted.append(key)
            data = content(key, 200_000 + 997 * i)
            try:
                if i % 2:
                    w.v1_save(key, VERSION, data, chunk=64_000)
                else:
                    w.v2_save(key, VERSION, data)
            except (httpx.HTTPError, AssertionError):
                return
            acknowledged.append(key)
            i += 1

    thread = threading.Thread(target=saver)
    thread.start()
    time.sleep(random.uniform(0.3, 1.5))
    server.kill()
    stop.set()
    thread.join(timeout=30)
    assert acknowledged, "no save finished before the kill"

    server.start()
    for key in attempted:
        got = fetch(server, client, key)
        if key in acknowledged:
            assert got is not None, f"{key} was committed and is lost"
        if got is not None:
            expected = content(key, 200_000 + 997 * int(key.split("-")[1]))
            assert got == expected, f"{key} is visible but not intact"
    client.close()


def random_tree(root: Path, mib: int) -> bytes:
    """A directory with *mib* MiB of incompressible data; returns that data."""
    root.mkdir(parents=True)
    data = os.urandom(mib << 20)
    (root / "blob.bin").write_bytes(data)
    return data


@pytest.mark.parametrize("mode", ["v1", "v2"])
def test_a_save_after_a_crash_mid_upload_takes_over_the_key(
    gha_server_factory: ServerFactory, npm_harness: NpmHarness, tmp_path: Path, mode: str
) -> None:
    """A job dies with the server (``kill -9`` of both) while its ``@actions/cache`` save is
    uploading. After the restart its reservation is still there; the retried job's save
    succeeds once that upload has been idle for ``--reservation-timeout``, instead of
    being skipped ("another job may be creating this cache") for ``--upload-timeout``."""
    timeout = 3.0
    server = gha_server_factory("--reservation-timeout", f"{timeout:g}s")
    token = server.token("refs/heads/main")
    key = f"{mode}-crash-{secrets.token_hex(4)}"
    random_tree(tmp_path / "first" / "data", 64)
    first = npm_harness.start(
        "save", tmp_path / "first", "data", key,
        env=npm_harness.env(server, token, mode, tmp_path / "first"),
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while f"(key {key})" not in server.log_text():  # "reserved entry N in scope S (key K)"
        assert first.poll() is None, npm_harness.finish(first)["log"]
        assert time.monotonic() < deadline, server.log_text()
        time.sleep(0.002)
    server.kill()  # 64 MiB are far from uploaded and committed yet
    killed = time.monotonic()
    first.kill()
    first.communicate(timeout=30)

    server.start()
    admin = {"Authorization": f"Bearer {server.token(admin=True)}"}
    listed = httpx.get(
        f"{server.url}_kiln/v1/entries", params={"key": key, "pending": "1"}, headers=admin
    ).json()["entries"]
    assert [e["state"] for e in listed] == ["pending"]  # the dead upload still holds the key
    (dead,) = listed

    saved = random_tree(tmp_path / "second" / "data", 1)
    time.sleep(max(0.0, killed + timeout + 0.5 - time.monotonic()))
    retry = npm_harness.run(
        "save", tmp_path / "second", "data", key,
        env=npm_harness.env(server, token, mode, tmp_path / "second"),
    )  # fmt: skip
    assert isinstance(retry["result"], int) and retry["result"] > 0, retry["log"]
    assert "another job may be creating this cache" not in retry["log"]
    assert f"taking over upload {dead['id']}" in server.log_text()

    restored = npm_harness.run(
        "restore", tmp_path / "third", "data", key,
        env=npm_harness.env(server, token, mode, tmp_path / "third"),
    )  # fmt: skip
    assert restored["result"] == key, restored["log"]
    assert (tmp_path / "third" / "data" / "blob.bin").read_bytes() == saved
