"""The one factory of kiln's httpx clients.

Every client sends ``User-Agent: kiln/<version>`` and checks HTTPS against the system CA
store (:func:`ssl.create_default_context`, never certifi's copy: an intercepting proxy's
CA is in the system bundle). Loading that store costs ~50 ms, so it happens once per
process and only when a verifying client is made: :class:`Clients` makes each client on
first use, and plain-HTTP use (loopback services) never makes the verifying one.

Response bodies are read from the socket in 1 MiB pieces, not httpcore's 64 KiB: a
layer download then costs a sixteenth of the per-read Python work (h11 parsing, one
chunk through every consumer), which is most of a loopback or LAN pull's time.
"""

from __future__ import annotations

import functools
import ssl
import threading
from collections.abc import Iterable

import httpcore
import httpx

from kiln import __version__

READ_SIZE = 1 << 20  # bytes per socket read of an HTTP/1.1 response

USER_AGENT = f"kiln/{__version__}"
DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=15.0)
DEFAULT_LIMITS = httpx.Limits(max_connections=32, max_keepalive_connections=16)


@functools.cache
def system_ca() -> ssl.SSLContext:
    """The verifying TLS context over the system CA store, loaded on first call."""
    return ssl.create_default_context()


def new_client(
    *,
    verify: bool,
    timeout: httpx.Timeout = DEFAULT_TIMEOUT,
    limits: httpx.Limits = DEFAULT_LIMITS,
    transport: httpx.BaseTransport | None = None,
    trust_env: bool = True,
) -> httpx.Client:
    """A client that follows no redirects; *verify* False skips TLS checks (and the CA
    store). *transport* replaces the network (tests). *trust_env* False ignores the
    environment's proxies (for a service that must be reached directly)."""
    _read_in_big_pieces()
    return httpx.Client(
        verify=system_ca() if verify else False,
        timeout=timeout,
        limits=limits,
        transport=transport,
        trust_env=trust_env,
        headers={"User-Agent": USER_AGENT},
        follow_redirects=False,
    )


def _read_in_big_pieces() -> None:
    """httpcore reads ``READ_NUM_BYTES`` per ``recv``, a class attribute with no option;
    raised here for every connection (a later httpcore without it is left alone)."""
    connection = getattr(httpcore, "HTTP11Connection", None)
    if connection is not None and getattr(connection, "READ_NUM_BYTES", READ_SIZE) < READ_SIZE:
        connection.READ_NUM_BYTES = READ_SIZE


class Clients:
    """The clients of one user, each made on first use and safe to share between threads:
    a verifying one for HTTPS, and one without TLS checks for plain HTTP and for the
    *insecure* hosts (``host[:port]``)."""

    def __init__(
        self,
        *,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        limits: httpx.Limits = DEFAULT_LIMITS,
        insecure: Iterable[str] = (),
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.insecure = frozenset(insecure)
        self._timeout = timeout
        self._limits = limits
        self._transport = transport
        self._made: dict[bool, httpx.Client] = {}
        self._lock = threading.Lock()

    def verifies(self, url: httpx.URL) -> bool:
        return url.scheme == "https" and url.netloc.decode("ascii") not in self.insecure

    def for_url(self, url: str | httpx.URL) -> httpx.Client:
        """The client for *url*. It follows no redirects: each hop must be sent through
        the client for its own URL (:class:`~kiln.http.sender.Sender` does that)."""
        verify = self.verifies(url if isinstance(url, httpx.URL) else httpx.URL(url))
        with self._lock:
            client = self._made.get(verify)
            if client is None:
                client = self._made[verify] = new_client(
                    verify=verify,
                    timeout=self._timeout,
                    limits=self._limits,
                    transport=self._transport,
                )
            return client

    def close(self) -> None:
        """Close the clients made, and *transport* (theirs, made or not), as httpx does."""
        with self._lock:
            made, self._made = list(self._made.values()), {}
        for client in made:
            client.close()
        if self._transport is not None:
            self._transport.close()
