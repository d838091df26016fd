"""Pieces of the GitHub Actions cache client that need no server: the version, token
claims, URL building, block ids, sources (Retry-After and the retry policy are tested in
tests/unit/http)."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import pytest
from tests.fixtures.gha import token_for

from kiln.errors import CacheError
from kiln.gha.client import GO_VERSION, GhaClient, GhaEntry, Scope
from kiln.gha.client.azure import block_ids, block_list_xml, with_query
from kiln.gha.client.client import mutable_index
from kiln.gha.client.source import Source, run_parallel
from kiln.gha.client.token import parse_scopes
from kiln.gha.client.v1 import api_base as v1_base
from kiln.gha.client.v2 import api_base as v2_base
from kiln.http.sender import redact


def jwt(payload: object) -> str:
    def part(value: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part(payload)}.c2lnbmF0dXJl"


def test_go_version_is_the_one_buildkit_sends() -> None:
    # as captured from BuildKit's type=gha traffic (go-actions-cache 0.0.x)
    assert GO_VERSION == "693bb7016429d80366022f036f84856888c9f13e00145f5f6f4dce303a38d6f2"


def test_scopes_come_from_the_ac_claim_in_order() -> None:
    token = token_for("refs/heads/feature", ("refs/heads/main", 1))
    assert parse_scopes(token) == [Scope("refs/heads/feature", 3), Scope("refs/heads/main", 1)]
    assert Scope("a", 1).readable and not Scope("a", 1).writable
    # an `ac` that is a list (not a JSON string) is accepted too
    listed = jwt({"ac": [{"Scope": "s", "Permission": 1}], "exp": time.time() + 60})
    assert parse_scopes(listed) == [Scope("s", 1)]
    # only write-only scopes (nektos/act's token): they may read what they write
    act = jwt({"ac": json.dumps([{"Scope": "", "Permission": 2}]), "exp": time.time() + 60})
    assert parse_scopes(act) == [Scope("", 3)]
    mixed = token_for("refs/heads/pr", ("refs/heads/main", 2))  # a readable one: kept as is
    assert parse_scopes(mixed)[1] == Scope("refs/heads/main", 2)
    # the client exposes them without asking the server anything
    client = GhaClient(token=token, url="http://127.0.0.1:9/")
    assert client.scopes[0].name == "refs/heads/feature"
    client.close()


@pytest.mark.parametrize(
    ("token", "why"),
    [
        ("", "no GitHub Actions cache token"),
        ("abc.def", "not a JWT"),
        ("x.!!!!.y", "not base64url-encoded JSON"),
        (jwt(["a"]), "not a JSON object"),
        (jwt({"exp": 2e9}), "no `ac`"),
        (jwt({"ac": "{nope"}), "not JSON"),
        (jwt({"ac": json.dumps({"Scope": "x"})}), "not a list"),
        (jwt({"ac": json.dumps([{"Scope": "x", "Permission": "3"}])}), "Permission"),
        (jwt({"ac": "[]", "exp": 1000}), "expired at 1970-01-01"),
    ],
)
def test_bad_tokens_are_cache_errors_with_a_hint(token: str, why: str) -> None:
    with pytest.raises(CacheError) as caught:
        GhaClient(token=token, url="http://127.0.0.1:9/")
    assert why in str(caught.value)
    assert caught.value.hint and "kiln cache token" in caught.value.hint
    if token:
        assert token not in str(caught.value)


def test_urls() -> None:
    # v1 keeps the base path (GitHub's carries a tenant), with or without a slash
    assert v1_base("https://acghub.example/Tenant123/") == (
        "https://acghub.example/Tenant123/_apis/artifactcache/"
    )
    assert v1_base("http://127.0.0.1:8585") == "http://127.0.0.1:8585/_apis/artifactcache/"
    # v2 drops any path, as the npm client does
    assert v2_base("https://results.example:8443/some/path/") == (
        "https://results.example:8443/twirp/github.actions.results.api.v1.CacheService/"
    )
    assert redact("https://u:p@h.example:9/kiln/cache/b?sp=r&sig=SECRET") == (
        "https://h.example:9/kiln/cache/b"
    )
    assert with_query("http://h/b?sig=1", comp="block", blockid="a+b/c==") == (
        "http://h/b?sig=1&comp=block&blockid=a%2Bb%2Fc%3D%3D"
    )


@pytest.mark.parametrize(
    ("kw", "why"),
    [
        ({"url": None}, "no URL for the v1"),
        ({"url": "ftp://h/"}, "http:// or https://"),
        ({"url": "http://h/", "api_version": 3}, "unknown GitHub Actions cache API version"),
        ({"url": "http://h/", "api_version": 2}, None),  # v2 falls back to url
        ({"url": None, "url_v2": None, "api_version": 2}, "ACTIONS_RESULTS_URL"),
    ],
)
def test_client_needs_a_usable_url(kw: dict[str, object], why: str | None) -> None:
    token = token_for("refs/heads/main")
    if why is None:
        GhaClient(token=token, **kw).close()  # type: ignore[arg-type]
        return
    with pytest.raises(CacheError, match=why) as caught:
        GhaClient(token=token, **kw)  # type: ignore[arg-type]
    assert caught.value.hint


def test_block_ids_are_64_bytes_distinct_and_ordered() -> None:
    ids = block_ids(12)
    raw = [base64.b64decode(i) for i in ids]
    assert all(len(r) == 64 for r in raw) and len(set(ids)) == 12
    assert raw == sorted(raw)
    assert block_ids(1)[0][:40] != ids[0][:40]  # unique per upload
    xml = block_list_xml(ids[:2]).decode()
    assert xml.endswith(
        f"<BlockList><Latest>{ids[0]}</Latest><Latest>{ids[1]}</Latest></BlockList>"
    )


def test_mutable_index() -> None:
    assert mutable_index("index-a", "index-a#12") == 12
    for bad in ("index-a#", "index-a#x", "index-b#1"):
        with pytest.raises(CacheError, match="corrupt index key"):
            mutable_index("index-a", bad)


def test_entry_repr_hides_the_signed_url() -> None:
    entry = GhaEntry("k", "v", "http://h/kiln/cache/b?sig=SECRET")
    assert "SECRET" not in repr(entry)


def test_sources_stream_slices(tmp_path: Path) -> None:
    data = bytes(range(256)) * 10_000  # 2.56 MB
    path = tmp_path / "f"
    path.write_bytes(data)
    counted: list[int] = []
    for source in (Source.of(path), Source.of(data)):
        assert source.size == len(data)
        ranges = source.ranges(1 << 20)
        assert ranges == [(0, 1 << 20), (1 << 20, 1 << 20), (2 << 20, len(data) - (2 << 20))]
        start, length = ranges[1]
        read = source.reader(start, length, counted.append)
        assert b"".join(read()) == data[start : start + length]
        assert b"".join(read()) == data[start : start + length]  # a retry starts afresh
    assert sum(counted) == 4 * (1 << 20) and max(counted) <= 1 << 20
    assert Source.of(b"").ranges(10) == []
    with pytest.raises(CacheError, match="cannot read"):
        Source.of(tmp_path / "missing")
    with pytest.raises(CacheError, match="not a regular file"):
        Source.of(tmp_path)
    shrinking = Source(len(data) + 5, path=path)
    with pytest.raises(CacheError, match="shrank"):
        b"".join(shrinking.reader(0, shrinking.size, counted.append)())


def test_run_parallel_stops_at_the_first_failure() -> None:
    ran: list[int] = []

    def task(i: int) -> None:
        time.sleep(0.01)
        if i == 1:
            raise CacheError("chunk 1 failed")
        ran.append(i)

    with pytest.raises(CacheError, match="chunk 1 failed"):
        run_parallel([lambda i=i: task(i) for i in range(50)], parallel=2)  # type: ignore[misc]
    assert len(ran) < 10  # the rest were cancelled
