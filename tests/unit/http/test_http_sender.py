"""The shared send loop against ``httpx.MockTransport``: retries, the 429 hold, bodies,
redirects and the neutral errors."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest
from tests.fixtures.fake_time import FakeTime

from kiln.http.clients import Clients
from kiln.http.sender import Sender, Throttled, Unanswered, redact

Handler = Callable[[httpx.Request], httpx.Response]
URL = "http://service.test/thing"


class Server:
    """Answers each request with the next of *answers* (a status, an exception to raise,
    or a response), then 200; records every request and its body."""

    def __init__(self, *answers: int | Exception | httpx.Response) -> None:
        self.answers = list(answers)
        self.seen: list[tuple[str, bytes, float]] = []
        self.time: FakeTime | None = None

    def __call__(self, request: httpx.Request) -> httpx.Response:
        now = self.time.now if self.time else 0.0
        self.seen.append((str(request.url), request.read(), now))
        answer = self.answers.pop(0) if self.answers else 200
        if isinstance(answer, Exception):
            raise answer
        return answer if isinstance(answer, httpx.Response) else httpx.Response(answer)


def sender(server: Server, time: FakeTime, **policy: object) -> Sender:
    server.time = time
    clients = Clients(transport=httpx.MockTransport(server))
    return Sender(clients, time.policy(**policy))


def test_transient_statuses_are_retried_with_growing_waits() -> None:
    server, time = Server(503, 500, 502, 408), FakeTime()
    with sender(server, time, base_delay=0.1) as s:
        assert s.send("GET", URL).status_code == 200
    assert len(server.seen) == 5
    assert len(time.sleeps) == 4 and time.sleeps == sorted(time.sleeps)
    assert time.sleeps[0] <= 0.1 < time.sleeps[1]


@pytest.mark.parametrize("status", [200, 304, 400, 404, 409, 501])
def test_other_statuses_are_returned_at_once(status: int) -> None:
    server, time = Server(status), FakeTime()
    with sender(server, time) as s:
        assert s.send("GET", URL).status_code == status
    assert len(server.seen) == 1 and time.sleeps == []


def test_the_last_answer_is_returned_when_the_attempts_are_spent() -> None:
    server, time = Server(*[503] * 10), FakeTime()
    with sender(server, time, attempts=3) as s:
        assert s.send("GET", URL).status_code == 503
    assert len(server.seen) == 3 and len(time.sleeps) == 2


def test_the_deadline_bounds_retries_without_an_attempt_cap() -> None:
    server, time = Server(*[500] * 100), FakeTime()
    with sender(server, time, attempts=None, deadline=20.0, base_delay=1.0, max_delay=4.0) as s:
        assert s.send("GET", URL).status_code == 500
    assert sum(time.sleeps) <= 20.0 and len(server.seen) == len(time.sleeps) + 1
    assert len(server.seen) >= 6  # 1 + 2 + 4 + 4 + 4 ... until 20 s


def test_a_request_that_must_not_be_retried_is_sent_once() -> None:
    server, time = Server(503, httpx.ReadError("reset")), FakeTime()
    with sender(server, time) as s:
        assert s.send("PUT", URL, retry=False).status_code == 503
        with pytest.raises(Unanswered) as caught:
            s.send("PUT", URL, retry=False)
    assert isinstance(caught.value.error, httpx.ReadError)
    assert len(server.seen) == 2 and time.sleeps == []


@pytest.mark.parametrize(
    "drop",
    [
        httpx.ReadError("connection reset"),
        httpx.WriteError("broken pipe"),
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
        httpx.ReadTimeout("timed out"),
        httpx.WriteTimeout("timed out"),
        httpx.PoolTimeout("no connection"),
        httpx.CloseError("close failed"),
    ],
)
def test_dropped_connections_are_retried(drop: Exception) -> None:
    server, time = Server(drop, drop), FakeTime()
    with sender(server, time) as s:
        assert s.send("GET", URL).status_code == 200
    assert len(server.seen) == 3 and len(time.sleeps) == 2


def test_drops_past_the_budget_raise_the_last_error() -> None:
    server, time = Server(*[httpx.ReadTimeout("stalled")] * 9), FakeTime()
    with sender(server, time, attempts=4) as s, pytest.raises(Unanswered) as caught:
        s.send("GET", URL)
    assert isinstance(caught.value.error, httpx.ReadTimeout)
    assert len(server.seen) == 4 and len(time.sleeps) == 3


@pytest.mark.parametrize(
    "failure",
    [httpx.ConnectError("[Errno 111] Connection refused"), httpx.UnsupportedProtocol("ftp")],
)
def test_a_connection_refused_fails_at_once(failure: Exception) -> None:
    server, time = Server(failure), FakeTime()
    with sender(server, time) as s, pytest.raises(Unanswered) as caught:
        s.send("GET", URL)
    assert caught.value.error is failure
    assert len(server.seen) == 1 and time.sleeps == []


def test_a_connect_timeout_is_tried_again() -> None:
    server, time = Server(httpx.ConnectTimeout("connect")), FakeTime()
    with sender(server, time) as s:
        assert s.send("GET", URL).status_code == 200
    assert len(server.seen) == 2 and len(time.sleeps) == 1


def test_retry_after_is_waited_out() -> None:
    server, time = Server(httpx.Response(503, headers={"Retry-After": "7"})), FakeTime()
    with sender(server, time) as s:
        assert s.send("GET", URL).status_code == 200
    assert time.sleeps == [7.0]
    assert [at for _, _, at in server.seen] == [1000.0, 1007.0]


def test_a_429_holds_back_every_request_of_the_sender() -> None:
    throttled = httpx.Response(429, headers={"Retry-After": "5"})
    server, time = Server(throttled), FakeTime(frozen=True)
    with sender(server, time) as s:
        assert s.send("GET", URL + "/a").status_code == 200  # waited 5 s, then sent again
        # at the same instant another request waits out the same hold before it is sent
        assert s.send("GET", URL + "/b").status_code == 200
        assert time.sleeps == [5.0, 5.0]
        time.now += 5.0
        s.send("GET", URL + "/c")  # the hold is over
    assert time.sleeps == [5.0, 5.0]
    assert [u.rsplit("/", 1)[1] for u, _, _ in server.seen] == ["a", "a", "b", "c"]


def test_a_429_holds_back_even_a_request_that_is_not_retried() -> None:
    throttled = httpx.Response(429, headers={"Retry-After": "3"})
    server, time = Server(throttled), FakeTime()
    with sender(server, time) as s:
        assert s.send("POST", URL, retry=False).status_code == 429
        assert time.sleeps == []
        s.send("POST", URL, retry=False)
    assert time.sleeps == [3.0] and [at for _, _, at in server.seen] == [1000.0, 1003.0]


def test_a_huge_retry_after_is_capped() -> None:
    throttled = httpx.Response(429, headers={"Retry-After": "21600"})
    server, time = Server(throttled), FakeTime()
    with sender(server, time, deadline=60.0, max_retry_after=30.0) as s:
        assert s.send("GET", URL).status_code == 200  # waited 30 s, not six hours
        time.now += 1.0
        assert s.send("GET", URL).status_code == 200  # held only for what was waited
    assert time.sleeps == [30.0] and len(server.seen) == 3


def test_a_hold_past_the_budget_sends_nothing() -> None:
    throttled = httpx.Response(429, headers={"Retry-After": "600"})
    server, time = Server(throttled), FakeTime()
    with sender(server, time, deadline=60.0, max_retry_after=None) as s:
        assert s.send("GET", URL).status_code == 429  # 600 s is past the budget: given up
        with pytest.raises(Throttled) as caught:
            s.send("GET", URL)
    assert caught.value.wait == 600.0
    assert len(server.seen) == 1 and time.sleeps == []


def test_a_streamed_body_is_sent_again_whole() -> None:
    server, time = Server(httpx.WriteError("broken pipe"), 503), FakeTime()
    made: list[int] = []

    def body() -> Iterator[bytes]:
        made.append(1)
        yield b"part one, "
        yield b"part two"

    with sender(server, time) as s:
        assert s.send("PUT", URL, body=body).status_code == 200
    assert len(made) == 3
    assert [b for _, b, _ in server.seen] == [b"part one, part two"] * 3


def test_redirects_are_followed_only_when_asked() -> None:
    moved = httpx.Response(302, headers={"Location": "http://elsewhere.test/new?sig=1"})
    server, time = Server(moved, moved), FakeTime()
    with sender(server, time) as s:
        assert s.send("GET", URL).status_code == 302
        response = s.send("GET", URL, follow_redirects=True)
    assert response.status_code == 200
    assert str(response.url) == "http://elsewhere.test/new?sig=1"
    assert [u for u, _, _ in server.seen] == [URL, URL, "http://elsewhere.test/new?sig=1"]


def test_a_redirect_loop_is_an_error() -> None:
    loop = [httpx.Response(302, headers={"Location": URL}) for _ in range(30)]
    server, time = Server(*loop), FakeTime()
    with sender(server, time) as s, pytest.raises(Unanswered) as caught:
        s.send("GET", URL, follow_redirects=True)
    assert isinstance(caught.value.error, httpx.TooManyRedirects)
    assert len(server.seen) == 21 and time.sleeps == []


def test_redact_drops_the_query_and_credentials() -> None:
    assert redact("https://u:p@h.example:9/kiln/cache/b?sp=r&sig=SECRET") == (
        "https://h.example:9/kiln/cache/b"
    )
    assert redact("http://[::1") == "<invalid URL>"
