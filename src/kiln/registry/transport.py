"""HTTP plumbing for the registry client: scheme choice, retries, error translation.

Everything httpx raises is translated here into :class:`~kiln.errors.RegistryError` (or a
subclass) with ``raise ... from exc``; nothing above this module sees an httpx exception.
"""

from __future__ import annotations

import email.utils
import ipaddress
import json
import logging
import random
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import httpx

from kiln import __version__
from kiln.errors import AuthError, NotFoundError, RegistryError

log = logging.getLogger(__name__)

USER_AGENT = f"kiln/{__version__}"
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
# Transport failures worth another try: the connection was made but then dropped or
# stalled. A refused connection or an unknown host fails at once.
RETRY_EXCEPTIONS: tuple[type[httpx.TransportError], ...] = (
    httpx.TimeoutException,
    httpx.ReadError,
    httpx.WriteError,
    httpx.RemoteProtocolError,
    httpx.CloseError,
)

Body = bytes | Callable[[], Iterable[bytes]] | None
"""A request body: bytes, or a factory of a fresh chunk iterator (so retries can resend)."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Bounded exponential backoff; ``Retry-After`` wins when the server sends one."""

    attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 30.0
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False)

    def delay(self, attempt: int, response: httpx.Response | None = None) -> float:
        """Seconds to wait before try number ``attempt + 2`` (``attempt`` counts from 0)."""
        if response is not None:
            after = retry_after(response.headers.get("retry-after"))
            if after is not None:
                return min(after, self.max_delay)
        backoff = min(self.max_delay, self.base_delay * (2**attempt))
        return float(backoff * random.uniform(0.8, 1.0))


