"""The ASGI application: ``create_app(settings, storage, metadata)``.

One listener serves the v1 REST API (under any path prefix ending in
``/_apis/artifactcache/``), the v2 twirp API (at the root, or under a prefix), the signed
blob URLs and the management API. A background task runs the eviction pass every
``eviction_interval`` seconds and soon after each commit.

Request logging is done here, not by uvicorn's access log, because it must never write
a query string: signed URLs carry their signature there. Tokens travel in the
``Authorization`` header, which is never logged either.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio.to_thread
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kiln.gha.server import admin, blob, v1, v2
from kiln.gha.server.common import Context
from kiln.gha.server.eviction import Evictor
from kiln.gha.server.metadata.base import MetadataStore
from kiln.gha.server.service import CacheService
from kiln.gha.server.settings import ServerSettings
from kiln.gha.server.storage.base import Storage

log = logging.getLogger("kiln.gha.server")
access_log = logging.getLogger("kiln.gha.server.access")
_PREFIXED = ("/_apis/artifactcache/", "/twirp/")


class ServerMiddleware:
    """Strip base paths, add ``x-ms-request-id`` everywhere, log requests without queries."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        for marker in _PREFIXED:
            at = path.find(marker)
            if at > 0:
                scope = dict(scope)
                scope["path"] = path[at:]
                scope["raw_path"] = path[at:].encode()
                break
        request_id = str(uuid.uuid4())
        started = time.monotonic()
        status = 0

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-ms-request-id", request_id.encode()))
                message = dict(message)
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            client = scope.get("client") or ("-", 0)
            access_log.info(
                '%s "%s %s" %d %.1fms',
                client[0],
                scope["method"],
                path,  # never the query string: it may hold a URL signature
                status,
                (time.monotonic() - started) * 1000,
            )


async def _client_gone(request: Request, exc: Exception) -> Response:
    log.info("client went away during %s %s", request.method, request.url.path)
    return Response(status_code=400)


def create_app(
    settings: ServerSettings,
    storage: Storage,
    metadata: MetadataStore,
    *,
    clock: Callable[[], float] = time.time,
) -> Starlette:
    """The cache server as an ASGI app; *storage* and *metadata* are owned by the caller."""
    keys = settings.keys
    evictor = Evictor(settings, storage, metadata, clock=clock)
    wake: dict[str, asyncio.Event] = {}

    def kick() -> None:
        event = wake.get("event")
        if event is not None:
            event.set()

    service = CacheService(settings, storage, metadata, clock=clock, on_commit=kick)
    ctx = Context(settings=settings, service=service, jwt_key=keys.jwt, url_key=keys.url)

    async def maintenance(event: asyncio.Event) -> None:
        next_full = 0.0
        while True:
            full = time.monotonic() >= next_full
            if full:
                next_full = time.monotonic() + settings.eviction_interval
            try:
                await anyio.to_thread.run_sync(functools.partial(evictor.run, full=full))
            except Exception:
                log.exception("eviction pass failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), max(next_full - time.monotonic(), 0.0))
            event.clear()

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        event = asyncio.Event()
        wake["event"] = event
        task = asyncio.create_task(maintenance(event))
        try:
            yield
        finally:
            wake.pop("event", None)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    routes = v1.routes(ctx) + v2.routes(ctx) + blob.routes(ctx) + admin.routes(ctx, evictor)
    handlers: dict[Any, Any] = {ClientDisconnect: _client_gone}
    app = Starlette(
        routes=routes,
        middleware=[Middleware(ServerMiddleware)],
        lifespan=lifespan,
        exception_handlers=handlers,
    )
    app.state.service = service
    app.state.evictor = evictor
    return app
