"""What the API layers share: the request context, authentication, bounded bodies."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request

from kiln.gha.scopes import READ, WRITE, Scope
from kiln.gha.server import signing
from kiln.gha.server.errors import Invalid, TooLarge, Unauthorized
from kiln.gha.server.service import CacheService
from kiln.gha.server.settings import ServerSettings
from kiln.gha.server.tokens import Grant, TokenError, bearer, verify_token


@dataclass(frozen=True, slots=True)
class Context:
    settings: ServerSettings
    service: CacheService
    jwt_key: bytes
    url_key: bytes

    def grant(self, request: Request) -> Grant:
        """The verified grant of the request's bearer token (401 without one)."""
        token = bearer(request.headers.get("authorization"))
        try:
            if token is None:
                raise TokenError("a bearer token is required")
            return verify_token(self.jwt_key, token)
        except TokenError as exc:
            anonymous = self.settings.anonymous_scope
            if anonymous:
                return Grant((Scope(anonymous, READ | WRITE),))
            raise Unauthorized(str(exc)) from exc

    def base_url(self, request: Request) -> str:
        return self.settings.public_url or str(request.base_url)

    def download_url(self, request: Request, blob: str) -> str:
        return signing.sign_url(
            self.base_url(request), self.url_key, blob, signing.READ, self.settings.url_ttl
        )

    def upload_url(self, request: Request, blob: str) -> str:
        return signing.sign_url(
            self.base_url(request), self.url_key, blob, signing.WRITE, self.settings.url_ttl
        )


def declared_length(request: Request) -> int | None:
    value = request.headers.get("content-length")
    if value is None:
        return None
    try:
        n = int(value)
    except ValueError as exc:
        raise Invalid("invalid Content-Length") from exc
    if n < 0:
        raise Invalid("invalid Content-Length")
    return n


async def read_body(request: Request, limit: int) -> bytes:
    """The whole (small) body of a request, refused past *limit* bytes."""
    n = declared_length(request)
    if n is not None and n > limit:
        raise TooLarge(f"the request body is larger than the {limit} bytes allowed")
    data = bytearray()
    async for piece in request.stream():
        data += piece
        if len(data) > limit:
            raise TooLarge(f"the request body is larger than the {limit} bytes allowed")
    return bytes(data)


async def read_json(request: Request, limit: int) -> dict[str, Any]:
    raw = await read_body(request, limit)
    try:
        value = json.loads(raw or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise Invalid("the request body is not valid JSON") from exc
    if not isinstance(value, dict):
        raise Invalid("the request body must be a JSON object")
    return value


async def body_stream(request: Request) -> AsyncIterator[bytes]:
    async for piece in request.stream():
        if piece:
            yield piece


def as_int(value: object, name: str) -> int:
    """A JSON integer, also as a string (protobuf JSON encodes int64 as a string)."""
    if isinstance(value, bool):
        raise Invalid(f"{name} must be an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise Invalid(f"{name} must be an integer")
