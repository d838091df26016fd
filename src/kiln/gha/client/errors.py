"""Turning failed requests into :class:`~kiln.errors.CacheError` for users.

Messages name what was being done and where (a URL without its query: signed URLs carry
their signature there) and quote the service's own explanation, with the token scrubbed
out of anything the server or a library said.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

import httpx

from kiln.errors import CacheError
from kiln.gha.client.token import TOKEN_HINT
from kiln.http.sender import redact

UNREACHABLE_HINT = (
    "check that the cache service is running and that the URL is right; for a self-hosted "
    "cache start `kiln cache serve --listen HOST:PORT` and point kiln at it with "
    "url=http://HOST:PORT/ (or ACTIONS_CACHE_URL) for the v1 API, or url_v2=... (or "
    "ACTIONS_RESULTS_URL with version=2)"
)
READ_ONLY_HINT = (
    "a read-only token (a pull request's, or one minted by `kiln cache token` without "
    "--write) can restore from the cache but not save to it"
)
_XML_MESSAGE = re.compile(r"<Message>(.*?)</Message>", re.S)


def scrub(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "<token>")
    return text


def service_message(response: httpx.Response) -> str:
    """What the service said: v1 ``message``, twirp ``msg``, Azure ``<Message>``, or text."""
    try:
        body = response.read()
    except httpx.HTTPError:
        return ""
    text = body[: 32 * 1024].decode("utf-8-sig", "replace").strip()
    if not text:
        return ""
    try:
        data = json.loads(text)
    except ValueError:
        m = _XML_MESSAGE.search(text)
        if m:
            return m.group(1).strip()[:300]
        return text[:300] if "<html" not in text.lower() else ""
    if isinstance(data, dict):
        for name in ("message", "msg", "Message", "code"):
            value = data.get(name)
            if isinstance(value, str) and value:
                return value[:300]
    return ""


def _twirp_code(response: httpx.Response) -> str:
    try:
        data = json.loads(response.read().decode("utf-8-sig"))
    except (ValueError, httpx.HTTPError):
        return ""
    return str(data.get("code") or "") if isinstance(data, dict) else ""


def status_error(
    response: httpx.Response, what: str, *, secrets: Iterable[str] = (), signed: bool = False
) -> CacheError:
    """The user-facing error of an unexpected (non-retryable, or retried-out) status."""
    status = response.status_code
    said = scrub(service_message(response), secrets)
    why = f"{redact(response.request.url)} answered {status} {response.reason_phrase}".rstrip()
    if said:
        why += f": {said}"
    if signed and status in (401, 403):
        return CacheError(
            f"{what}: the signed URL was refused",
            why=why,
            hint="the URL may have expired; run the build again",
        )
    if status == 401:
        return CacheError(
            f"{what}: the cache service rejected the token (missing, invalid or expired)",
            why=why,
            hint=TOKEN_HINT,
        )
    if status == 403:
        return CacheError(
            f"{what}: the token is not allowed to do this (read-only, or no such scope)",
            why=why,
            hint=READ_ONLY_HINT,
        )
    if (
        status in (404, 405)
        and "/twirp/" in response.request.url.path
        and _twirp_code(response) in ("", "bad_route")
    ):
        return CacheError(
            f"{what}: the service does not speak the v2 cache API",
            why=why,
            hint="use the v1 API (version=1 with url=, or ACTIONS_CACHE_URL) with this service",
        )
    if status in (404, 405) and "/_apis/artifactcache/" in response.request.url.path:
        return CacheError(
            f"{what}: no v1 cache API at this URL",
            why=why,
            hint="url= (ACTIONS_CACHE_URL) must be the cache service's base URL, e.g. "
            "http://HOST:PORT/ for `kiln cache serve`",
        )
    if status == 429:
        return CacheError(
            f"{what}: the cache service kept throttling requests (429)",
            why=why,
            hint="raise timeout= to wait longer",
        )
    if status >= 500:
        return CacheError(f"{what}: the cache service kept failing", why=why)
    if status == 413 or (status == 400 and "cap" in said.lower()):
        return CacheError(f"{what}: the entry is too large for the cache service", why=why)
    return CacheError(f"{what}: failed", why=why)


def transport_error(
    url: str | httpx.URL, what: str, exc: Exception, secrets: Iterable[str] = ()
) -> CacheError:
    """The user-facing error of a request that got no (complete) answer."""
    detail = scrub(str(exc) or type(exc).__name__, secrets)
    where = redact(url)
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return CacheError(
            f"{what}: cannot reach the GitHub Actions cache at {where}",
            why=detail,
            hint=UNREACHABLE_HINT,
        )
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL):
        return CacheError(f"{what}: invalid cache URL {where}", why=detail, hint=UNREACHABLE_HINT)
    return CacheError(f"{what}: the connection to {where} kept failing", why=detail)
