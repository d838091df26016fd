"""The GhaClient's requests: :class:`~kiln.http.sender.Sender` with gha's errors.

Retries follow :mod:`kiln.http.retry` (a 429 holds back every request of the client);
everything that goes wrong becomes a :class:`~kiln.errors.CacheError` that names no
secret (the token, a signed URL's query).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import httpx

from kiln.errors import CacheError
from kiln.gha.client.errors import status_error, transport_error
from kiln.http.retry import Budget, RetryPolicy, retryable_status
from kiln.http.sender import Body, Sender, Throttled, Unanswered


class Requester:
    """One :class:`Sender` shared by every thread of a :class:`GhaClient`."""

    def __init__(self, sender: Sender, *, secrets: tuple[str, ...] = ()) -> None:
        self.sender = sender
        self.secrets = secrets

    @property
    def policy(self) -> RetryPolicy:
        return self.sender.policy

    def send(
        self,
        method: str,
        url: str,
        *,
        what: str,
        headers: Mapping[str, str] | None = None,
        body: Body = None,
        stream: bool = False,
        signed: bool = False,
        budget: Budget | None = None,
    ) -> httpx.Response:
        """The first answer that is not worth retrying; a response sent back with
        ``stream=True`` must be closed by the caller. Raises :class:`CacheError` when the
        service cannot be reached, or keeps failing until the budget is spent."""
        try:
            response = self.sender.send(
                method, url, headers=headers, body=body, stream=stream, budget=budget
            )
        except Unanswered as failure:
            raise transport_error(url, what, failure.error, self.secrets) from failure.error
        except Throttled as held:
            raise CacheError(
                f"{what}: the cache service is throttling requests",
                why=str(held),
            ) from None
        if retryable_status(response.status_code):  # retried until the budget ran out
            return self.check(response, what, ok=(), signed=signed)
        return response

    def check(
        self,
        response: httpx.Response,
        what: str,
        *,
        ok: Iterable[int] = (200,),
        signed: bool = False,
    ) -> httpx.Response:
        """*response* if its status is in *ok*; otherwise (closing it) a CacheError."""
        if response.status_code in set(ok):
            return response
        try:
            raise status_error(response, what, secrets=self.secrets, signed=signed)
        finally:
            response.close()

    def close(self) -> None:
        self.sender.close()
