"""ADD <url>: downloads kept under ``$KILN_ROOT/sources``, revalidated with ETags.

The step's cache key includes the digest of the downloaded content, so a changed remote
file reruns the step and an unchanged one (HTTP 304, or same bytes) hits the cache.

A URL's directory holds ``meta.json``, the one source of truth, and the content in a file
named by its digest. A download is written atomically to a staging name, then renamed to
its digest's name; only then is ``meta.json`` replaced (atomically) to point at it, and
what it no longer points at is removed last. After a crash at any point ``meta.json``
names the old complete download or the new one, never a mix; its mtime is the
download's last use. A lock file serializes kiln processes fetching the same URL (and
``kiln prune``). Requests are retried under :mod:`kiln.http.retry`; a download cut off
midway starts again, within the same budget.
"""

from __future__ import annotations

import email.utils
import fcntl
import hashlib
import json
import os
import posixpath
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from kiln.errors import KilnError
from kiln.http.clients import Clients
from kiln.http.retry import DROPPED, RetryPolicy
from kiln.http.sender import Sender, Throttled, Unanswered, redact
from kiln.oci import digest_hex, is_digest
from kiln.state import KilnRoot, atomic_writer, fsync_dir, write_atomic

META = "meta.json"
LOCK = ".lock"
STAGED = ".download"  # a complete body not yet named by its digest (the lock is held)
PIECE = 1 << 20


@dataclass(frozen=True, slots=True)
class Download:
    path: Path
    filename: str
    mtime: float | None
    digest: str


def _dir(root: KilnRoot, url: str) -> Path:
    return root.sources / hashlib.sha256(url.encode()).hexdigest()


def committed(base: Path) -> bool:
    """Whether the URL directory *base* holds a complete download."""
    return _read_meta(base) is not None


def _read_meta(base: Path) -> dict[str, Any] | None:
    """The committed metadata of a URL's directory, or None (absent, unreadable, or its
    content missing: a layout older than content named by digest)."""
    try:
        meta = json.loads((base / META).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or not is_digest(str(meta.get("digest"))):
        return None
    return meta if (base / digest_hex(meta["digest"])).is_file() else None


def downloaded(root: KilnRoot, url: str, digest: str) -> Download:
    """The download of *url* made while planning (its digest must match)."""
    shown = redact(url)  # no credential or signed query in a message
    base = _dir(root, url)
    meta = _read_meta(base)
    if meta is None:
        raise KilnError(f"download of {shown} is missing", hint="run the build again")
    if _source_digest(meta) != digest:
        raise KilnError(f"download of {shown} changed during the build", hint="run it again")
    path = base / digest_hex(meta["digest"])
    return Download(path, str(meta["filename"]), meta.get("mtime"), digest)


def _source_digest(meta: dict[str, Any]) -> str:
    """What an ADD of the URL produces: content, file name (after redirects) and
    Last-Modified time (the file's mtime) — the cache key covers all three."""
    fields = {k: meta.get(k) for k in ("digest", "filename", "mtime")}
    return "sha256:" + hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


class UrlFetcher:
    """Downloads ADD sources into *root*; *retry* and *transport* are for tests."""

    def __init__(
        self,
        root: KilnRoot,
        *,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.root = root
        self.retry = retry or RetryPolicy()
        self._transport = transport

    def fetch(self, url: str, checksum: str | None) -> str:
        """Download *url* (or revalidate the copy kept) and return its source digest."""
        shown = redact(url)  # no credential or signed query in a message
        base = _dir(self.root, url)
        sender = Sender(Clients(transport=self._transport), self.retry)
        try:
            base.mkdir(parents=True, exist_ok=True)
            with _locked(base):
                meta = self._fetch(sender, base, url, shown, checksum)
                _remove_all_but(base, digest_hex(meta["digest"]))
                with suppress(OSError):
                    os.utime(base / META)  # last use (kiln.gc prunes a download under the lock)
        except OSError as exc:
            raise KilnError(f"cannot store the download of {shown}: {exc}") from exc
        finally:
            sender.close()
        return _source_digest(meta)

    def _fetch(self, sender: Sender, base: Path, url: str, shown: str, checksum: str | None
               ) -> dict[str, Any]:  # fmt: skip
        """*shown*: the URL as messages show it (redacted)."""
        kept = _read_meta(base)
        headers = {"If-None-Match": str(kept["etag"])} if kept and kept.get("etag") else {}
        budget = sender.policy.budget()
        while True:
            try:
                response = sender.send(
                    "GET", url, headers=headers, stream=True, follow_redirects=True, budget=budget
                )
            except Unanswered as failure:
                raise KilnError(f"cannot download {shown}: {failure.error}") from failure.error
            except Throttled as held:
                raise KilnError(
                    f"cannot download {shown}: the server is throttling requests",
                    why=str(held),
                ) from None
            try:
                if response.status_code == 304 and kept is not None and headers:
                    _check(shown, checksum, kept["digest"])
                    return kept
                if not 200 <= response.status_code < 300:
                    raise KilnError(f"cannot download {shown}: HTTP {response.status_code}")
                return _receive(response, base, shown, checksum)
            except DROPPED as exc:
                if not budget.pause():
                    raise KilnError(f"cannot download {shown}: {exc}") from exc
            except httpx.HTTPError as exc:
                raise KilnError(f"cannot download {shown}: {exc}") from exc
            finally:
                response.close()


def _receive(
    response: httpx.Response, base: Path, shown: str, checksum: str | None
) -> dict[str, Any]:
    """Store *response*'s body as the new download of its URL and commit it."""
    staged, h = base / STAGED, hashlib.sha256()
    with atomic_writer(staged) as fh:
        for chunk in response.iter_bytes(PIECE):
            h.update(chunk)
            fh.write(chunk)
    digest = "sha256:" + h.hexdigest()
    try:
        _check(shown, checksum, digest)
    except KilnError:
        staged.unlink()
        raise
    os.replace(staged, base / digest_hex(digest))
    fsync_dir(base)  # the content is in place before meta.json names it
    path = urllib.parse.urlparse(str(response.url)).path
    meta = {
        "digest": digest,
        "etag": response.headers.get("etag"),
        "mtime": _last_modified(response.headers.get("last-modified")),
        "filename": posixpath.basename(path.rstrip("/")) or "index.html",
    }
    write_atomic(base / META, json.dumps(meta).encode())  # the commit
    fsync_dir(base)
    return meta


def _check(shown: str, checksum: str | None, digest: str) -> None:
    if checksum and checksum != digest:
        raise KilnError(f"checksum mismatch for {shown}", why=f"expected {checksum}, got {digest}")


@contextmanager
def _locked(base: Path) -> Iterator[None]:
    with open(base / LOCK, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _remove_all_but(base: Path, content: str) -> None:
    """Drop what meta.json does not name: older downloads, parts left by a crash."""
    for entry in base.iterdir():
        if entry.name not in (META, LOCK, content) and not entry.is_dir():
            with suppress(FileNotFoundError):
                entry.unlink()


def _last_modified(header: str | None) -> float | None:
    if not header:
        return None
    try:
        return email.utils.parsedate_to_datetime(header).timestamp()
    except (TypeError, ValueError):
        return None
