"""The v2 twirp API: ``POST /twirp/github.actions.results.api.v1.CacheService/<Method>``
on the root of ``ACTIONS_RESULTS_URL`` (like the npm client, any base path is dropped).

Lookup ``GetCacheEntryDownloadURL`` (a miss is ``ok: false``); save
``CreateCacheEntry`` (409 ``already_exists`` when the key exists) → upload to the signed
URL (:mod:`kiln.gha.client.azure`) → ``FinalizeCacheEntryUpload`` with the size.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import httpx

from kiln.errors import CacheError
from kiln.gha.client.azure import BlobUpload
from kiln.gha.client.common import Transfer, check_keys, json_body, json_object
from kiln.gha.client.model import GhaEntry
from kiln.gha.client.requester import Requester
from kiln.gha.client.source import Source

SERVICE = "github.actions.results.api.v1.CacheService"


def api_base(url: str) -> str:
    u = httpx.URL(url)
    return f"{u.scheme}://{u.netloc.decode('ascii')}/twirp/{SERVICE}/"


def twirp_code(response: httpx.Response) -> str:
    try:
        data = json.loads(response.read().decode("utf-8-sig"))
    except (ValueError, httpx.HTTPError):
        return ""
    return str(data.get("code") or "") if isinstance(data, dict) else ""


class V2Api:
    def __init__(self, requester: Requester, url: str, token: str, transfer: Transfer) -> None:
        self.requester = requester
        self.base = api_base(url)
        self.transfer = transfer
        self._headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    def _call(self, method: str, body: dict[str, Any], what: str) -> httpx.Response:
        return self.requester.send(
            "POST", self.base + method, what=what, headers=self._headers, body=json_body(body)
        )

    def lookup(self, keys: Sequence[str], version: str) -> GhaEntry | None:
        check_keys(keys)
        what = f"cannot look up cache key {keys[0]}"
        # restore_keys repeats the key, as go-actions-cache sends it: GitHub's service
        # prefix-matches restore keys only, and mutable `name#` lookups rely on that
        body = {"key": keys[0], "restore_keys": list(dict.fromkeys(keys)), "version": version}
        response = self.requester.check(self._call("GetCacheEntryDownloadURL", body, what), what)
        data = json_object(response, what)
        if data.get("ok") is not True:
            return None
        url, matched = data.get("signed_download_url"), data.get("matched_key")
        if not isinstance(url, str) or not url:
            raise CacheError(f"{what}: the cache service gave no download URL")
        key = matched if isinstance(matched, str) and matched else keys[0]
        return GhaEntry(key, version, url)

    def save(self, key: str, source: Source, version: str) -> bool:
        check_keys([key])
        what = f"cannot save cache key {key}"
        response = self._call("CreateCacheEntry", {"key": key, "version": version}, what)
        if response.status_code == 409 or (
            response.status_code >= 400 and twirp_code(response) == "already_exists"
        ):
            response.close()
            return False
        data = json_object(self.requester.check(response, what), what)
        url = data.get("signed_upload_url")
        if data.get("ok") is not True or not isinstance(url, str) or not url:
            raise CacheError(
                f"{what}: the cache service refused to create the entry",
                why="CreateCacheEntry answered ok: false",
            )
        BlobUpload(self.requester, url, self.transfer, f"cannot upload cache key {key}").run(source)
        self._finalize(key, version, source.size)
        return True

    def _finalize(self, key: str, version: str, size: int) -> None:
        what = f"cannot commit cache key {key}"
        body = {"key": key, "version": version, "size_bytes": size}
        response = self._call("FinalizeCacheEntryUpload", body, what)
        if response.status_code == 404:
            # a retried finalize whose first answer was lost
            response.close()
            found = self.lookup([key], version)
            if found is not None and found.key == key:
                return
            raise CacheError(
                f"{what}: the upload vanished before it was committed",
                why="the cache service forgot the reservation (expired?)",
            )
        data = json_object(self.requester.check(response, what), what)
        if data.get("ok") is not True:
            raise CacheError(
                f"{what}: the cache service did not finalize the entry",
                why="FinalizeCacheEntryUpload answered ok: false",
            )
