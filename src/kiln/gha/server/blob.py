"""The Azure-Blob-shaped endpoints behind signed URLs: ``/kiln/cache/<blob>``.

Uploads speak the subset of the Blob service that ``@azure/storage-blob`` (npm) and the
Go Azure SDK use against a v2 signed upload URL: Put Blob (``x-ms-blob-type:
BlockBlob``), Put Block (``comp=block&blockid=…``) and Put Block List
(``comp=blocklist``, XML, assembled in list order), each answered 201. Downloads are GET
or HEAD with ``Range`` or ``x-ms-range`` support (206 + ``Content-Range``). Every
response carries ``x-ms-request-id`` (added by the app's middleware: the Go SDK
dereferences it). Errors are Azure's XML ``<Error><Code/><Message/></Error>``.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from email.utils import formatdate

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from kiln.gha.server import signing
from kiln.gha.server.common import Context, body_stream, declared_length, read_body
from kiln.gha.server.errors import (
    Invalid,
    NotFound,
    RangeNotSatisfiable,
    ServiceError,
    TooLarge,
)
from kiln.gha.server.metadata.base import Entry
from kiln.gha.server.storage.base import BLOB_NAME, BlobReader

API_VERSION = "2024-11-04"
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def azure_error(exc: ServiceError) -> Response:
    body = (
        '<?xml version="1.0" encoding="utf-8"?>'
        f"<Error><Code>{exc.azure}</Code><Message>{_xml_escape(exc.message)}</Message></Error>"
    )
    headers = {"x-ms-error-code": exc.azure, "x-ms-version": API_VERSION}
    if isinstance(exc, RangeNotSatisfiable):
        headers["Content-Range"] = f"bytes */{exc.size}"
    return Response(body, status_code=exc.status, media_type="application/xml", headers=headers)


def _xml_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``(start, length)`` of a single byte range, None for the whole entry.

    ``bytes=N-``, ``bytes=N-M`` and ``bytes=-S`` (suffix) are honoured; a list of ranges
    or a malformed header is ignored (the whole entry, as HTTP allows); a range starting
    past the end is refused with 416.
    """
    if not header:
        return None
    m = _RANGE.match(header.strip())
    if m is None or (not m.group(1) and not m.group(2)):
        return None
    first, last = m.group(1), m.group(2)
    if not first:  # suffix: the last S bytes
        suffix = int(last)
        if suffix == 0:
            raise RangeNotSatisfiable("empty suffix range", size)
        start = max(size - suffix, 0)
        return start, size - start
    start = int(first)
    if start >= size:
        raise RangeNotSatisfiable(f"range starts at {start}, the entry has {size} bytes", size)
    end = min(int(last), size - 1) if last else size - 1
    if end < start:
        raise RangeNotSatisfiable("range ends before it starts", size)
    return start, end - start + 1


def parse_block_list(raw: bytes) -> list[str]:
    """The block ids of a Put Block List body, in order (Latest/Committed/Uncommitted)."""
    if b"<!DOCTYPE" in raw.upper() or b"<!ENTITY" in raw.upper():
        raise Invalid("a block list must not declare a DTD or entities")
    try:
        root = ET.fromstring(raw)
    except ET.ParseError as exc:
        raise Invalid(f"the block list is not valid XML: {exc}") from exc
    if root.tag != "BlockList":
        raise Invalid("the block list's root element must be BlockList")
    ids: list[str] = []
    for child in root:
        if child.tag not in ("Latest", "Committed", "Uncommitted"):
            raise Invalid(f"unexpected element {child.tag} in the block list")
        ids.append((child.text or "").strip())
    return ids


def _entry_headers(entry: Entry) -> dict[str, str]:
    stamp = entry.committed_at or entry.created_at
    return {
        "ETag": f'"0x{entry.blob[:16].upper()}"',
        "Last-Modified": formatdate(stamp, usegmt=True),
        "x-ms-version": API_VERSION,
    }


def routes(ctx: Context) -> list[BaseRoute]:
    service = ctx.service

    async def download(request: Request, blob: str) -> Response:
        signing.verify(ctx.url_key, blob, signing.READ, request.query_params)
        entry, reader = await service.open_download(blob)
        try:
            header = request.headers.get("x-ms-range") or request.headers.get("range")
            wanted = parse_range(header, reader.size)
        except RangeNotSatisfiable:
            await reader.close()
            raise
        headers = _entry_headers(entry)
        headers.update(
            {
                "Accept-Ranges": "bytes",
                "x-ms-blob-type": "BlockBlob",
                "Content-Type": "application/octet-stream",
            }
        )
        start, length, status = 0, reader.size, 200
        if wanted is not None:
            start, length = wanted
            status = 206
            headers["Content-Range"] = f"bytes {start}-{start + length - 1}/{reader.size}"
        headers["Content-Length"] = str(length)
        if request.method == "HEAD":
            await reader.close()
            return Response(status_code=status, headers=headers)
        stream = _stream(reader, start, length)
        return StreamingResponse(stream, status_code=status, headers=headers)

    async def upload(request: Request, blob: str) -> Response:
        signing.verify(ctx.url_key, blob, signing.WRITE, request.query_params)
        entry = await service.pending_blob(blob)
        comp = request.query_params.get("comp")
        cap = ctx.settings.entry_cap
        length = declared_length(request)
        if length is not None and length > cap:
            raise TooLarge(f"the body ({length} bytes) is over the {cap} bytes an entry may have")
        if comp is None:
            if request.headers.get("x-ms-blob-type", "BlockBlob") != "BlockBlob":
                raise Invalid("only block blobs are supported")
            await service.put_blob(entry, body_stream(request))
        elif comp == "block":
            block_id = request.query_params.get("blockid")
            if not block_id:
                raise Invalid("Put Block needs a blockid")
            await service.put_block(entry, block_id, body_stream(request))
        elif comp == "blocklist":
            raw = await read_body(request, ctx.settings.max_block_list_body)
            await service.put_block_list(entry, parse_block_list(raw))
        else:
            raise Invalid(f"unsupported operation comp={comp}")
        headers = _entry_headers(entry)
        headers["x-ms-request-server-encrypted"] = "false"
        return Response(status_code=201, headers=headers)

    async def endpoint(request: Request) -> Response:
        blob = request.path_params["blob"]
        try:
            if not BLOB_NAME.match(blob):
                raise NotFound("no such blob")
            if request.method == "PUT":
                return await upload(request, blob)
            return await download(request, blob)
        except ServiceError as exc:
            return azure_error(exc)

    return [Route(f"{signing.BLOB_PATH}{{blob}}", endpoint, methods=["GET", "HEAD", "PUT"])]


async def _stream(reader: BlobReader, start: int, length: int) -> AsyncIterator[bytes]:
    try:
        async for piece in reader.chunks(start, length):
            yield piece
    finally:
        await reader.close()
