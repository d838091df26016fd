"""Client of the management API (``kiln cache ls``, ``rm``, ``stats``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from kiln.errors import CacheError, UsageError
from kiln.http.clients import new_client


@dataclass(frozen=True, slots=True)
class RemoteEntry:
    id: int
    scope: str
    key: str
    version: str
    state: str
    size: int
    created_at: float
    committed_at: float | None
    last_access: float
    hits: int

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RemoteEntry:
        return cls(
            id=int(data["id"]),
            scope=str(data["scope"]),
            key=str(data["key"]),
            version=str(data["version"]),
            state=str(data["state"]),
            size=int(data["size"]),
            created_at=float(data["created_at"]),
            committed_at=None if data.get("committed_at") is None else float(data["committed_at"]),
            last_access=float(data["last_access"]),
            hits=int(data["hits"]),
        )


class ManagementClient:
    """Talks to ``/_kiln/v1/…`` of a running ``kiln cache serve``."""

    def __init__(self, url: str, token: str, *, timeout: float = 30.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise UsageError(f"invalid cache server URL {url!r}", hint="use http://HOST:PORT")
        self.url = url.rstrip("/")
        # straight to the server, never through a proxy (the admin token must not travel)
        self._client = new_client(verify=url.startswith("https://"), timeout=httpx.Timeout(timeout),
                                  trust_env=False)  # fmt: skip
        self._client.headers["Authorization"] = f"Bearer {token}"

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> ManagementClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _call(self, method: str, path: str, params: dict[str, str] | None = None) -> Any:
        try:
            resp = self._client.request(method, f"{self.url}/_kiln/v1/{path}", params=params)
        except httpx.HTTPError as exc:
            raise CacheError(f"cannot reach the cache server at {self.url}", why=str(exc)) from exc
        if resp.status_code >= 400:
            try:
                detail = str(resp.json().get("error", resp.text))
            except ValueError:
                detail = resp.text[:200]
            hint = None
            if resp.status_code in (401, 403):
                hint = "use an admin token (kiln cache token --admin) or --secret-file"
            raise CacheError(
                f"the cache server refused {method} {path} ({resp.status_code})",
                why=detail,
                hint=hint,
            )
        return resp.json()

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "stats")
        return result

    def entries(
        self, key_prefix: str = "", scope: str | None = None, *, pending: bool = False
    ) -> list[RemoteEntry]:
        params = {"key": key_prefix}
        if scope is not None:
            params["scope"] = scope
        if pending:
            params["pending"] = "1"
        data = self._call("GET", "entries", params)
        return [RemoteEntry.from_json(e) for e in data["entries"]]

    def remove(self, entry_id: int) -> RemoteEntry:
        data = self._call("DELETE", f"entries/{entry_id}")
        return RemoteEntry.from_json(data["removed"])

    def evict(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", "evict")
        return result