def retry_after(value: str | None) -> float | None:
    """Parse ``Retry-After``: delay seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def is_loopback(host: str) -> bool:
    """Whether *host* (``name[:port]``, IPv6 in brackets) is this machine."""
    name = host
    if name.startswith("["):
        name = name[1:].split("]", 1)[0]
    elif name.count(":") == 1:
        name = name.split(":", 1)[0]
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class Transport:
    """A thread-safe pair of httpx clients (verifying and, for insecure hosts, not)."""

    def __init__(
        self,
        *,
        insecure: Iterable[str] = (),
        retry: RetryPolicy | None = None,
        timeout: httpx.Timeout | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.retry = retry or RetryPolicy()
        self.insecure = frozenset(insecure)
        self._timeout = timeout or httpx.Timeout(60.0, connect=15.0)
        self._mock = transport
        # Made on first use: loading the system CA store costs ~50 ms, and loopback
        # registries (plain HTTP) never need it.
        self._secure: httpx.Client | None = None
        self._unverified: httpx.Client | None = None
        self._schemes: dict[str, str] = {}
        self._lock = threading.Lock()

    def _make_client(self, verify: ssl.SSLContext | bool) -> httpx.Client:
        return httpx.Client(
            verify=verify,
            timeout=self._timeout,
            transport=self._mock,
            headers={"User-Agent": USER_AGENT},
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=16),
        )

    def close(self) -> None:
        for client in (self._secure, self._unverified):
            if client is not None:
                client.close()

    # -- where a host lives ------------------------------------------------------
    def base_url(self, host: str) -> str:
        """``http://host`` for loopback registries, ``https://host`` otherwise.

        A host listed as insecure is tried over HTTPS without certificate checks first
        and over plain HTTP when it does not speak TLS, like Docker's insecure registries.
        """
        if is_loopback(host):
            return f"http://{host}"
        if host not in self.insecure:
            return f"https://{host}"
        with self._lock:
            scheme = self._schemes.get(host)
        if scheme is None:
            scheme = self._probe(host)
            with self._lock:
                self._schemes[host] = scheme
        return f"{scheme}://{host}"

    def _probe(self, host: str) -> str:
        try:
            self._client_for(f"https://{host}/").get(f"https://{host}/v2/").close()
        except httpx.TransportError as exc:
            log.debug("%s does not answer HTTPS (%s); using plain HTTP", host, exc)
            return "http"
        return "https"

    def _client_for(self, url: str) -> httpx.Client:
        parsed = httpx.URL(url)
        with self._lock:
            if parsed.scheme == "http" or parsed.netloc.decode() in self.insecure:
                if self._unverified is None:  # plain HTTP, or TLS without verification
                    self._unverified = self._make_client(False)
                return self._unverified
            if self._secure is None:
                # the system CA store (which carries any site proxy's CA), not certifi's
                self._secure = self._make_client(ssl.create_default_context())
            return self._secure

    # -- sending -----------------------------------------------------------------
    def send(
        self,
        method: str,
        url: str | httpx.URL,
        *,
        registry: str,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str | list[str]] | None = None,
        body: Body = None,
        stream: bool = False,
        retry: bool = True,
        follow_redirects: bool = False,
    ) -> httpx.Response:
        """Send one request, retrying transient failures when *retry* is set.

        Returns the last response whatever its status (see :func:`raise_for_status`); a
        response sent back with ``stream=True`` must be closed by the caller. Transport
        failures become :class:`RegistryError` naming *registry*.
        """
        client = self._client_for(str(url))
        attempts = max(1, self.retry.attempts if retry else 1)
        for attempt in range(attempts):
            content: bytes | Iterable[bytes] | None = body() if callable(body) else body
            request = client.build_request(
                method, url, headers=headers, params=params, content=content
            )
            last = attempt == attempts - 1
            try:
                response = client.send(request, stream=stream, follow_redirects=follow_redirects)
            except RETRY_EXCEPTIONS as exc:
                if last:
                    raise transport_error(registry, exc) from exc
                wait = self.retry.delay(attempt)
                log.debug("%s %s failed (%s); retrying in %.1fs", method, url, exc, wait)
                self.retry.sleep(wait)
                continue
            except httpx.TransportError as exc:
                raise transport_error(registry, exc) from exc
            if response.status_code in RETRY_STATUSES and not last:
                wait = self.retry.delay(attempt, response)
                response.close()
                log.debug(
                    "%s %s answered %d; retrying in %.1fs",
                    method,
                    url,
                    response.status_code,
                    wait,
                )
                self.retry.sleep(wait)
                continue
            return response
        raise AssertionError("unreachable")  # pragma: no cover


def transport_error(registry: str, exc: httpx.TransportError) -> RegistryError:
    """A user-facing error for a request that got no (complete) answer."""
    detail = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.ConnectError):
        if "CERTIFICATE_VERIFY_FAILED" in detail or "SSL" in detail:
            return RegistryError(
                f"cannot reach registry {registry}: TLS handshake failed",
                why=detail,
                hint=f"if {registry} serves plain HTTP or a self-signed certificate, "
                "mark it insecure (--insecure / registry.insecure=true)",
            )
        return RegistryError(
            f"cannot reach registry {registry}",
            why=detail,
            hint="check the registry address and that it is running; a registry "
            "serving plain HTTP on a non-loopback address must be marked insecure "
            "(--insecure / registry.insecure=true)",
        )
    if isinstance(exc, httpx.TimeoutException):
        return RegistryError(f"registry {registry} timed out", why=detail)
    return RegistryError(f"connection to registry {registry} failed", why=detail)


def error_messages(response: httpx.Response) -> str:
    """The registry's own explanation: OCI error JSON ``errors[].message`` (or text)."""
    try:
        body = response.read()
    except httpx.HTTPError:
        return ""
    try:
        data = json.loads(body)
    except ValueError:
        text = body.decode("utf-8", "replace").strip()
        return text[:300] if text and "<html" not in text.lower() else ""
    messages: list[str] = []
    if isinstance(data, dict):
        errors = data.get("errors")
        if isinstance(errors, list):
            for err in errors:
                if isinstance(err, dict):
                    msg = err.get("message") or err.get("code")
                    if msg:
                        messages.append(str(msg))
        elif data.get("message") or data.get("details"):
            messages.append(str(data.get("message") or data.get("details")))
    return "; ".join(messages)


def status_error(response: httpx.Response, what: str, *, registry: str) -> RegistryError:
    """Translate an unexpected status into the matching :class:`RegistryError` family."""
    status = response.status_code
    said = error_messages(response)
    why = f"the registry answered {status} {response.reason_phrase}" + (f": {said}" if said else "")
    if status in (401, 403):
        return AuthError(
            f"{what}: access denied by {registry}",
            why=why,
            hint=f"log in with `kiln login {registry}`, and check that the account may "
            "access this repository",
        )
    if status == 404:
        return NotFoundError(f"{what}: not found", why=why)
    return RegistryError(f"{what}: failed", why=why)


def raise_for_status(
    response: httpx.Response, what: str, *, registry: str, ok: Iterable[int] = (200,)
) -> httpx.Response:
    if response.status_code not in set(ok):
        try:
            raise status_error(response, what, registry=registry)
        finally:
            response.close()
    return response
