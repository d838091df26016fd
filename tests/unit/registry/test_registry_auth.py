from __future__ import annotations

import httpx
import pytest

from kiln.errors import AuthError, RegistryError
from kiln.registry.auth import (
    Challenge,
    _read_token,
    parse_challenges,
    pull_scope,
    push_scope,
)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ('Basic realm="Registry Realm"', [Challenge("basic", {"realm": "Registry Realm"})]),
        (
            'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
            'scope="repository:library/busybox:pull"',
            [
                Challenge(
                    "bearer",
                    {
                        "realm": "https://auth.docker.io/token",
                        "service": "registry.docker.io",
                        "scope": "repository:library/busybox:pull",
                    },
                )
            ],
        ),
        (
            # commas and escaped quotes inside quoted values; odd spacing; upper case
            'BEARER Realm = "https://a.example/t?x=1,y=2" , service=reg, '
            'scope="repository:a/b:pull,push", error="say \\"hi\\""',
            [
                Challenge(
                    "bearer",
                    {
                        "realm": "https://a.example/t?x=1,y=2",
                        "service": "reg",
                        "scope": "repository:a/b:pull,push",
                        "error": 'say "hi"',
                    },
                )
            ],
        ),
        (
            # two challenges in one header value
            'Basic realm="r1", Bearer realm="https://t.example/token",service="s"',
            [
                Challenge("basic", {"realm": "r1"}),
                Challenge("bearer", {"realm": "https://t.example/token", "service": "s"}),
            ],
        ),
        ("Negotiate abc123==, Basic realm=x", [
            Challenge("negotiate", {}), Challenge("basic", {"realm": "x"})
        ]),
        ("", []),
    ],
)  # fmt: skip
def test_parse_challenges(header: str, expected: list[Challenge]) -> None:
    assert parse_challenges([header]) == expected


def test_parse_challenges_across_headers() -> None:
    found = parse_challenges(['Basic realm="a"', 'Bearer realm="b"'])
    assert [c.scheme for c in found] == ["basic", "bearer"]


def test_scopes() -> None:
    assert pull_scope("a/b") == "repository:a/b:pull"
    assert push_scope("a/b") == "repository:a/b:pull,push"


def _response(status: int, body: object) -> httpx.Response:
    return httpx.Response(status, json=body, request=httpx.Request("GET", "https://t/token"))


def test_token_response_forms() -> None:
    assert _read_token("h", "r", _response(200, {"token": "abc", "expires_in": 300})) == (
        "abc",
        300.0,
    )
    # OAuth-style field, default lifetime of 60 seconds
    assert _read_token("h", "r", _response(200, {"access_token": "xyz"})) == ("xyz", 60.0)


def test_token_refusals_are_auth_errors_with_a_login_hint() -> None:
    with pytest.raises(AuthError) as info:
        _read_token("reg.example", "r", _response(401, {"details": "bad password"}))
    assert "kiln login reg.example" in str(info.value)
    assert "bad password" in str(info.value)
    with pytest.raises(RegistryError, match="without a token"):
        _read_token("h", "r", _response(200, {"nothing": 1}))
    with pytest.raises(RegistryError, match="answered 500"):
        _read_token("h", "r", _response(500, {}))
