"""Signed blob URLs, shaped like Azure SAS URLs (``?sp=…&se=…&sig=…``).

The v2 API hands clients a signed upload URL and a signed download URL, and v1's
``archiveLocation`` is a signed download URL too (the npm client downloads it without
its token). The signature is an HMAC-SHA256, under a key derived from the server
secret, over the permission, the blob name and the expiry; ``sig`` is the parameter the
npm client masks in its logs, and the server never logs query strings.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Mapping
from urllib.parse import urlencode

from kiln.gha.server.errors import Forbidden

READ = "r"
WRITE = "w"
BLOB_PATH = "/kiln/cache/"  # /<account>/<container>/<blob>, as Azure Blob URLs are shaped


def _signature(key: bytes, perm: str, blob: str, expiry: int) -> str:
    mac = hmac.new(key, f"{perm}\n{blob}\n{expiry}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def sign_url(
    base_url: str, key: bytes, blob: str, perm: str, ttl: float, now: float | None = None
) -> str:
    """``<base>/kiln/cache/<blob>?sp=<perm>&se=<expiry>&sig=<hmac>``."""
    expiry = int((time.time() if now is None else now) + ttl)
    query = urlencode({"sp": perm, "se": str(expiry), "sig": _signature(key, perm, blob, expiry)})
    return f"{base_url.rstrip('/')}{BLOB_PATH}{blob}?{query}"


def verify(
    key: bytes, blob: str, perm: str, params: Mapping[str, str], now: float | None = None
) -> None:
    """Raise :class:`Forbidden` unless *params* carry a valid, unexpired *perm* signature."""
    sig, se, sp = params.get("sig"), params.get("se"), params.get("sp")
    if not sig or not se or sp != perm:
        raise Forbidden("the URL is not signed for this operation")
    try:
        expiry = int(se)
    except ValueError as exc:
        raise Forbidden("the URL's expiry is malformed") from exc
    if not hmac.compare_digest(sig, _signature(key, perm, blob, expiry)):
        raise Forbidden("the URL's signature does not match")
    if (time.time() if now is None else now) >= expiry:
        raise Forbidden("the signed URL has expired")
