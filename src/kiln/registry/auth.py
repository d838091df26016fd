"""Registry authentication: the ``WWW-Authenticate`` challenge flow.

A registry answers an unauthenticated request with 401 and one or more challenges.
``Basic`` means: send the credentials with every request. ``Bearer`` means: fetch a token
from ``realm`` for ``service`` and the scopes the request needs
(``repository:<name>:pull`` to read, ``repository:<name>:pull,push`` to write, plus pull on
the source repository of a cross-repository mount), then send it. Tokens are cached per
(host, scopes) until shortly before they expire.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import httpx

from kiln.errors import AuthError, RegistryError
from kiln.registry.dockerconfig import Credentials, CredentialSource
from kiln.registry.transport import Transport, error_messages

log = logging.getLogger(__name__)

DEFAULT_TOKEN_LIFETIME = 60.0  # seconds, the distribution spec's default
EXPIRY_MARGIN = 10.0


@dataclass(frozen=True, slots=True)
class Challenge:
    """One parsed challenge: a lower-cased scheme and its parameters (lower-cased names)."""

    scheme: str
    params: Mapping[str, str] = field(default_factory=dict)


def pull_scope(repository: str) -> str:
    return f"repository:{repository}:pull"


def push_scope(repository: str) -> str:
    return f"repository:{repository}:pull,push"


# -- challenge parsing -------------------------------------------------------------
_TOKEN_CHARS = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)


def parse_challenges(headers: Iterable[str]) -> list[Challenge]:
    """Parse ``WWW-Authenticate`` header values (RFC 7235); unparsable parts are skipped."""
    out: list[Challenge] = []
    for value in headers:
        out.extend(_Parser(value).challenges())
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def _skip(self, chars: str = " \t") -> None:
        while self.pos < len(self.text) and self.text[self.pos] in chars:
            self.pos += 1

    def _token(self) -> str:
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] in _TOKEN_CHARS:
            self.pos += 1
        return self.text[start : self.pos]

    def _quoted(self) -> str:
        self.pos += 1  # opening quote
        out: list[str] = []
        while self.pos < len(self.text):
            ch = self.text[self.pos]
            self.pos += 1
            if ch == "\\" and self.pos < len(self.text):
                out.append(self.text[self.pos])
                self.pos += 1
            elif ch == '"':
                break
            else:
                out.append(ch)
        return "".join(out)

    def _peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def _at_param(self) -> bool:
        """Whether an ``name=value`` pair starts here (lookahead only)."""
        mark = self.pos
        name = self._token()
        self._skip()
        ok = bool(name) and self._peek() == "="
        if ok:
            self.pos += 1
            self._skip()
            ok = self._peek() != "="  # "abc==" is a token68, not a parameter
        self.pos = mark
        return ok

    def challenges(self) -> list[Challenge]:
        found: list[Challenge] = []
        while True:
            self._skip(" \t,")
            scheme = self._token()
            if not scheme:
                break  # the end, or garbage: stop rather than guess
            params: dict[str, str] = {}
            self._skip()
            if not self._at_param() and self._peek() not in ("", ","):
                while self._peek() not in ("", ","):  # token68 credentials: not for us
                    self.pos += 1
            while self._at_param():
                name = self._token()
                self._skip()
                self.pos += 1  # '='
                self._skip()
                params[name.lower()] = self._quoted() if self._peek() == '"' else self._token()
                self._skip()
                if self._peek() != ",":
                    break
                self._skip(" \t,")
            found.append(Challenge(scheme.lower(), params))
        return found


def _basic(creds: Credentials) -> str:
    raw = f"{creds.username}:{creds.password}".encode()
    return "Basic " + base64.b64encode(raw).decode()


@dataclass(slots=True)
class _Token:
    value: str
    expires: float


class Authenticator:
    """Computes ``Authorization`` headers per host and scopes; thread-safe."""

    def __init__(
        self,
        credentials: CredentialSource,
        transport: Transport,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.credentials = credentials
        self._transport = transport
        self._clock = clock
        self._lock = threading.Lock()
        self._challenges: dict[str, Challenge] = {}
        self._tokens: dict[tuple[str, tuple[str, ...]], _Token] = {}
        self._fetch_locks: dict[tuple[str, tuple[str, ...]], threading.Lock] = {}

    def headers(self, host: str, scopes: Iterable[str]) -> dict[str, str]:
        """The ``Authorization`` header for a request (empty before any challenge)."""
        with self._lock:
            challenge = self._challenges.get(host)
        if challenge is None:
            return {}
        if challenge.scheme == "basic":
            creds = self.credentials.get(host)
            return {"Authorization": _basic(creds)} if creds else {}
        token = self._token(host, challenge, tuple(sorted(set(scopes))))
        return {"Authorization": f"Bearer {token}"} if token else {}

    def on_unauthorized(
        self, host: str, response: httpx.Response, scopes: Iterable[str], sent: str | None
    ) -> bool:
        """Learn from a 401; return whether one more try could succeed.

        *sent* is the ``Authorization`` header the refused request carried. A refused
        bearer token is dropped from the cache so the retry fetches a fresh one.
        """
        challenges = parse_challenges(response.headers.get_list("www-authenticate"))
        by_scheme = {c.scheme: c for c in challenges}
        challenge = by_scheme.get("bearer") or by_scheme.get("basic")
        if challenge is None:
            return False
        key = (host, tuple(sorted(set(scopes))))
        with self._lock:
            self._challenges[host] = challenge
            cached = self._tokens.get(key)
            if cached is not None and sent == f"Bearer {cached.value}":
                del self._tokens[key]
        if challenge.scheme == "basic":
            creds = self.credentials.get(host)
            return creds is not None and sent != _basic(creds)
        return True

    # -- bearer tokens -----------------------------------------------------------
    def _token(self, host: str, challenge: Challenge, scopes: tuple[str, ...]) -> str:
        key = (host, scopes)
        with self._lock:
            cached = self._tokens.get(key)
            if cached is not None and cached.expires > self._clock():
                return cached.value
            fetch_lock = self._fetch_locks.setdefault(key, threading.Lock())
        with fetch_lock:  # one fetch per key at a time; the others reuse its token
            with self._lock:
                cached = self._tokens.get(key)
                if cached is not None and cached.expires > self._clock():
                    return cached.value
            value, lifetime = self._fetch_token(host, challenge, scopes)
            expires = self._clock() + max(lifetime - EXPIRY_MARGIN, 1.0)
            with self._lock:
                self._tokens[key] = _Token(value, expires)
            return value

    def _fetch_token(
        self, host: str, challenge: Challenge, scopes: tuple[str, ...]
    ) -> tuple[str, float]:
        realm = challenge.params.get("realm")
        if not realm:
            raise RegistryError(
                f"registry {host} asked for a bearer token but named no token service"
            )
        service = challenge.params.get("service", "")
        creds = self.credentials.get(host)
        all_scopes = list(scopes)
        if not all_scopes and challenge.params.get("scope"):
            all_scopes = challenge.params["scope"].split(" ")
        if creds is not None and creds.identity_token:
            response = self._oauth_refresh(host, realm, service, all_scopes, creds)
            if response is None:  # the service has no OAuth endpoint: plain GET below
                creds = Credentials(creds.username or "<token>", creds.identity_token)
            else:
                return _read_token(host, realm, response)
        params: dict[str, str | list[str]] = {}
        if service:
            params["service"] = service
        if all_scopes:
            params["scope"] = all_scopes
        headers = {"Authorization": _basic(creds)} if creds else {}
        response = self._transport.send("GET", realm, registry=host, headers=headers, params=params)
        return _read_token(host, realm, response, with_credentials=creds is not None)

    def _oauth_refresh(
        self, host: str, realm: str, service: str, scopes: list[str], creds: Credentials
    ) -> httpx.Response | None:
        form = {
            "grant_type": "refresh_token",
            "refresh_token": creds.identity_token,
            "service": service,
            "client_id": "kiln",
            "scope": " ".join(scopes),
        }
        response = self._transport.send(
            "POST",
            realm,
            registry=host,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            body=str(httpx.QueryParams(form)).encode(),
        )
        if response.status_code in (404, 405):
            return None
        return response


def _read_token(
    host: str, realm: str, response: httpx.Response, *, with_credentials: bool = True
) -> tuple[str, float]:
    if response.status_code in (401, 403):
        said = error_messages(response)
        raise AuthError(
            f"registry {host} refused the credentials"
            if with_credentials
            else f"registry {host} requires authentication",
            why=f"the token service {realm} answered {response.status_code}"
            + (f": {said}" if said else ""),
            hint=f"log in with `kiln login {host}`",
        )
    if response.status_code != 200:
        said = error_messages(response)
        raise RegistryError(
            f"cannot get a token for registry {host}",
            why=f"the token service {realm} answered {response.status_code}"
            + (f": {said}" if said else ""),
        )
    try:
        data = json.loads(response.content)
    except ValueError as exc:
        raise RegistryError(
            f"cannot get a token for registry {host}",
            why=f"the token service {realm} did not answer JSON",
        ) from exc
    token = data.get("token") or data.get("access_token") if isinstance(data, dict) else None
    if not isinstance(token, str) or not token:
        raise RegistryError(
            f"cannot get a token for registry {host}",
            why=f"the token service {realm} answered without a token",
        )
    lifetime = data.get("expires_in")
    if not isinstance(lifetime, int | float) or lifetime <= 0:
        lifetime = DEFAULT_TOKEN_LIFETIME
    return token, float(lifetime)
