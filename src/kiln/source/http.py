"""ADD <url>: downloads kept under ``$KILN_ROOT/sources``, revalidated with ETags.

The step's cache key includes the digest of the downloaded content, so a changed remote
file reruns the step and an unchanged one (HTTP 304, or same bytes) hits the cache.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import os
import posixpath
import ssl
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import httpx

from kiln.errors import KilnError
from kiln.state import KilnRoot, atomic_writer, write_atomic


@dataclass(frozen=True, slots=True)
class Download:
    path: Path
    filename: str
    mtime: float | None
    digest: str


def _dir(root: KilnRoot, url: str) -> Path:
    return root.sources / hashlib.sha256(url.encode()).hexdigest()


def downloaded(root: KilnRoot, url: str, digest: str) -> Download:
    """The download of *url* made while planning (its digest must match)."""
    base = _dir(root, url)
    try:
        meta = json.loads((base / "meta.json").read_text())
    except (OSError, ValueError) as exc:
        raise KilnError(f"download of {url} is missing", hint="run the build again") from exc
    if _source_digest(meta) != digest:
        raise KilnError(f"download of {url} changed during the build", hint="run it again")
    return Download(base / "content", str(meta["filename"]), meta.get("mtime"), digest)


def _source_digest(meta: dict[str, object]) -> str:
    """What an ADD of the URL produces: content, file name (after redirects) and
    Last-Modified time (the file's mtime) — the cache key covers all three."""
    fields = {k: meta.get(k) for k in ("digest", "filename", "mtime")}
    return "sha256:" + hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


class UrlFetcher:
    def __init__(self, root: KilnRoot) -> None:
        self.root = root

    def fetch(self, url: str, checksum: str | None) -> str:
        base = _dir(self.root, url)
        base.mkdir(parents=True, exist_ok=True)
        meta_path = base / "meta.json"
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            meta = {}
        headers = {}
        if meta.get("etag") and (base / "content").is_file():
            headers["If-None-Match"] = meta["etag"]
        try:
            with (
                httpx.Client(
                    follow_redirects=True, verify=ssl.create_default_context(), timeout=60
                ) as client,
                client.stream("GET", url, headers=headers) as resp,
            ):
                if resp.status_code == 304:
                    digest = str(meta["digest"])
                else:
                    if resp.status_code >= 400:
                        raise KilnError(f"cannot download {url}: HTTP {resp.status_code}")
                    h = hashlib.sha256()
                    with atomic_writer(base / "content") as fh:
                        for chunk in resp.iter_bytes(1 << 20):
                            h.update(chunk)
                            fh.write(chunk)
                    digest = "sha256:" + h.hexdigest()
                    mtime = _last_modified(resp.headers.get("last-modified"))
                    path = urllib.parse.urlparse(str(resp.url)).path
                    meta = {
                        "digest": digest,
                        "etag": resp.headers.get("etag"),
                        "mtime": mtime,
                        "filename": posixpath.basename(path.rstrip("/")) or "index.html",
                    }
                    write_atomic(meta_path, json.dumps(meta).encode())
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise KilnError(f"cannot download {url}: {exc}") from exc
        except OSError as exc:
            raise KilnError(f"cannot store the download of {url}: {exc}") from exc
        if checksum and checksum != digest:
            os.unlink(base / "content")
            raise KilnError(
                f"checksum mismatch for {url}", why=f"expected {checksum}, got {digest}"
            )
        return _source_digest(meta)


def _last_modified(header: str | None) -> float | None:
    if not header:
        return None
    try:
        return email.utils.parsedate_to_datetime(header).timestamp()
    except (TypeError, ValueError):
        return None
