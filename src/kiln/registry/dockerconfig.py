"""Registry credentials from Docker's ``config.json`` (read and write).

Lookup follows Docker: ``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json``.
Entries under ``auths`` carry ``auth`` (base64 ``user:password``) or ``username`` and
``password``, and optionally ``identitytoken`` (an OAuth refresh token). Keys may be bare
hosts or URLs; Docker Hub is stored as ``https://index.docker.io/v1/``. Credential helpers
(``credsStore``/``credHelpers``) are not supported and are left untouched.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from kiln.errors import KilnError
from kiln.registry.reference import DOCKER_HUB, normalise_registry
from kiln.state import atomic_writer

log = logging.getLogger(__name__)

DOCKER_HUB_CONFIG_KEY = "https://index.docker.io/v1/"


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a registry login yields. An identity token replaces the password for OAuth."""

    username: str = ""
    password: str = ""
    identity_token: str = ""

    def __repr__(self) -> str:  # never print secrets
        return f"Credentials(username={self.username!r}, password=***)"


class CredentialSource(Protocol):
    """Where a :class:`~kiln.registry.client.RegistryClient` finds credentials for a host."""

    def get(self, host: str) -> Credentials | None: ...


class Anonymous:
    """No credentials for anyone."""

    def get(self, host: str) -> Credentials | None:
        return None


class StaticCredentials:
    """Credentials given in code, keyed by registry host (Docker Hub aliases folded)."""

    def __init__(self, entries: Mapping[str, Credentials]) -> None:
        self._entries = {normalise_registry(k): v for k, v in entries.items()}

    def get(self, host: str) -> Credentials | None:
        return self._entries.get(normalise_registry(host))


def config_path() -> Path:
    base = os.environ.get("DOCKER_CONFIG")
    return (Path(base) if base else Path.home() / ".docker") / "config.json"


def config_key(host: str) -> str:
    """The ``auths`` key Docker uses for *host*."""
    host = normalise_registry(host)
    return DOCKER_HUB_CONFIG_KEY if host == DOCKER_HUB else host


class DockerConfig:
    """A credential source backed by a Docker ``config.json``; re-read when it changes."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or config_path()
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._auths: dict[str, Credentials] = {}
        self._helpers: dict[str, str] = {}
        self._warned: set[str] = set()

    def get(self, host: str) -> Credentials | None:
        host = normalise_registry(host)
        with self._lock:
            self._refresh()
            found = self._auths.get(host)
            helper = self._helpers.get(host) or self._helpers.get("*")
            if found is None and helper and host not in self._warned:
                self._warned.add(host)
                log.warning(
                    "%s names credential helper %r for %s; kiln does not run credential "
                    "helpers, so it connects anonymously (use `kiln login %s`)",
                    self.path,
                    helper,
                    host,
                    host,
                )
            return found

    def _refresh(self) -> None:
        try:
            st = self.path.stat()
        except OSError:
            self._stamp, self._auths = None, {}
            return
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return
        self._stamp = stamp
        data = _read_json(self.path)
        self._auths = _parse_auths(data)
        self._helpers = _parse_helpers(data)

    def store(self, host: str, creds: Credentials) -> None:
        """Save *creds* for *host*, keeping every other key of the file."""
        data = _read_json(self.path)
        auths = data.get("auths")
        if not isinstance(auths, dict):
            auths = {}
        host = normalise_registry(host)
        key = config_key(host)
        # Drop other spellings of the same registry so the new entry wins.
        for other in [k for k in auths if k != key and normalise_registry(k) == host]:
            del auths[other]
        entry: dict[str, str] = {}
        if creds.username or creds.password:
            raw = f"{creds.username}:{creds.password}".encode()
            entry["auth"] = base64.b64encode(raw).decode()
        if creds.identity_token:
            entry["identitytoken"] = creds.identity_token
        auths[key] = entry
        data["auths"] = auths
        self._write(data)

    def remove(self, host: str) -> bool:
        """Forget *host*'s credentials; return whether there were any."""
        data = _read_json(self.path)
        auths = data.get("auths")
        if not isinstance(auths, dict):
            return False
        host = normalise_registry(host)
        keys = [k for k in auths if normalise_registry(k) == host]
        for k in keys:
            del auths[k]
        if keys:
            self._write(data)
        return bool(keys)

    def _write(self, data: dict[str, Any]) -> None:
        text = json.dumps(data, indent="\t") + "\n"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            with atomic_writer(self.path) as fh:
                os.fchmod(fh.fileno(), 0o600)
                fh.write(text.encode())
        except OSError as exc:
            raise KilnError(f"cannot write {self.path}", why=str(exc)) from exc
        with self._lock:
            self._stamp = None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise KilnError(f"cannot read {path}", why=str(exc)) from exc
    if not text.strip():
        return {}
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise KilnError(
            f"cannot parse {path}",
            why=str(exc),
            hint="fix or remove the file (it is Docker's client configuration)",
        ) from exc
    if not isinstance(data, dict):
        raise KilnError(f"cannot parse {path}", why="the top level is not a JSON object")
    return data


def _parse_auths(data: Mapping[str, Any]) -> dict[str, Credentials]:
    auths = data.get("auths")
    out: dict[str, Credentials] = {}
    if not isinstance(auths, dict):
        return out
    for key, entry in auths.items():
        if not isinstance(entry, dict):
            continue
        creds = _parse_entry(str(key), entry)
        if creds is not None:
            out[normalise_registry(str(key))] = creds
    return out


def _parse_helpers(data: Mapping[str, Any]) -> dict[str, str]:
    """Credential helpers by host (``*`` for ``credsStore``): only to explain a miss."""
    out: dict[str, str] = {}
    helpers = data.get("credHelpers")
    if isinstance(helpers, dict):
        out.update({normalise_registry(str(k)): str(v) for k, v in helpers.items()})
    store = data.get("credsStore")
    if isinstance(store, str) and store:
        out["*"] = store
    return out


def _parse_entry(key: str, entry: Mapping[str, Any]) -> Credentials | None:
    username = str(entry.get("username") or "")
    password = str(entry.get("password") or "")
    token = str(entry.get("identitytoken") or "")
    encoded = entry.get("auth")
    if isinstance(encoded, str) and encoded:
        try:
            decoded = base64.b64decode(encoded, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            log.warning("ignoring unreadable credentials for %s in Docker's config", key)
            return None
        user, sep, pw = decoded.partition(":")
        if not sep:
            log.warning("ignoring malformed credentials for %s in Docker's config", key)
            return None
        username, password = user, pw
    if not (username or password or token):
        return None  # an empty entry, as written by credential-helper setups
    return Credentials(username, password, token)
