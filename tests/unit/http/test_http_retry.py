"""The shared retry policy: what is retried, how long is waited, when it stops."""

from __future__ import annotations

import httpx
import pytest
from tests.fixtures.fake_time import FakeTime

from kiln.http.retry import DROPPED, RetryPolicy, retry_after, retryable_status


def test_retryable_statuses() -> None:
    statuses = (200, 204, 301, 304, 400, 401, 403, 404, 408, 409, 429, 500, 501, 502, 503, 504)
    assert [s for s in statuses if retryable_status(s)] == [408, 429, 500, 502, 503, 504]


def test_dropped_stalled_and_timed_out_connections_count_as_dropped() -> None:
    for exc in (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError, httpx.CloseError):
        assert issubclass(exc, DROPPED)
    for exc in (httpx.ReadTimeout, httpx.WriteTimeout, httpx.PoolTimeout, httpx.ConnectTimeout):
        assert issubclass(exc, DROPPED)
    # nothing listens there, or the name does not resolve: fail at once
    for exc in (httpx.ConnectError, httpx.UnsupportedProtocol):
        assert not issubclass(exc, DROPPED)


def test_retry_after_parses_seconds_and_dates() -> None:
    assert retry_after("3") == 3.0
    assert retry_after(" 0 ") == 0.0
    assert retry_after("1.5") == 1.5
    assert retry_after("-4") == 0.0
    assert retry_after(None) is None and retry_after("") is None
    assert retry_after("soon") is None and retry_after("nan") is None
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past


def _answer(retry_after: str) -> httpx.Response:
    return httpx.Response(429, headers={"Retry-After": retry_after})


def test_retry_after_wins_over_the_backoff_but_never_busy_loops() -> None:
    policy = RetryPolicy(base_delay=0.25, max_delay=3, max_retry_after=None)
    assert policy.delay(0, _answer("60")) == 60.0  # the server's word, not the backoff cap
    assert policy.delay(0, _answer("0")) == 0.25  # Retry-After: 0 is no busy loop
    assert policy.delay(5, _answer("garbage")) <= 3  # unreadable: the backoff
    capped = RetryPolicy(base_delay=0.25, max_delay=3, max_retry_after=20)
    assert capped.delay(0, _answer("60")) == 20.0  # at most max_retry_after
    assert capped.delay(0, _answer("7")) == 7.0


def test_backoff_doubles_with_jitter_up_to_the_cap() -> None:
    policy = RetryPolicy(base_delay=1.0, max_delay=5.0)
    for _ in range(50):
        delays = [policy.backoff(n) for n in range(6)]
        assert 0.75 <= delays[0] <= 1.0 and 1.5 <= delays[1] <= 2.0 and 3.0 <= delays[2] <= 4.0
        assert all(3.75 <= d <= 5.0 for d in delays[3:])
    assert len({policy.backoff(0) for _ in range(20)}) > 1  # jittered


def test_a_budget_stops_at_the_attempt_cap() -> None:
    time = FakeTime()
    budget = time.policy(attempts=3, base_delay=1.0).budget()
    assert budget.pause() and budget.pause()
    assert not budget.pause()  # the third failed try was the last
    assert len(time.sleeps) == 2 and budget.failures == 3


def test_a_budget_stops_before_a_wait_that_would_end_past_the_deadline() -> None:
    time = FakeTime()
    budget = time.policy(deadline=10.0, attempts=None, base_delay=2.0, max_delay=100.0).budget()
    while budget.pause():
        pass
    # 1.5-2, 3-4 then 6-8 seconds: the third wait would end past 10 s and is not taken
    assert len(time.sleeps) == 2 and sum(time.sleeps) <= 10.0
    assert time.now - 1000.0 == pytest.approx(sum(time.sleeps))


def test_a_retry_after_past_the_deadline_ends_the_budget_without_waiting() -> None:
    time = FakeTime()
    budget = time.policy(deadline=30.0, max_retry_after=None).budget()
    assert not budget.pause(_answer("31"))
    assert time.sleeps == []
    assert budget.pause(_answer("29")) and time.sleeps == [29.0]


@pytest.mark.parametrize("attempts", [1, 0])
def test_one_attempt_means_no_retry(attempts: int) -> None:
    time = FakeTime()
    assert not time.policy(attempts=attempts).budget().pause()
    assert time.sleeps == []
