"""Settings parsing, runtime tokens, and the ``kiln cache token`` command."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jwt
import pytest

from kiln.cli.main import main
from kiln.errors import UsageError
from kiln.gha.scopes import READ, WRITE, Scope
from kiln.gha.server.settings import (
    Keys,
    ServerSettings,
    load_or_create_secret,
    parse_duration,
    parse_size,
)
from kiln.gha.server.tokens import TokenError, issue_token, verify_token

KEY = Keys.derive(b"0123456789abcdef0123").jwt


@pytest.mark.parametrize(
    ("text", "value"),
    [("10GB", 10 * 10**9), ("512MiB", 512 * 2**20), ("1048576", 1048576), ("1.5 kb", 1500)],
)
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize(("text", "value"), [("7d", 604800.0), ("90m", 5400.0), ("45", 45.0)])
def test_parse_duration(text: str, value: float) -> None:
    assert parse_duration(text) == value


@pytest.mark.parametrize("bad", ["", "ten", "10XB", "-5GB"])
def test_bad_sizes_are_usage_errors(bad: str) -> None:
    with pytest.raises(UsageError, match=f"invalid --max-size {bad!r}") as info:
        parse_size(bad, name="--max-size")
    assert info.value.hint and "10GB" in info.value.hint


def test_settings_validation() -> None:
    with pytest.raises(UsageError, match="secret is too short"):
        ServerSettings(secret=b"short")
    s = ServerSettings(secret=b"x" * 32, max_size=1000, max_entry_size=5000)
    assert s.entry_cap == 1000  # an entry never exceeds the whole cache
    assert s.reservation_timeout == 120.0 and s.upload_timeout == 3600.0
    with pytest.raises(UsageError, match="--reservation-timeout must be positive"):
        ServerSettings(secret=b"x" * 32, reservation_timeout=0)


def test_secret_is_created_once_private(tmp_path: Path) -> None:
    path = tmp_path / "root" / "secret"
    first = load_or_create_secret(path)
    assert re.fullmatch(rb"[0-9a-f]{64}", first)  # 32 random bytes, in hex
    assert path.read_bytes() == first + b"\n"
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_or_create_secret(path) == first


def test_token_round_trip_and_github_shape() -> None:
    token = issue_token(KEY, [Scope("refs/pull/7/merge", READ | WRITE), Scope("main", READ)])
    claims = jwt.decode(token, options={"verify_signature": False})
    # clients (go-actions-cache) parse these: ac is a JSON *string*, exp and nbf present
    assert json.loads(claims["ac"]) == [
        {"Scope": "refs/pull/7/merge", "Permission": 3},
        {"Scope": "main", "Permission": 1},
    ]
    assert claims["nbf"] <= claims["iat"] < claims["exp"]
    grant = verify_token(KEY, token)
    assert grant.read_scopes == ("refs/pull/7/merge", "main")
    assert grant.write_scope == "refs/pull/7/merge"
    assert grant.can_write("refs/pull/7/merge") and not grant.can_write("main")
    assert not grant.admin


def test_forged_expired_and_malformed_tokens() -> None:
    good = issue_token(KEY, [Scope("main", 3)])
    with pytest.raises(TokenError):
        verify_token(Keys.derive(b"another-secret-entirely").jwt, good)
    with pytest.raises(TokenError):
        verify_token(KEY, issue_token(KEY, [Scope("main", 3)], ttl=-3600))
    with pytest.raises(TokenError):
        verify_token(KEY, jwt.encode({"ac": "[]", "iss": "kiln-cache"}, KEY, algorithm="HS256"))
    unsigned = jwt.encode(
        {"ac": "[]", "iss": "kiln-cache", "exp": 9999999999, "nbf": 0}, None, algorithm="none"
    )
    with pytest.raises(TokenError):
        verify_token(KEY, unsigned)
    bad_ac = jwt.encode(
        {"ac": "{not json", "iss": "kiln-cache", "exp": 9999999999, "nbf": 0},
        KEY,
        algorithm="HS256",
    )
    with pytest.raises(TokenError):
        verify_token(KEY, bad_ac)


def test_token_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    secret = tmp_path / "secret"
    secret.write_text("a-long-enough-server-secret\n")
    rc = main(
        [
            "cache", "token", "--secret-file", str(secret),
            "--scope", "refs/pull/7/merge", "--write", "--scope", "refs/heads/main",
        ]
    )  # fmt: skip
    assert rc == 0
    token = capsys.readouterr().out.strip()
    grant = verify_token(Keys.derive(b"a-long-enough-server-secret").jwt, token)
    assert [(s.name, s.permission) for s in grant.scopes] == [
        ("refs/pull/7/merge", READ | WRITE),
        ("refs/heads/main", READ),
    ]
    assert main(["cache", "token", "--secret-file", str(secret), "--admin"]) == 0
    admin = verify_token(
        Keys.derive(b"a-long-enough-server-secret").jwt, capsys.readouterr().out.strip()
    )
    assert admin.admin and admin.scopes == ()


def test_token_command_user_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    secret = tmp_path / "secret"
    secret.write_text("a-long-enough-server-secret\n")
    assert main(["cache", "token", "--secret-file", str(secret)]) == 2  # no scope
    assert "at least one --scope" in capsys.readouterr().err
    assert main(["cache", "token", "--secret-file", str(tmp_path / "absent"), "--admin"]) == 2
    err = capsys.readouterr().err
    assert "cannot read the secret file" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as exited:
        main(["cache", "token", "--secret-file", str(secret), "--write"])  # --write first
    assert exited.value.code == 2
    assert "--write" in capsys.readouterr().err
    assert main(["cache", "ls"]) == 2
    assert "no cache server URL" in capsys.readouterr().err
