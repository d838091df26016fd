"""Runtime tokens: HS256 JWTs with GitHub's ``ac`` scope claim.

The ``ac`` claim is a JSON *string* holding ``[{"Scope": "refs/heads/main",
"Permission": 3}, ...]`` (1 read, 2 write) in lookup order, as GitHub's runtime tokens
carry it; clients such as go-actions-cache parse it, and they insist on ``exp`` and
``nbf``. kiln adds one claim of its own, ``kiln_admin``, for the management API.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import jwt

from kiln.gha.scopes import Scope

ISSUER = "kiln-cache"


class TokenError(Exception):
    """A missing, malformed, expired or forged token (the server answers 401)."""


@dataclass(frozen=True, slots=True)
class Grant:
    """What a verified token allows: scopes in lookup order, and management rights."""

    scopes: tuple[Scope, ...]
    admin: bool = False

    @property
    def read_scopes(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.scopes if s.readable)

    @property
    def write_scope(self) -> str | None:
        """Where a write goes: the first writable scope, or None for a read-only token."""
        for s in self.scopes:
            if s.writable:
                return s.name
        return None

    def can_write(self, scope: str) -> bool:
        return self.admin or any(s.writable and s.name == scope for s in self.scopes)

    def can_read(self, scope: str) -> bool:
        return self.admin or any(s.readable and s.name == scope for s in self.scopes)


def issue_token(
    key: bytes,
    scopes: tuple[Scope, ...] | list[Scope],
    *,
    ttl: float = 24 * 3600.0,
    admin: bool = False,
    now: float | None = None,
) -> str:
    """A signed token for *scopes* (lookup order), valid from now for *ttl* seconds."""
    t = int(time.time() if now is None else now)
    ac = json.dumps([{"Scope": s.name, "Permission": s.permission} for s in scopes])
    claims: dict[str, object] = {
        "iss": ISSUER,
        "iat": t,
        "nbf": t - 60,  # tolerate clock skew between the issuer and the server
        "exp": t + int(ttl),
        "ac": ac,
    }
    if admin:
        claims["kiln_admin"] = True
    return jwt.encode(claims, key, algorithm="HS256")


def verify_token(key: bytes, raw: str) -> Grant:
    """The grant of a token signed with *key*; raises :class:`TokenError` otherwise."""
    try:
        claims = jwt.decode(
            raw, key, algorithms=["HS256"], issuer=ISSUER, options={"require": ["exp", "nbf"]}
        )
    except jwt.PyJWTError as exc:
        raise TokenError(f"invalid token: {exc}") from exc
    return Grant(scopes=_parse_ac(claims.get("ac", "[]")), admin=claims.get("kiln_admin") is True)


def _parse_ac(ac: object) -> tuple[Scope, ...]:
    try:
        items = json.loads(ac) if isinstance(ac, str) else ac
    except json.JSONDecodeError as exc:
        raise TokenError("invalid token: ac claim is not JSON") from exc
    if not isinstance(items, list):
        raise TokenError("invalid token: ac claim is not a list")
    scopes: list[Scope] = []
    for item in items:
        if not isinstance(item, dict):
            raise TokenError("invalid token: ac entry is not an object")
        name, perm = item.get("Scope"), item.get("Permission")
        if not isinstance(name, str) or not isinstance(perm, int) or isinstance(perm, bool):
            raise TokenError("invalid token: ac entry needs Scope (string), Permission (int)")
        scopes.append(Scope(name, perm))
    return tuple(scopes)


def bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer …`` header."""
    if not header:
        return None
    kind, _, value = header.partition(" ")
    if kind.lower() == "bearer" and value.strip():
        return value.strip()
    return None
