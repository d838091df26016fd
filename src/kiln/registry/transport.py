"""HTTP plumbing for the registry client: scheme choice and error translation.

Requests go through :mod:`kiln.http` (one :class:`~kiln.http.sender.Sender` per host, so
a 429 holds back that registry only). Every failure is translated here into
:class:`~kiln.errors.RegistryError` (or a subclass) with ``raise ... from exc``; nothing
above this module sees an httpx exception.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import threading
from collections.abc import Iterable, Mapping

import httpx

from kiln.errors import AuthError, NotFoundError, RegistryError
from kiln.http.clients import DEFAULT_LIMITS, DEFAULT_TIMEOUT, Clients
from kiln.http.retry import RetryPolicy
from kiln.http.sender import Body, Sender, Throttled, Unanswered

log = logging.getLogger(__name__)


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
    """Registry requests over lazily made clients (verifying and, for insecure hosts and
    plain HTTP, not); thread-safe. *retry* defaults to 5 tries within 120 s."""

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
        # made on first use: loopback registries (plain HTTP) never load the CA store
        self._clients = Clients(
            timeout=timeout or DEFAULT_TIMEOUT,
            limits=DEFAULT_LIMITS,
            insecure=self.insecure,
            transport=transport,
        )
        self._senders: dict[str, Sender] = {}
        self._schemes: dict[str, str] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        self._clients.close()

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
        url = f"https://{host}/v2/"
        try:
            self._clients.for_url(url).get(url).close()
        except httpx.TransportError as exc:
            log.debug("%s does not answer HTTPS (%s); using plain HTTP", host, exc)
            return "http"
        return "https"

    def _sender(self, url: str | httpx.URL) -> Sender:
        try:
            host = httpx.URL(str(url)).netloc.decode("ascii")
        except httpx.InvalidURL:
            host = ""  # the sender reports the URL
        with self._lock:
            sender = self._senders.get(host)
            if sender is None:
                sender = self._senders[host] = Sender(self._clients, self.retry)
            return sender

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
        try:
            return self._sender(url).send(
                method,
                url,
                headers=headers,
                params=params,
                body=body,
                stream=stream,
                retry=retry,
                follow_redirects=follow_redirects,
            )
        except Unanswered as failure:
            raise transport_error(registry, failure.error) from failure.error
        except Throttled as held:
            raise RegistryError(
                f"registry {registry} is throttling requests",
                why=str(held),
            ) from None


def transport_error(registry: str, exc: Exception) -> RegistryError:
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
