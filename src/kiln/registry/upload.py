"""Pushing blobs: HEAD first, then a cross-repository mount, then an upload.

Uploads are monolithic (``POST`` then ``PUT`` with the body) up to a size threshold and
chunked above it (``PATCH`` per chunk with ``Content-Range``, following the ``Location``
returned by every step, then an empty ``PUT ?digest=``). File sources are streamed, never
read whole. An upload step is not idempotent, so a transient failure restarts the upload
session from scratch, a bounded number of times.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from kiln.errors import KilnError, RegistryError
from kiln.http.retry import DROPPED, retryable_status
from kiln.http.sender import Body
from kiln.http.stats import is_layer_media_type
from kiln.oci import Descriptor
from kiln.registry.auth import pull_scope, push_scope
from kiln.registry.reference import Reference
from kiln.registry.session import Session
from kiln.registry.transport import raise_for_status

log = logging.getLogger(__name__)

READ_SIZE = 1 << 20

# a blob's bytes, a file holding them, or a callable producing that file on demand
BlobSource = Path | bytes | Callable[[], Path]
MAX_MOUNT_SOURCES = 3


class BlobPush(enum.StrEnum):
    """What pushing one blob took."""

    EXISTS = "exists"  # already in the repository: nothing sent
    MOUNTED = "mounted"  # linked from another repository of the same registry
    UPLOADED = "uploaded"  # bytes sent


@dataclass(frozen=True, slots=True)
class UploadSettings:
    monolithic_threshold: int = 32 << 20
    chunk_size: int = 32 << 20


class _Restart(Exception):
    """A transient failure inside an upload session: start a new session."""

    def __init__(self, reason: str, response: httpx.Response | None = None) -> None:
        super().__init__(reason)
        self.response = response


@dataclass(frozen=True, slots=True)
class _Source:
    data: bytes | None
    path: Path | None
    size: int

    @classmethod
    def of(cls, source: BlobSource) -> _Source:
        if callable(source):
            source = source()
        if isinstance(source, bytes | bytearray | memoryview):
            data = bytes(source)
            return cls(data, None, len(data))
        try:
            size = source.stat().st_size
        except OSError as exc:
            raise KilnError(f"cannot read blob {source}", why=str(exc)) from exc
        return cls(None, source, size)

    def body(self, start: int, length: int, count: Callable[[int], None]) -> Iterator[bytes]:
        """The bytes ``[start, start+length)``, read in pieces and counted as sent."""
        if self.data is not None:
            view = memoryview(self.data)[start : start + length]
            for off in range(0, len(view), READ_SIZE):
                piece = bytes(view[off : off + READ_SIZE])
                count(len(piece))
                yield piece
            return
        assert self.path is not None
        with self.path.open("rb") as fh:
            fh.seek(start)
            left = length
            while left > 0:
                piece = fh.read(min(READ_SIZE, left))
                if not piece:
                    raise KilnError(f"blob {self.path} shrank while it was being pushed")
                left -= len(piece)
                count(len(piece))
                yield piece


def push_blob(
    session: Session,
    repo: Reference,
    descriptor: Descriptor,
    source: BlobSource,
    mount_from: Sequence[Reference],
    *,
    category: str,
    settings: UploadSettings,
) -> BlobPush:
    """*source* may be a callable: it is called (to fetch the blob) only if an upload is
    really needed, after the HEAD check and any cross-repository mount."""
    scopes = [push_scope(repo.repository)]
    if blob_present(session, repo, descriptor.digest, scopes):
        return BlobPush.EXISTS
    location = _try_mounts(session, repo, descriptor.digest, mount_from)
    if location is True:
        return BlobPush.MOUNTED
    src = _Source.of(source)
    if src.size != descriptor.size:
        raise KilnError(
            f"blob {descriptor.digest} has {src.size} bytes, its descriptor says {descriptor.size}"
        )
    layer = is_layer_media_type(descriptor.media_type)

    def count(n: int) -> None:
        session.stats.add_pushed(n, category, layer=layer)

    budget = session.transport.retry.budget()
    what = f"push blob {descriptor.digest} to {repo}"
    while True:
        try:
            if not isinstance(location, str):
                location = _start(session, repo, scopes, what)
            if src.size <= settings.monolithic_threshold:
                _put(session, repo, location, descriptor, src, scopes, count, what)
            else:
                _chunked(session, repo, location, descriptor, src, scopes, count, settings, what)
            return BlobPush.UPLOADED
        except _Restart as restart:
            location = None
            log.debug("%s: %s; restarting the upload", what, restart)
            # restarts are bounded by the attempt cap; the deadline bounds the wait from
            # now, however long the failed try took to send a big blob
            budget.renew()
            if not budget.pause(restart.response):
                if restart.response is not None:
                    raise_for_status(restart.response, what, registry=repo.registry)
                raise RegistryError(f"{what}: failed", why=str(restart)) from restart


def blob_present(session: Session, repo: Reference, digest: str, scopes: Sequence[str]) -> bool:
    url = session.url(repo, f"blobs/{digest}")
    response = session.request(repo.registry, "HEAD", url, scopes=scopes, follow_redirects=True)
    if response.status_code == 404:
        return False
    raise_for_status(response, f"check blob {digest} in {repo}", registry=repo.registry)
    return True


def _try_mounts(
    session: Session, repo: Reference, digest: str, mount_from: Sequence[Reference]
) -> str | bool | None:
    """Mount from the first source that has the blob: True when mounted, else the
    upload location a refused mount opened (or None)."""
    sources: list[str] = []
    for ref in mount_from:
        same_registry = ref.registry == repo.registry and ref.repository != repo.repository
        if same_registry and ref.repository not in sources:
            sources.append(ref.repository)
    location: str | None = None
    for name in sources[:MAX_MOUNT_SOURCES]:
        if location is not None:
            _cancel(session, repo, location, [push_scope(repo.repository)])
        url = session.url(repo, "blobs/uploads/")
        response = session.request(
            repo.registry,
            "POST",
            url,
            scopes=[push_scope(repo.repository), pull_scope(name)],
            params={"mount": digest, "from": name},
        )
        if response.status_code == 201:
            log.debug("mounted %s into %s from %s", digest, repo, name)
            return True
        if response.status_code == 202:  # not mounted; the upload session it opened is usable
            location = _location(response, url)
            continue
        # a registry refusing the mount (no access to the source, unknown blob): upload
        log.debug("mount of %s from %s refused: %s", digest, name, response.status_code)
        response.close()
    return location


def _cancel(session: Session, repo: Reference, location: str, scopes: Sequence[str]) -> None:
    """Abandon an upload session (best effort; registries expire them anyway)."""
    with contextlib.suppress(RegistryError):
        session.request(repo.registry, "DELETE", location, scopes=scopes, retry=False).close()


def _location(response: httpx.Response, request_url: str | httpx.URL) -> str:
    value = response.headers.get("location")
    if not value:
        raise RegistryError(
            f"the registry answered {response.status_code} to {request_url} "
            "without an upload location"
        )
    return str(httpx.URL(str(request_url)).join(value))


def _check(response: httpx.Response, what: str, repo: Reference, ok: int) -> None:
    """Raise :class:`_Restart` on transient failures, an error on the rest."""
    status = response.status_code
    if status == ok:
        return
    if retryable_status(status):
        response.close()
        raise _Restart(f"the registry answered {status}", response)
    if status == 404:  # the upload session vanished (expired or a restarted registry)
        response.close()
        raise _Restart("the upload session is gone", response)
    raise_for_status(response, what, registry=repo.registry, ok=(ok,))


def _send(
    session: Session,
    repo: Reference,
    method: str,
    url: str,
    scopes: Sequence[str],
    *,
    headers: Mapping[str, str] | None = None,
    body: Body = None,
) -> httpx.Response:
    """One upload step, without per-request retries (the whole session restarts)."""
    try:
        return session.request(
            repo.registry, method, url, scopes=scopes, headers=headers, body=body, retry=False
        )
    except RegistryError as exc:
        if isinstance(exc.__cause__, DROPPED):
            raise _Restart(str(exc.__cause__) or type(exc.__cause__).__name__) from exc
        raise


def _start(session: Session, repo: Reference, scopes: Sequence[str], what: str) -> str:
    url = session.url(repo, "blobs/uploads/")
    response = _send(session, repo, "POST", url, scopes)
    _check(response, what, repo, 202)
    return _location(response, url)


def _with_digest(location: str, digest: str) -> str:
    return str(httpx.URL(location).copy_merge_params({"digest": digest}))


def _put(
    session: Session,
    repo: Reference,
    location: str,
    descriptor: Descriptor,
    src: _Source,
    scopes: Sequence[str],
    count: Callable[[int], None],
    what: str,
) -> None:
    url = _with_digest(location, descriptor.digest)
    headers = {"Content-Type": "application/octet-stream", "Content-Length": str(src.size)}
    response = _send(
        session,
        repo,
        "PUT",
        url,
        scopes,
        headers=headers,
        body=lambda: src.body(0, src.size, count),
    )
    _check(response, what, repo, 201)
    _verify_committed(response, descriptor, what)


def _chunked(
    session: Session,
    repo: Reference,
    location: str,
    descriptor: Descriptor,
    src: _Source,
    scopes: Sequence[str],
    count: Callable[[int], None],
    settings: UploadSettings,
    what: str,
) -> None:
    chunk = max(1, settings.chunk_size)
    for start in range(0, src.size, chunk):
        length = min(chunk, src.size - start)
        end = start + length - 1
        headers = {
            "Content-Type": "application/octet-stream",
            "Content-Length": str(length),
            "Content-Range": f"{start}-{end}",
        }
        response = _send(
            session,
            repo,
            "PATCH",
            location,
            scopes,
            headers=headers,
            body=functools.partial(src.body, start, length, count),
        )
        _check(response, what, repo, 202)
        accepted = response.headers.get("range", "")
        if accepted and not accepted.endswith(f"-{end}"):
            raise _Restart(f"the registry accepted {accepted!r} after sending up to {end}")
        if response.headers.get("location"):
            location = _location(response, location)
    response = _send(
        session,
        repo,
        "PUT",
        _with_digest(location, descriptor.digest),
        scopes,
        headers={"Content-Length": "0"},
    )
    _check(response, what, repo, 201)
    _verify_committed(response, descriptor, what)


def _verify_committed(response: httpx.Response, descriptor: Descriptor, what: str) -> None:
    said = response.headers.get("docker-content-digest")
    if said and said != descriptor.digest:
        raise RegistryError(
            f"{what}: the registry stored digest {said}", why="the blob was corrupted in transit"
        )
