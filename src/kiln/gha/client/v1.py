"""The v1 REST API under ``<ACTIONS_CACHE_URL>_apis/artifactcache/``.

Lookup ``GET cache?keys=…&version=…`` (200 entry, 204 miss); save: reserve
``POST caches`` (409 when the key exists), ``PATCH caches/{id}`` chunks with
``Content-Range: bytes S-E/*`` in parallel and out of order, commit ``POST caches/{id}``
with the size. The ``archiveLocation`` of an entry is downloaded without the token.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from urllib.parse import urlencode

import httpx

from kiln.errors import CacheError
from kiln.gha.client.common import Transfer, check_keys, json_body, json_object
from kiln.gha.client.model import GhaEntry
from kiln.gha.client.requester import Requester
from kiln.gha.client.source import Source, run_parallel

ACCEPT = "application/json;api-version=6.0-preview.1"


def api_base(url: str) -> str:
    """The API root under *url*, which keeps its path (GitHub's carries a tenant id)."""
    return url.rstrip("/") + "/_apis/artifactcache/"


def already_exists(response: httpx.Response) -> bool:
    """A reservation refused because the key exists (or is being saved right now)."""
    if response.status_code == 409:
        return True
    if response.status_code not in (400, 403):
        return False
    try:
        data = json.loads(response.read().decode("utf-8-sig"))
    except (ValueError, httpx.HTTPError):
        return False
    if not isinstance(data, dict):
        return False
    type_key, message = str(data.get("typeKey") or ""), str(data.get("message") or "")
    return "AlreadyExists" in type_key or "already exists" in message.lower()


class V1Api:
    def __init__(self, requester: Requester, url: str, token: str, transfer: Transfer) -> None:
        self.requester = requester
        self.base = api_base(url)
        self.transfer = transfer
        self._auth = {"Authorization": f"Bearer {token}", "Accept": ACCEPT}

    def _headers(self, **extra: str) -> dict[str, str]:
        return {**self._auth, **extra}

    def lookup(self, keys: Sequence[str], version: str) -> GhaEntry | None:
        check_keys(keys)
        what = f"cannot look up cache key {keys[0]}"
        url = self.base + "cache?" + urlencode({"keys": ",".join(keys), "version": version})
        response = self.requester.send("GET", url, what=what, headers=self._headers())
        self.requester.check(response, what, ok=(200, 204))
        if response.status_code == 204 or not response.content.strip():
            return None
        data = json_object(response, what)
        key, location = data.get("cacheKey"), data.get("archiveLocation")
        if not isinstance(key, str) or not key:
            return None
        if not isinstance(location, str) or not location:
            raise CacheError(f"{what}: the cache service gave no download location")
        found_version = data.get("cacheVersion")
        if not isinstance(found_version, str) or not found_version:
            found_version = version
        return GhaEntry(key, found_version, location)

    def save(self, key: str, source: Source, version: str) -> bool:
        check_keys([key])
        cache_id = self._reserve(key, version, source.size)
        if cache_id is None:
            return False
        tasks = [
            functools.partial(self._chunk, cache_id, key, source, start, length)
            for start, length in source.ranges(self.transfer.chunk_size)
        ]
        run_parallel(tasks, self.transfer.parallel)
        self._commit(cache_id, key, version, source.size)
        return True

    def _reserve(self, key: str, version: str, size: int) -> int | None:
        what = f"cannot save cache key {key}"
        body = json_body({"key": key, "version": version, "cacheSize": size})
        headers = self._headers(**{"Content-Type": "application/json"})
        response = self.requester.send(
            "POST", self.base + "caches", what=what, headers=headers, body=body
        )
        if already_exists(response):
            response.close()
            return None
        self.requester.check(response, what, ok=(200, 201))
        data = json_object(response, what)
        # the npm client reads `cacheId`, Go's JSON decoder matches `cacheID` too
        value = next((v for k, v in data.items() if k.lower() == "cacheid"), None)
        if not isinstance(value, int) or isinstance(value, bool) or value == 0:
            raise CacheError(f"{what}: the cache service returned no cache id")
        return value

    def _chunk(self, cache_id: int, key: str, source: Source, start: int, length: int) -> None:
        what = f"cannot upload cache key {key}"
        end = start + length - 1
        headers = self._headers(
            **{
                "Content-Type": "application/octet-stream",
                "Content-Range": f"bytes {start}-{end}/*",
                "Content-Length": str(length),
            }
        )
        body = source.reader(start, length, self.transfer.sent)
        response = self.requester.send(
            "PATCH", f"{self.base}caches/{cache_id}", what=what, headers=headers, body=body
        )
        self.requester.check(response, what, ok=(200, 204))

    def _commit(self, cache_id: int, key: str, version: str, size: int) -> None:
        what = f"cannot commit cache key {key}"
        headers = self._headers(**{"Content-Type": "application/json"})
        response = self.requester.send(
            "POST",
            f"{self.base}caches/{cache_id}",
            what=what,
            headers=headers,
            body=json_body({"size": size}),
        )
        if response.status_code == 404:
            # a retried commit whose first answer was lost finds nothing pending any more
            response.close()
            found = self.lookup([key], version)
            if found is not None and found.key == key:
                return
            raise CacheError(
                f"{what}: the upload vanished before it was committed",
                why="the cache service forgot the reservation (expired?)",
            )
        self.requester.check(response, what, ok=(200, 204))
