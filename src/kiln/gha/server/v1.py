"""The legacy v1 REST API under ``<ACTIONS_CACHE_URL>_apis/artifactcache/``.

Used by the npm client whenever ``GITHUB_SERVER_URL`` is not github.com (Gitea, Forgejo,
self-hosted setups), by go-actions-cache without ``ACTIONS_CACHE_SERVICE_V2``, and so by
BuildKit's ``type=gha``. Errors are JSON objects with a ``message`` (and the ``typeKey``
go-actions-cache checks for an existing entry).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from kiln.gha.server.common import Context, as_int, body_stream, read_json
from kiln.gha.server.errors import Conflict, Invalid, ServiceError, TooLarge
from kiln.gha.server.metadata.base import Entry
from kiln.gha.server.service import check_key, check_version

PREFIX = "/_apis/artifactcache"
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\*|\d+)$")
Endpoint = Callable[[Request], Awaitable[Response]]


def _error(exc: ServiceError, status: int | None = None) -> JSONResponse:
    type_key = (
        "ArtifactCacheItemAlreadyExistsException"
        if isinstance(exc, Conflict)
        else "ArtifactCacheException"
    )
    return JSONResponse(
        {
            "$id": "1",
            "innerException": None,
            "message": exc.message,
            "typeName": f"Microsoft.Azure.DevOps.PipelineCache.WebApi.{type_key}",
            "typeKey": type_key,
            "errorCode": 0,
            "eventId": 3000,
        },
        status_code=status or exc.status,
    )


def _guard(fn: Endpoint) -> Endpoint:
    async def wrapped(request: Request) -> Response:
        try:
            return await fn(request)
        except TooLarge as exc:
            # The npm client reports a 400's message as "over the data cap".
            return _error(exc, 400 if request.method == "POST" else 413)
        except ServiceError as exc:
            return _error(exc)

    return wrapped


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def _describe(entry: Entry) -> dict[str, Any]:
    return {
        "cacheKey": entry.key,
        "scope": entry.scope,
        "cacheVersion": entry.version,
        "creationTime": _iso(entry.committed_at),
    }


def routes(ctx: Context) -> list[BaseRoute]:
    service = ctx.service
    settings = ctx.settings

    @_guard
    async def get_entry(request: Request) -> Response:
        grant = ctx.grant(request)
        keys = [k for k in request.query_params.get("keys", "").split(",") if k]
        version = request.query_params.get("version", "")
        entry = await service.lookup(grant, keys, version)
        if entry is None:
            return Response(status_code=204)
        body = _describe(entry)
        body["archiveLocation"] = ctx.download_url(request, entry.blob)
        return JSONResponse(body)

    @_guard
    async def list_or_reserve(request: Request) -> Response:
        grant = ctx.grant(request)
        if request.method == "GET":  # the npm client's diagnostics on a miss (debug only)
            key = request.query_params.get("key", "")
            scopes = grant.read_scopes
            found = await service.db(service.metadata.list_entries, scopes, key, limit=100)
            items = [_describe(e) for e in found]
            return JSONResponse({"totalCount": len(items), "artifactCaches": items})
        body = await read_json(request, settings.max_json_body)
        size = body.get("cacheSize")
        declared = None if size is None else as_int(size, "cacheSize")
        key, version = check_key(body.get("key")), check_version(body.get("version"))
        entry = await service.reserve(grant, key, version, declared)
        return JSONResponse({"cacheId": entry.id}, status_code=201)

    @_guard
    async def upload_or_commit(request: Request) -> Response:
        grant = ctx.grant(request)
        entry = await service.pending_for(grant, request.path_params["cache_id"])
        if request.method == "PATCH":
            m = _CONTENT_RANGE.match(request.headers.get("content-range", ""))
            if m is None:
                raise Invalid("a chunk needs a Content-Range header: bytes START-END/*")
            start, end = int(m.group(1)), int(m.group(2))
            await service.write_chunk(entry, start, end, body_stream(request))
            return Response(status_code=204)
        body = await read_json(request, settings.max_json_body)
        await service.commit(entry, as_int(body.get("size"), "size"))
        return Response(status_code=204)

    return [
        Route(f"{PREFIX}/cache", get_entry, methods=["GET"]),
        Route(f"{PREFIX}/caches", list_or_reserve, methods=["GET", "POST"]),
        Route(f"{PREFIX}/caches/{{cache_id:int}}", upload_or_commit, methods=["PATCH", "POST"]),
    ]
