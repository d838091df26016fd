"""A registry session: transport + authentication + accounting, shared by pull and push."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import httpx

from kiln.http.sender import Body
from kiln.http.stats import TransferStats
from kiln.registry.auth import Authenticator
from kiln.registry.dockerconfig import CredentialSource
from kiln.registry.reference import Reference, api_host
from kiln.registry.transport import Transport


class Session:
    """Sends authenticated requests to registries; safe to share between threads."""

    def __init__(
        self,
        credentials: CredentialSource,
        transport: Transport,
        stats: TransferStats,
        category: str,
    ) -> None:
        self.transport = transport
        self.auth = Authenticator(credentials, transport)
        self.stats = stats
        self.category = category

    def url(self, ref: Reference, suffix: str) -> str:
        """``<scheme>://<api host>/v2/<repository>/<suffix>``."""
        return f"{self.transport.base_url(ref.api_host)}/v2/{ref.repository}/{suffix}"

    def request(
        self,
        registry: str,
        method: str,
        url: str | httpx.URL,
        *,
        scopes: Sequence[str],
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str | list[str]] | None = None,
        body: Body = None,
        stream: bool = False,
        retry: bool = True,
        follow_redirects: bool = False,
    ) -> httpx.Response:
        """One request to *registry*, answering one authentication challenge if needed.

        Credentials are only sent to the registry's own host (an upload location or a
        redirect elsewhere gets none). A 401 that survives the challenge is returned as
        is; callers turn statuses into errors.
        """
        host = api_host(registry)
        ours = httpx.URL(str(url)).netloc.decode() == host
        base = dict(headers or {})
        sent = self.auth.headers(host, scopes) if ours else {}
        response = self.transport.send(
            method,
            url,
            registry=registry,
            headers={**base, **sent},
            params=params,
            body=body,
            stream=stream,
            retry=retry,
            follow_redirects=follow_redirects,
        )
        if response.status_code != 401 or not ours:
            return response
        if not self.auth.on_unauthorized(host, response, scopes, sent.get("Authorization")):
            return response
        response.close()
        return self.transport.send(
            method,
            url,
            registry=registry,
            headers={**base, **self.auth.headers(host, scopes)},
            params=params,
            body=body,
            stream=stream,
            retry=retry,
            follow_redirects=follow_redirects,
        )

    def close(self) -> None:
        self.transport.close()
