"""Streaming an entry from its (signed) download URL, resuming where a drop cut it.

The first request is a plain GET; after a dropped connection the download goes on with
``Range: bytes=N-`` and insists on a 206 whose ``Content-Range`` starts at N (as
go-actions-cache does). A 401/403 from the URL (a signature that expired) is answered
once by looking the entry up again for a fresh URL. Nothing is buffered: pieces are
yielded as they arrive.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Generator

import httpx

from kiln.errors import CacheError
from kiln.gha.client.model import GhaEntry
from kiln.gha.client.requester import Requester
from kiln.http.retry import DROPPED

log = logging.getLogger("kiln.gha.client")
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


def announced_size(response: httpx.Response, offset: int, what: str) -> int | None:
    """The entry's total size as the response states it (None when it does not)."""
    if response.status_code == 206:
        m = _CONTENT_RANGE.match(response.headers.get("content-range", "").strip())
        if m is None or int(m.group(1)) != offset:
            raise CacheError(
                f"{what}: the server resumed the download at the wrong place",
                why=f"asked for bytes {offset}-, got Content-Range "
                f"{response.headers.get('content-range')!r}",
            )
        return None if m.group(3) == "*" else int(m.group(3))
    if offset:
        raise CacheError(
            f"{what}: the server cannot resume a download",
            why=f"it answered {response.status_code} to Range: bytes={offset}-, not 206",
        )
    length = response.headers.get("content-length")
    return int(length) if length and length.isdigit() else None


def stream_entry(
    requester: Requester,
    entry: GhaEntry,
    *,
    refresh: Callable[[], GhaEntry | None],
    received: Callable[[int], None],
) -> Generator[bytes, None, None]:
    what = f"cannot download cache key {entry.key}"
    url = entry.download_url
    offset, total = 0, None
    refreshed = False
    budget = requester.policy.budget()  # shared by every request of the download
    while True:
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        response = requester.send(
            "GET", url, what=what, headers=headers, stream=True, signed=True, budget=budget
        )
        failure: Exception | None = None
        progressed = False
        try:
            if response.status_code in (401, 403) and not refreshed:
                refreshed = True
                fresh = refresh()
                if fresh is not None:
                    log.debug("download URL of %s refused; looked it up again", entry.key)
                    url = fresh.download_url
                    continue
            requester.check(response, what, ok=(200, 206), signed=True)
            size = announced_size(response, offset, what)
            if total is None:
                total = size
            elif size is not None and size != total:
                raise CacheError(f"{what}: the entry changed size during the download")
            try:
                for piece in response.iter_bytes():
                    if piece:
                        offset += len(piece)
                        progressed = True
                        received(len(piece))
                        yield piece
            except DROPPED as exc:
                failure = exc
        finally:
            response.close()
        if failure is None:
            if total is None or offset == total:
                return
            if offset > total:
                raise CacheError(
                    f"{what}: the server sent more than the {total} bytes it announced"
                )
        if progressed:  # a fresh budget for every stretch that moved forward
            budget = requester.policy.budget()
        log.debug(
            "download of %s broke off at byte %d (%s)",
            entry.key,
            offset,
            type(failure).__name__ if failure else "short body",
        )
        if not budget.pause():
            raise CacheError(
                f"{what}: the download kept breaking off",
                why=f"at byte {offset}"
                + (f" of {total}" if total else "")
                + (f": {failure}" if failure else ""),
            )
