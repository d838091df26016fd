"""The one send loop of kiln's HTTP users: a request retried under a :class:`RetryPolicy`.

:meth:`Sender.send` returns the first response not worth retrying, or the last one when
the budget is spent: statuses are the caller's to judge. A request that got no answer
raises :class:`Unanswered` (its ``error`` is what httpx raised), one held back by a 429
past its budget :class:`Throttled`; each user turns these into its own errors. A 429 holds
back every request of the same sender (parallel uploads would otherwise keep hammering a
throttling service). Redirects are followed hop by hop, each through the client for its
own URL, so a plain-HTTP URL redirecting to HTTPS still gets its certificate checked.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping

import httpx

from kiln.http.clients import Clients
from kiln.http.retry import DROPPED, Budget, RetryPolicy, retryable_status

log = logging.getLogger(__name__)

MAX_REDIRECTS = 20

Body = bytes | Callable[[], Iterable[bytes]] | None
"""A request body: bytes, or a factory of a fresh chunk iterator (so retries resend it)."""


class Unanswered(Exception):
    """No (complete) answer: ``error`` is the httpx exception. Raised at once for a
    refused connection or an unknown host, after the budget for a dropped one."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error) or type(error).__name__)
        self.error = error


class Throttled(Exception):
    """A 429 holds requests back ``wait`` more seconds, past this request's budget; its
    text says so, for the *why* of the caller's error."""

    def __init__(self, wait: float) -> None:
        super().__init__(f"asked to wait {wait:.0f}s, past the time budget")
        self.wait = wait


def redact(url: str | httpx.URL) -> str:
    """*url* without its query string or credentials: ``scheme://host[:port]/path``
    (a signed URL carries its signature in the query)."""
    try:
        u = httpx.URL(str(url))
    except httpx.InvalidURL:
        return "<invalid URL>"
    return f"{u.scheme}://{u.netloc.decode('ascii', 'replace')}{u.path}"


class Sender:
    """Sends requests through *clients* under *policy*; safe to share between threads."""

    def __init__(self, clients: Clients, policy: RetryPolicy | None = None) -> None:
        self.clients = clients
        self.policy = policy or RetryPolicy()
        self._lock = threading.Lock()
        self._hold_until = 0.0  # set by a 429: nobody sends before then

    def send(
        self,
        method: str,
        url: str | httpx.URL,
        *,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str | list[str]] | None = None,
        body: Body = None,
        stream: bool = False,
        retry: bool = True,
        follow_redirects: bool = False,
        budget: Budget | None = None,
    ) -> httpx.Response:
        """Send one request, retrying while *retry* is set and *budget* (default: a fresh
        one of the policy) lasts. A response sent back with ``stream=True`` must be closed
        by the caller."""
        budget = self.policy.budget() if budget is None else budget
        while True:
            self._wait_out_hold(budget)
            content = body() if callable(body) else body
            try:
                response = self._exchange(
                    method, url, headers, params, content, stream, follow_redirects
                )
            except DROPPED as exc:
                log.debug("%s %s: %s", method, redact(url), type(exc).__name__)
                if retry and budget.pause():
                    continue
                raise Unanswered(exc) from exc
            except (httpx.HTTPError, httpx.InvalidURL) as exc:
                raise Unanswered(exc) from exc
            status = response.status_code
            if not retryable_status(status):
                return response
            wait = budget.next_delay(response)
            if status == 429:
                self._hold(wait)
            if not (retry and budget.spend(wait)):
                return response
            response.close()
            log.debug("%s %s answered %d; retrying in %.1fs", method, redact(url), status, wait)
            if status != 429:  # a 429 is waited out through the hold, like everyone else
                self.policy.sleep(wait)

    def _exchange(
        self,
        method: str,
        url: str | httpx.URL,
        headers: Mapping[str, str] | None,
        params: Mapping[str, str | list[str]] | None,
        content: bytes | Iterable[bytes] | None,
        stream: bool,
        follow_redirects: bool,
    ) -> httpx.Response:
        client = self.clients.for_url(url)
        request = client.build_request(method, url, headers=headers, params=params, content=content)
        response = client.send(request, stream=stream, follow_redirects=False)
        hops = 0
        while follow_redirects and response.next_request is not None:
            hop = response.next_request
            response.close()
            hops += 1
            if hops > MAX_REDIRECTS:
                raise httpx.TooManyRedirects("Exceeded maximum allowed redirects.", request=hop)
            response = self.clients.for_url(hop.url).send(
                hop, stream=stream, follow_redirects=False
            )
        return response

    def _hold(self, seconds: float) -> None:
        with self._lock:
            self._hold_until = max(self._hold_until, self.policy.clock() + seconds)

    def _wait_out_hold(self, budget: Budget) -> None:
        with self._lock:
            held = self._hold_until - self.policy.clock()
        if held <= 0:
            return
        if not budget.fits(held):
            raise Throttled(held)
        self.policy.sleep(held)

    def close(self) -> None:
        self.clients.close()

    def __enter__(self) -> Sender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
