"""The management API under ``/_kiln/``: health, stats, listing and removing entries.

``GET /_kiln/health`` needs no token. The rest need a bearer token of the server:

- ``GET /_kiln/v1/stats``: any valid token;
- ``GET /_kiln/v1/entries?key=PREFIX&scope=S&pending=1``: an admin token sees every scope,
  another token the scopes it may read;
- ``DELETE /_kiln/v1/entries/<id>``: an admin token, or a token that may write the
  entry's scope.

An admin token is one minted with ``kiln cache token --admin`` (or on the fly by
``kiln cache ls/rm --secret-file``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from kiln.gha.server.common import Context
from kiln.gha.server.errors import Forbidden, Invalid, NotFound, ServiceError
from kiln.gha.server.eviction import Evictor
from kiln.gha.server.metadata.base import COUNTERS, Entry

PREFIX = "/_kiln/v1"
Endpoint = Callable[[Request], Awaitable[Response]]


def entry_json(entry: Entry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "scope": entry.scope,
        "key": entry.key,
        "version": entry.version,
        "state": entry.state,
        "size": entry.size,
        "created_at": entry.created_at,
        "committed_at": entry.committed_at,
        "last_access": entry.last_access,
        "hits": entry.hits,
    }


def _guard(fn: Endpoint) -> Endpoint:
    async def wrapped(request: Request) -> Response:
        try:
            return await fn(request)
        except ServiceError as exc:
            return JSONResponse({"error": exc.message}, status_code=exc.status)

    return wrapped


def routes(ctx: Context, evictor: Evictor) -> list[BaseRoute]:
    service = ctx.service
    metadata = service.metadata

    async def health(_: Request) -> Response:
        return JSONResponse({"ok": True})

    @_guard
    async def stats(request: Request) -> Response:
        ctx.grant(request)
        totals = await service.db(metadata.totals)
        counters = await service.db(metadata.counters)
        body: dict[str, Any] = {
            "entries": totals.entries,
            "bytes": totals.bytes,
            "pending_uploads": totals.pending,
            "max_size": ctx.settings.max_size,
            "max_entry_size": ctx.settings.entry_cap,
            "max_age_seconds": ctx.settings.max_age,
        }
        body.update({name: counters.get(name, 0) for name in COUNTERS})
        return JSONResponse(body)

    @_guard
    async def entries(request: Request) -> Response:
        grant = ctx.grant(request)
        q = request.query_params
        scope = q.get("scope")
        scopes: list[str] | None = None if grant.admin else list(grant.read_scopes)
        if scope is not None:
            if scopes is not None and scope not in scopes:
                raise Forbidden(f"the token may not read scope {scope}")
            scopes = [scope]
        try:
            limit = min(int(q.get("limit", "1000")), 10000)
        except ValueError as exc:
            raise Invalid("limit must be an integer") from exc
        found = await service.db(
            metadata.list_entries,
            scopes,
            q.get("key", ""),
            include_pending=q.get("pending") in ("1", "true"),
            limit=limit,
        )
        return JSONResponse({"entries": [entry_json(e) for e in found]})

    @_guard
    async def remove(request: Request) -> Response:
        grant = ctx.grant(request)
        entry = await service.db(metadata.get, request.path_params["entry_id"])
        if entry is None:
            raise NotFound("no such entry")
        if not grant.can_write(entry.scope):
            raise Forbidden(f"the token may not write scope {entry.scope}")
        gone = await service.remove(entry.id)
        if gone is None:
            raise NotFound("no such entry")
        return JSONResponse({"removed": entry_json(gone)})

    @_guard
    async def evict(request: Request) -> Response:
        grant = ctx.grant(request)
        if not grant.admin:
            raise Forbidden("an admin token is required")
        report = await anyio.to_thread.run_sync(lambda: evictor.run(full=True))
        return JSONResponse(
            {
                "abandoned": report.abandoned,
                "expired": report.expired,
                "evicted": report.evicted,
                "orphans": report.orphans,
                "freed_bytes": report.freed_bytes,
            }
        )

    return [
        Route("/_kiln/health", health, methods=["GET"]),
        Route(f"{PREFIX}/stats", stats, methods=["GET"]),
        Route(f"{PREFIX}/entries", entries, methods=["GET"]),
        Route(f"{PREFIX}/entries/{{entry_id:int}}", remove, methods=["DELETE"]),
        Route(f"{PREFIX}/evict", evict, methods=["POST"]),
    ]
