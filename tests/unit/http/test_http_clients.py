"""The client factory: User-Agent, the system CA store loaded only for HTTPS, laziness."""

from __future__ import annotations

import ssl
from collections.abc import Iterator

import httpx
import pytest
from tests.fixtures.fake_time import FakeTime

from kiln import __version__
from kiln.http import clients as clients_module
from kiln.http.clients import Clients
from kiln.http.sender import Sender


@pytest.fixture
def ca_loads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """How many times the system CA store was loaded (the process-wide cache reset)."""
    loads: list[int] = []
    real = ssl.create_default_context

    def counting(*args: object, **kw: object) -> ssl.SSLContext:
        loads.append(1)
        return real(*args, **kw)  # type: ignore[arg-type]

    clients_module.system_ca.cache_clear()
    monkeypatch.setattr(ssl, "create_default_context", counting)
    yield loads
    clients_module.system_ca.cache_clear()


class Recorder(httpx.MockTransport):
    def __init__(self) -> None:
        super().__init__(self.answer)
        self.agents: list[str] = []
        self.closed = False

    def answer(self, request: httpx.Request) -> httpx.Response:
        self.agents.append(request.headers["user-agent"])
        if request.url.path == "/moved":
            return httpx.Response(301, headers={"Location": "https://secure.test/here"})
        return httpx.Response(200)

    def close(self) -> None:
        self.closed = True


def test_plain_http_never_loads_the_ca_store(ca_loads: list[int]) -> None:
    transport = Recorder()
    with Sender(Clients(transport=transport), FakeTime().policy()) as s:
        s.send("GET", "http://127.0.0.1:5000/v2/")
        s.send("GET", "http://localhost/x")
    assert ca_loads == []
    assert transport.agents == [f"kiln/{__version__}"] * 2


def test_https_loads_it_once_per_process(ca_loads: list[int]) -> None:
    for _ in range(2):
        with Sender(Clients(transport=Recorder()), FakeTime().policy()) as s:
            s.send("GET", "https://registry.test/v2/")
            s.send("GET", "https://other.test/")
    assert ca_loads == [1]


def test_a_redirect_to_https_is_checked_against_the_ca_store(ca_loads: list[int]) -> None:
    clients = Clients(transport=Recorder())
    with Sender(clients, FakeTime().policy()) as s:
        response = s.send("GET", "http://plain.test/moved", follow_redirects=True)
    assert str(response.url) == "https://secure.test/here"
    assert ca_loads == [1]  # the HTTPS hop went through the verifying client


def test_insecure_hosts_skip_tls_checks(ca_loads: list[int]) -> None:
    clients = Clients(transport=Recorder(), insecure={"registry.internal:5000"})
    assert not clients.verifies(httpx.URL("https://registry.internal:5000/v2/"))
    assert not clients.verifies(httpx.URL("http://ghcr.io/"))
    assert clients.verifies(httpx.URL("https://registry.internal:5001/v2/"))
    plain = clients.for_url("https://registry.internal:5000/v2/")
    assert plain is clients.for_url("http://127.0.0.1/") and ca_loads == []
    assert clients.for_url("https://ghcr.io/") is not plain and ca_loads == [1]
    clients.close()


def test_close_closes_the_transport_even_when_no_client_was_made() -> None:
    transport = Recorder()
    Clients(transport=transport).close()
    assert transport.closed
