"""Uploading to a v2 signed URL, which speaks a subset of Azure Blob storage.

A source of at most one chunk goes up in one Put Blob (``x-ms-blob-type: BlockBlob``);
a larger one as Put Block requests in parallel (``comp=block&blockid=<base64>``, ids of 64
bytes, all the same length as Azure requires, like the Go SDK's) and then one Put Block
List naming the blocks in order. The URL carries its own signature: no token is sent.
"""

from __future__ import annotations

import base64
import functools
import secrets
from urllib.parse import urlencode

from kiln.gha.client.common import Transfer
from kiln.gha.client.requester import Requester
from kiln.gha.client.source import Source, run_parallel

X_MS_VERSION = "2024-11-04"
OK = (200, 201)


def with_query(url: str, **params: str) -> str:
    return url + ("&" if "?" in url else "?") + urlencode(params)


def block_ids(count: int) -> list[str]:
    """*count* distinct base64 block ids of 64 bytes each, in upload order."""
    prefix = secrets.token_hex(16)  # 32 characters, unique to this upload
    return [base64.b64encode(f"{prefix}{i:032d}".encode()).decode() for i in range(count)]


def block_list_xml(ids: list[str]) -> bytes:
    latest = "".join(f"<Latest>{i}</Latest>" for i in ids)
    return f'<?xml version="1.0" encoding="utf-8"?><BlockList>{latest}</BlockList>'.encode()


class BlobUpload:
    def __init__(self, requester: Requester, url: str, transfer: Transfer, what: str) -> None:
        self.requester = requester
        self.url = url
        self.transfer = transfer
        self.what = what

    def run(self, source: Source) -> None:
        ranges = source.ranges(self.transfer.chunk_size)
        if len(ranges) <= 1:
            self._put(self.url, source, 0, source.size, {"x-ms-blob-type": "BlockBlob"})
            return
        ids = block_ids(len(ranges))
        tasks = [
            functools.partial(
                self._put,
                with_query(self.url, comp="block", blockid=block_id),
                source,
                start,
                length,
                {},
            )
            for block_id, (start, length) in zip(ids, ranges, strict=True)
        ]
        run_parallel(tasks, self.transfer.parallel)
        headers = {"x-ms-version": X_MS_VERSION, "Content-Type": "application/xml"}
        response = self.requester.send(
            "PUT",
            with_query(self.url, comp="blocklist"),
            what=self.what,
            headers=headers,
            body=block_list_xml(ids),
            signed=True,
        )
        self.requester.check(response, self.what, ok=OK, signed=True)

    def _put(
        self, url: str, source: Source, start: int, length: int, extra: dict[str, str]
    ) -> None:
        headers = {
            "x-ms-version": X_MS_VERSION,
            "Content-Type": "application/octet-stream",
            "Content-Length": str(length),
            **extra,
        }
        body = source.reader(start, length, self.transfer.sent)
        response = self.requester.send(
            "PUT", url, what=self.what, headers=headers, body=body, signed=True
        )
        self.requester.check(response, self.what, ok=OK, signed=True)
