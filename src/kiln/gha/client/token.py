"""Reading the runtime token's claims (without verifying it: that is the server's job).

The token is a JWT whose ``ac`` claim is a JSON *string* listing the cache scopes in
lookup order, ``[{"Scope": "refs/heads/main", "Permission": 3}]``; go-actions-cache
refuses a token without it, or one past its ``exp``. Error messages never quote the token.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from datetime import UTC, datetime
from typing import Any

from kiln.errors import CacheError
from kiln.gha.client.model import Scope
from kiln.gha.scopes import READ

TOKEN_HINT = (
    "inside a GitHub workflow pass the runner's ACTIONS_RUNTIME_TOKEN (expose it to the "
    "step, e.g. with crazy-max/ghaction-github-runtime); for `kiln cache serve` mint one "
    "with `kiln cache token --scope refs/heads/main --write` and pass it as token=... "
    "(or ACTIONS_RUNTIME_TOKEN)"
)


def _malformed(why: str) -> CacheError:
    return CacheError("the GitHub Actions cache token is malformed", why=why, hint=TOKEN_HINT)


def claims(token: str) -> dict[str, Any]:
    """The JWT payload of *token*, decoded but not verified."""
    if not token or not token.strip():
        raise CacheError("no GitHub Actions cache token was given", hint=TOKEN_HINT)
    parts = token.strip().split(".")
    if len(parts) != 3 or not parts[1]:
        raise _malformed("it is not a JWT (three base64url parts separated by dots)")
    payload = parts[1]
    try:
        raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        value = json.loads(raw)
    except (binascii.Error, ValueError) as exc:
        raise _malformed("its payload is not base64url-encoded JSON") from exc
    if not isinstance(value, dict):
        raise _malformed("its payload is not a JSON object")
    return value


def parse_scopes(token: str, *, now: float | None = None) -> list[Scope]:
    """The cache scopes of *token* in lookup order (its ``ac`` claim). A token whose
    scopes are all write-only (nektos/act issues ``{"Scope": "", "Permission": 2}``;
    GitHub's own always list readable ones) may read what it writes: those scopes are
    taken as readable too."""
    payload = claims(token)
    exp = payload.get("exp")
    if isinstance(exp, int | float) and not isinstance(exp, bool):
        expires = float(exp)
        if (time.time() if now is None else now) >= expires:
            when = datetime.fromtimestamp(expires, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
            raise CacheError(f"the GitHub Actions cache token expired at {when}", hint=TOKEN_HINT)
    if "ac" not in payload:
        raise _malformed("it has no `ac` (access control) claim listing cache scopes")
    ac = payload["ac"]
    if isinstance(ac, str):
        try:
            ac = json.loads(ac)
        except ValueError as exc:
            raise _malformed("its `ac` claim is not JSON") from exc
    if not isinstance(ac, list):
        raise _malformed("its `ac` claim is not a list of scopes")
    scopes: list[Scope] = []
    for item in ac:
        name = item.get("Scope") if isinstance(item, dict) else None
        perm = item.get("Permission") if isinstance(item, dict) else None
        if not isinstance(name, str) or not isinstance(perm, int) or isinstance(perm, bool):
            raise _malformed("an `ac` entry lacks Scope (a string) or Permission (an integer)")
        scopes.append(Scope(name, perm))
    if scopes and not any(s.readable for s in scopes):
        scopes = [Scope(s.name, s.permission | READ) if s.writable else s for s in scopes]
    return scopes
