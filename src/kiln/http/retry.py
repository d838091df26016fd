"""The one retry policy of kiln's HTTP users (registry, GitHub Actions cache, ADD <url>).

Worth another try: 408, 429 and 5xx but 501 (the server will never do it), a connection
that was made and then dropped or stalled, and a connection attempt that timed out
(:data:`DROPPED`: a lost SYN is as transient as a lost packet). A refused connection or
an unknown host fails at once: nothing is listening there. Before a retry kiln waits what
``Retry-After`` says (seconds or an HTTP date; never less than ``base_delay``, so
``Retry-After: 0`` is no busy loop; at most ``max_retry_after`` when that is set, so one
huge value cannot end the request or hold back a whole registry), else an exponential
backoff with jitter. A request ends at whichever runs out first: its time budget
(``deadline`` seconds from its first try) or its tries (``attempts``, None for no cap).
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

# a connection that timed out, or was made and then dropped or stalled: worth another try
DROPPED: tuple[type[httpx.TransportError], ...] = (
    httpx.ConnectTimeout,
    httpx.ReadError,
    httpx.WriteError,
    httpx.RemoteProtocolError,
    httpx.ReadTimeout,
    httpx.WriteTimeout,
    httpx.PoolTimeout,
    httpx.CloseError,
)


def retryable_status(status: int) -> bool:
    """Whether an answer with *status* is worth another try."""
    return status in (408, 429) or (500 <= status < 600 and status != 501)


def retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """``Retry-After`` in seconds (a number of seconds or an HTTP date; None if absent or
    unreadable, 0 for a date in the past). *now* is wall-clock time, for tests."""
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
class RetryPolicy:
    """How long and how often a request is retried; ``sleep`` and ``clock`` (monotonic
    seconds) are injectable for tests."""

    deadline: float = 600.0  # seconds from a request's first try to its last wait's end
    attempts: int | None = 5  # tries at most, the first included (None: the deadline only)
    base_delay: float = 0.5
    max_delay: float = 30.0  # caps the backoff
    max_retry_after: float | None = 30.0  # caps a server's Retry-After (None: honoured whole)
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False, repr=False)
    clock: Callable[[], float] = field(default=time.monotonic, compare=False, repr=False)

    def backoff(self, retry: int) -> float:
        """Seconds before retry number *retry* (0 for the first): doubling, jittered."""
        delay = min(self.max_delay, self.base_delay * 2.0 ** min(retry, 30))
        return float(delay * random.uniform(0.75, 1.0))

    def delay(self, retry: int, response: httpx.Response | None = None) -> float:
        """What *response* asks with ``Retry-After`` (at least ``base_delay``, at most
        ``max_retry_after``), else the backoff of retry number *retry*."""
        if response is not None:
            after = retry_after(response.headers.get("retry-after"))
            if after is not None:
                wait = max(after, self.base_delay)
                return wait if self.max_retry_after is None else min(wait, self.max_retry_after)
        return self.backoff(retry)

    def budget(self) -> Budget:
        """A fresh budget: no failure yet, ``deadline`` seconds from now."""
        return Budget(self, self.clock() + self.deadline)


class Budget:
    """The retries left to one request, or to one transfer spanning several requests:
    the failed tries so far and the monotonic time every wait must end by. Not shared
    between threads."""

    __slots__ = ("deadline", "failures", "policy")

    def __init__(self, policy: RetryPolicy, deadline: float) -> None:
        self.policy = policy
        self.deadline = deadline
        self.failures = 0

    def renew(self) -> None:
        """A new deadline from now, the failures so far kept: after a failed try of a long
        transfer (a blob upload restarted from scratch) the wait is judged from now."""
        self.deadline = self.policy.clock() + self.policy.deadline

    def fits(self, seconds: float) -> bool:
        """Whether a wait of *seconds* from now ends within the deadline."""
        return self.policy.clock() + seconds <= self.deadline

    def next_delay(self, response: httpx.Response | None = None) -> float:
        """Seconds to wait before the next try (see :meth:`RetryPolicy.delay`)."""
        return self.policy.delay(self.failures, response)

    def spend(self, seconds: float) -> bool:
        """Count a failed try; whether another may follow after waiting *seconds*."""
        self.failures += 1
        attempts = self.policy.attempts
        if attempts is not None and self.failures >= attempts:
            return False
        return self.fits(seconds)

    def pause(self, response: httpx.Response | None = None) -> bool:
        """After a failed try: wait before the next one and return True, or return False
        at once when the budget is spent."""
        seconds = self.next_delay(response)
        if not self.spend(seconds):
            return False
        if seconds > 0:
            self.policy.sleep(seconds)
        return True
