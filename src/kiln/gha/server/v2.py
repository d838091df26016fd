"""The v2 twirp API: ``POST /twirp/github.actions.results.api.v1.CacheService/<Method>``.

JSON only (both the npm client and go-actions-cache speak JSON), snake_case field names
(camelCase accepted too, as protobuf JSON parsers do). Errors are twirp errors,
``{"code": …, "msg": …}`` with the matching HTTP status: a duplicate entry is 409
``already_exists`` (BuildKit's exporter treats a 200 ``ok: false`` as a failure). A miss
is 200 ``{"ok": false}``.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from kiln.gha.server.common import Context, as_int, read_json
from kiln.gha.server.errors import Invalid, ServiceError
from kiln.gha.server.service import check_key, check_version

SERVICE = "github.actions.results.api.v1.CacheService"
PREFIX = f"/twirp/{SERVICE}"


# twirp's error codes and the HTTP status each one travels with
_STATUS = {
    "invalid_argument": 400,
    "out_of_range": 400,
    "unauthenticated": 401,
    "permission_denied": 403,
    "not_found": 404,
    "bad_route": 404,
    "already_exists": 409,
    "internal": 500,
    "unavailable": 503,
}


def twirp_error(code: str, msg: str) -> JSONResponse:
    return JSONResponse({"code": code, "msg": msg}, status_code=_STATUS.get(code, 500))


def _field(body: dict[str, Any], snake: str, camel: str) -> Any:
    return body[snake] if snake in body else body.get(camel)


def routes(ctx: Context) -> list[BaseRoute]:
    service = ctx.service

    async def create(request: Request, body: dict[str, Any]) -> dict[str, Any]:
        grant = ctx.grant(request)
        key, version = check_key(body.get("key")), check_version(body.get("version"))
        entry = await service.reserve(grant, key, version)
        return {"ok": True, "signed_upload_url": ctx.upload_url(request, entry.blob)}

    async def finalize(request: Request, body: dict[str, Any]) -> dict[str, Any]:
        grant = ctx.grant(request)
        size = as_int(_field(body, "size_bytes", "sizeBytes"), "size_bytes")
        key, version = check_key(body.get("key")), check_version(body.get("version"))
        entry = await service.finalize(grant, key, version, size)
        return {"ok": True, "entry_id": str(entry.id)}

    async def download_url(request: Request, body: dict[str, Any]) -> dict[str, Any]:
        grant = ctx.grant(request)
        restore = _field(body, "restore_keys", "restoreKeys") or []
        if not isinstance(restore, list):
            raise Invalid("restore_keys must be a list of strings")
        keys = [check_key(k) for k in [body.get("key"), *restore]]
        entry = await service.lookup(grant, keys, check_version(body.get("version")))
        if entry is None:
            return {"ok": False, "signed_download_url": "", "matched_key": ""}
        return {
            "ok": True,
            "signed_download_url": ctx.download_url(request, entry.blob),
            "matched_key": entry.key,
        }

    methods = {
        "CreateCacheEntry": create,
        "FinalizeCacheEntryUpload": finalize,
        "GetCacheEntryDownloadURL": download_url,
    }

    async def dispatch(request: Request) -> Response:
        method = methods.get(request.path_params["method"])
        if method is None:
            return twirp_error("bad_route", "no such method")
        ctype = request.headers.get("content-type", "application/json").split(";")[0].strip()
        if ctype != "application/json":
            return twirp_error("bad_route", f"unsupported Content-Type {ctype}")
        try:
            body = await read_json(request, ctx.settings.max_json_body)
            return JSONResponse(await method(request, body))
        except ServiceError as exc:
            return twirp_error(exc.twirp, exc.message)

    return [Route(f"{PREFIX}/{{method}}", dispatch, methods=["POST"])]
