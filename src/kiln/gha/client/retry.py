"""Sending one request, retrying what is worth retrying until the time budget runs out.

Retried: 429 (waiting as long as ``Retry-After`` says), 408 and 5xx (but 501), and
connections that were made and then dropped or stalled. A 429 holds back every request
of the client, not just the one that met it (as go-actions-cache's shared backoff pool
does): parallel chunk uploads would otherwise keep hammering a throttling service. A
refused connection or an unknown host fails at once: the service is not there.

Everything httpx raises is translated here into :class:`~kiln.errors.CacheError`.
"""

from __future__ import annotations

import email.utils
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import httpx

from kiln.errors import CacheError
from kiln.gha.client.errors import redact, status_error, transport_error

log = logging.getLogger("kiln.gha.client")

# the connection was made, then dropped or stalled: worth another try
DROPPED: tuple[type[Exception], ...] = (
    httpx.ReadError,
    httpx.WriteError,
    httpx.RemoteProtocolError,
    httpx.ReadTimeout,
    httpx.WriteTimeout,
    httpx.PoolTimeout,
    httpx.CloseError,
)

Content = bytes | Iterable[bytes] | None
Body = bytes | Callable[[], Content] | None
"""A request body: bytes, or a factory of a fresh body (so a retry can send it again)."""


def retryable(status: int) -> bool:
    return status in (408, 429) or (status >= 500 and status != 501)


def retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """``Retry-After`` in seconds: a number of seconds, or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if seconds == seconds else None  # NaN
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with jitter between ``base`` and ``cap`` seconds."""

    base: float = 0.25
    cap: float = 10.0

    def delay(self, attempt: int) -> float:
        return float(min(self.cap, self.base * 2.0 ** min(attempt, 30)) * random.uniform(0.75, 1.0))


@dataclass(slots=True)
class Requester:
    """One httpx client shared by every thread of a :class:`GhaClient`."""

    client: httpx.Client
    timeout: float  # how long one request keeps being retried
    secrets: tuple[str, ...] = ()
    backoff: Backoff = field(default_factory=Backoff)
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _hold_until: float = 0.0  # set by a 429: nobody sends before then

    def deadline(self) -> float:
        return self.clock() + self.timeout

    def wait_out(self, delay: float, deadline: float) -> bool:
        """Sleep *delay* seconds unless that would end past *deadline* (then False)."""
        if self.clock() + delay > deadline:
            return False
        if delay > 0:
            self.sleep(delay)
        return True

    def _hold(self, delay: float) -> None:
        with self._lock:
            self._hold_until = max(self._hold_until, self.clock() + delay)

    def _held(self) -> float:
        with self._lock:
            return max(0.0, self._hold_until - self.clock())

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
        deadline: float | None = None,
    ) -> httpx.Response:
        """The first answer that is not worth retrying; a response sent back with
        ``stream=True`` must be closed by the caller. Raises :class:`CacheError` when the
        service cannot be reached, or keeps failing until the budget is spent."""
        deadline = self.deadline() if deadline is None else deadline
        attempt = 0
        while True:
            held = self._held()
            if held and not self.wait_out(held, deadline):
                raise CacheError(
                    f"{what}: the cache service is throttling requests",
                    why=f"asked to wait {held:.0f}s, past the time budget",
                )
            content = body() if callable(body) else body
            try:
                request = self.client.build_request(method, url, headers=headers, content=content)
                response = self.client.send(request, stream=stream)
            except DROPPED as exc:
                delay = self.backoff.delay(attempt)
                attempt += 1
                log.debug(
                    "%s %s: %s; retrying in %.1fs", method, redact(url), type(exc).__name__, delay
                )
                if not self.wait_out(delay, deadline):
                    raise transport_error(url, what, exc, self.secrets) from exc
                continue
            except (httpx.HTTPError, httpx.InvalidURL) as exc:
                raise transport_error(url, what, exc, self.secrets) from exc
            if not retryable(response.status_code):
                return response
            delay = self.backoff.delay(attempt)
            attempt += 1
            after = retry_after(response.headers.get("retry-after"))
            if after is not None:  # honoured, but never a busy loop on "Retry-After: 0"
                delay = max(after, self.backoff.base)
            if response.status_code == 429:
                self._hold(delay)
            log.debug(
                "%s %s answered %d; retrying in %.1fs",
                method,
                redact(url),
                response.status_code,
                delay,
            )
            if self.clock() + delay > deadline:
                try:
                    raise status_error(response, what, secrets=self.secrets, signed=signed)
                finally:
                    response.close()
            response.close()
            if response.status_code != 429:  # a 429 is waited out by the hold above
                self.sleep(delay)

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
