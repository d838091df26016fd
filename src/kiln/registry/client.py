"""The OCI distribution client: manifests, image resolution, blob pull and push.

One :class:`RegistryClient` serves any number of registries and is safe to use from a
thread pool. Bytes that cross the wire are counted in a :class:`TransferStats` under a
category (the client's default, or ``category=`` per call).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Generator, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from types import TracebackType

import httpx

from kiln.content import BlobStore
from kiln.errors import CorruptBlobError, NotFoundError, RegistryError
from kiln.http.retry import DROPPED, RetryPolicy
from kiln.http.stats import TransferStats, is_layer_media_type
from kiln.oci import Descriptor, Platform, host_platform, is_digest, sha256_digest
from kiln.registry.auth import pull_scope, push_scope
from kiln.registry.dockerconfig import Anonymous, CredentialSource
from kiln.registry.manifest import (
    MANIFEST_ACCEPT,
    MAX_MANIFEST_SIZE,
    Manifest,
    ResolvedImage,
    accept_header,
    detect_media_type,
    image_parts,
    select_platform,
)
from kiln.registry.reference import Reference, api_host
from kiln.registry.session import Session
from kiln.registry.transport import Transport, error_messages, raise_for_status, transport_error
from kiln.registry.upload import BlobPush, BlobSource, UploadSettings, blob_present, push_blob

log = logging.getLogger(__name__)

MAX_SMALL_BLOB = 64 << 20
DEFAULT_WORKERS = 4


class RegistryClient:
    """A client for OCI/Docker registries (pull, push, mount), thread-safe."""

    def __init__(
        self,
        credentials: CredentialSource | None = None,
        *,
        insecure: Iterable[str] = (),
        stats: TransferStats | None = None,
        category: str = "image",
        retry: RetryPolicy | None = None,
        timeout: httpx.Timeout | None = None,
        transport: httpx.BaseTransport | None = None,
        monolithic_threshold: int = 32 << 20,
        chunk_size: int = 32 << 20,
        workers: int = DEFAULT_WORKERS,
    ) -> None:
        """*credentials* defaults to anonymous access; pass a
        :class:`~kiln.registry.dockerconfig.DockerConfig` to use ``docker login`` logins.
        *insecure* hosts (``host[:port]``) may use plain HTTP or unverified TLS; loopback
        registries always use plain HTTP. *transport* replaces the network (tests)."""
        self.stats = stats if stats is not None else TransferStats()
        self._session = Session(
            credentials if credentials is not None else Anonymous(),
            Transport(insecure=insecure, retry=retry, timeout=timeout, transport=transport),
            self.stats,
            category,
        )
        self._upload = UploadSettings(monolithic_threshold, chunk_size)
        self.workers = max(1, workers)

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _category(self, category: str | None) -> str:
        return category or self._session.category

    # -- registry ------------------------------------------------------------------
    def ping(self, registry: str) -> None:
        """``GET /v2/`` with the authentication flow: verifies reachability and login."""
        base = self._session.transport.base_url(api_host(registry))
        url = f"{base}/v2/"
        response = self._session.request(registry, "GET", url, scopes=())
        raise_for_status(response, f"log in to {registry}", registry=registry)

    # -- manifests -----------------------------------------------------------------
    def get_manifest(
        self,
        ref: Reference,
        accept: Sequence[str] = MANIFEST_ACCEPT,
        *,
        category: str | None = None,
    ) -> Manifest:
        """Fetch the manifest (or index) *ref* names; verified when *ref* has a digest."""
        url = self._session.url(ref, f"manifests/{ref.reference}")
        response = self._session.request(
            ref.registry,
            "GET",
            url,
            scopes=[pull_scope(ref.repository)],
            headers={"Accept": accept_header(accept)},
            follow_redirects=True,
        )
        if response.status_code == 404:
            raise NotFoundError(
                f"image {ref} not found",
                why=_said(response),
                hint="check the repository name and tag, and that you are logged in",
            )
        raise_for_status(response, f"pull manifest {ref}", registry=ref.registry)
        raw = response.content
        if len(raw) > MAX_MANIFEST_SIZE:
            raise RegistryError(f"the manifest of {ref} is larger than {MAX_MANIFEST_SIZE} bytes")
        self.stats.add_pulled(len(raw), self._category(category))
        digest = sha256_digest(raw)
        if ref.digest and digest != ref.digest:
            raise RegistryError(
                f"the manifest of {ref} does not match its digest",
                why=f"the registry served content with digest {digest}",
            )
        media_type = detect_media_type(response.headers.get("content-type"), raw)
        return Manifest(raw, media_type, digest)

    def head_manifest(self, ref: Reference, accept: Sequence[str] = MANIFEST_ACCEPT) -> str | None:
        """The digest *ref* points at, or None when it does not exist."""
        url = self._session.url(ref, f"manifests/{ref.reference}")
        response = self._session.request(
            ref.registry,
            "HEAD",
            url,
            scopes=[pull_scope(ref.repository)],
            headers={"Accept": accept_header(accept)},
            follow_redirects=True,
        )
        if response.status_code == 404:
            return None
        raise_for_status(response, f"look up {ref}", registry=ref.registry)
        digest = str(response.headers.get("docker-content-digest", ""))
        if is_digest(digest):
            return digest
        return self.get_manifest(ref, accept).digest

    def put_manifest(
        self,
        ref: Reference,
        raw: bytes,
        media_type: str,
        *,
        category: str | None = None,
    ) -> str:
        """Store a manifest under *ref*'s tag (or its digest when it has no tag)."""
        digest = sha256_digest(raw)
        if ref.digest and ref.digest != digest:
            raise RegistryError(f"cannot push {ref}: the manifest's digest is {digest}")
        target = ref.tag or digest
        url = self._session.url(ref, f"manifests/{target}")
        response = self._session.request(
            ref.registry,
            "PUT",
            url,
            scopes=[push_scope(ref.repository)],
            headers={"Content-Type": media_type},
            body=raw,
        )
        raise_for_status(response, f"push manifest {ref}", registry=ref.registry, ok=(200, 201))
        self.stats.add_pushed(len(raw), self._category(category))
        said = response.headers.get("docker-content-digest")
        if said and said != digest:
            raise RegistryError(
                f"push manifest {ref}: the registry stored digest {said}, expected {digest}"
            )
        return digest

    def resolve_image(
        self,
        ref: Reference,
        platform: Platform | None = None,
        *,
        category: str | None = None,
    ) -> ResolvedImage:
        """Manifest, config and layers of *ref* for *platform* (default: this host)."""
        wanted = platform or host_platform()
        top = self.get_manifest(ref, category=category)
        manifest, index_digest = top, None
        if top.is_index:
            index_digest = top.digest
            entry = select_platform(top, wanted, ref)
            manifest = self.get_manifest(
                Reference(ref.registry, ref.repository, ref.tag, entry.digest),
                category=category,
            )
        config_desc, layers = image_parts(manifest, ref)
        config = self.get_blob_bytes(
            ref.repo_ref, config_desc.digest, max_size=max(config_desc.size, 1), category=category
        )
        return ResolvedImage(
            ref=ref,
            digest=manifest.digest,
            manifest=manifest,
            config=config,
            config_descriptor=config_desc,
            layers=layers,
            index_digest=index_digest,
        )

    # -- blobs: pull ---------------------------------------------------------------
    def blob_exists(self, repo_ref: Reference, digest: str) -> bool:
        return blob_present(self._session, repo_ref, digest, [pull_scope(repo_ref.repository)])

    @contextmanager
    def open_blob(
        self,
        repo_ref: Reference,
        digest: str,
        *,
        layer: bool = True,
        category: str | None = None,
    ) -> Iterator[Iterator[bytes]]:
        """Stream a blob as chunks; a dropped connection resumes with a Range request.

        The iterator verifies the digest after the last chunk and raises
        :class:`RegistryError` on a mismatch, so commit what it yields only after it is
        exhausted.
        """
        chunks = self._blob_chunks(repo_ref, digest, layer, self._category(category))
        try:
            yield chunks
        finally:
            chunks.close()

    def _blob_chunks(
        self, repo: Reference, digest: str, layer: bool, category: str
    ) -> Generator[bytes, None, None]:
        if not is_digest(digest):
            raise RegistryError(f"unsupported blob digest {digest!r} in {repo}")
        url = self._session.url(repo, f"blobs/{digest}")
        policy = self._session.transport.retry
        budget = policy.budget()
        hasher = hashlib.sha256()
        offset = 0
        while True:
            headers = {"Range": f"bytes={offset}-"} if offset else {}
            response = self._session.request(
                repo.registry,
                "GET",
                url,
                scopes=[pull_scope(repo.repository)],
                headers=headers,
                stream=True,
                follow_redirects=True,
            )
            try:
                if response.status_code == 404:
                    raise NotFoundError(f"blob {digest} not found in {repo}", why=_said(response))
                raise_for_status(
                    response,
                    f"pull blob {digest} from {repo}",
                    registry=repo.registry,
                    ok=(200, 206),
                )
                skip = offset if response.status_code == 200 else 0
                resumed_at = offset
                try:
                    for chunk in response.iter_bytes():
                        if skip:  # the server ignored our Range: drop what we have
                            cut = min(skip, len(chunk))
                            chunk, skip = chunk[cut:], skip - cut
                            if not chunk:
                                continue
                        self.stats.add_pulled(len(chunk), category, layer=layer)
                        hasher.update(chunk)
                        offset += len(chunk)
                        yield chunk
                except DROPPED as exc:
                    if offset > resumed_at:  # a fresh budget for every stretch that moved
                        budget = policy.budget()
                    if not budget.pause():
                        raise transport_error(repo.registry, exc) from exc
                    log.debug("blob %s dropped at %d bytes (%s); resuming", digest, offset, exc)
                    continue
                except httpx.HTTPError as exc:
                    raise RegistryError(
                        f"pull blob {digest} from {repo}: failed", why=str(exc)
                    ) from exc
            finally:
                response.close()
            break
        actual = "sha256:" + hasher.hexdigest()
        if actual != digest:
            raise CorruptBlobError(
                f"blob {digest} from {repo} does not match its digest",
                digest=digest,
                why=f"the registry served {offset} bytes with digest {actual}",
            )

    def fetch_blob(
        self,
        repo_ref: Reference,
        descriptor: Descriptor,
        store: BlobStore,
        *,
        category: str | None = None,
    ) -> int:
        """Download a blob into *store* (verified); return the bytes transferred.

        A blob already in the store is not downloaded. On a digest or size mismatch
        nothing is stored and :class:`CorruptBlobError` is raised.
        """
        if store.has(descriptor.digest):
            return 0
        layer = is_layer_media_type(descriptor.media_type)
        with self.open_blob(repo_ref, descriptor.digest, layer=layer, category=category) as chunks:
            # the chunks check the digest once exhausted: the store need not hash them too
            return store.ingest(descriptor, chunks, f"blob {descriptor.digest} from {repo_ref}",
                                vouched=True)  # fmt: skip

    def get_blob_bytes(
        self,
        repo_ref: Reference,
        digest: str,
        *,
        max_size: int = MAX_SMALL_BLOB,
        layer: bool = False,
        category: str | None = None,
    ) -> bytes:
        """A small blob (a config, a cache manifest) in memory, verified."""
        parts: list[bytes] = []
        size = 0
        with self.open_blob(repo_ref, digest, layer=layer, category=category) as chunks:
            for chunk in chunks:
                size += len(chunk)
                if size > max_size:
                    raise RegistryError(
                        f"blob {digest} from {repo_ref} is larger than {max_size} bytes"
                    )
                parts.append(chunk)
        return b"".join(parts)

    # -- blobs: push ---------------------------------------------------------------
    def push_blob(
        self,
        repo_ref: Reference,
        descriptor: Descriptor,
        source: BlobSource,
        mount_from: Sequence[Reference] = (),
        *,
        category: str | None = None,
    ) -> BlobPush:
        """Make *descriptor*'s blob present in *repo_ref*: skip, mount, or upload."""
        return push_blob(
            self._session,
            repo_ref.repo_ref,
            descriptor,
            source,
            mount_from,
            category=self._category(category),
            settings=self._upload,
        )

    def push_blobs(
        self,
        repo_ref: Reference,
        blobs: Iterable[tuple[Descriptor, BlobSource]],
        mount_from: Sequence[Reference] | Mapping[str, Sequence[Reference]] = (),
        *,
        category: str | None = None,
        workers: int | None = None,
    ) -> dict[str, BlobPush]:
        """Push many blobs in parallel; the first failure cancels what has not started.

        *mount_from* lists cross-repository mount sources for every blob, or per digest."""
        unique: dict[str, tuple[Descriptor, BlobSource]] = {}
        for desc, source in blobs:
            unique.setdefault(desc.digest, (desc, source))
        if not unique:
            return {}
        results: dict[str, BlobPush] = {}
        with ThreadPoolExecutor(max_workers=workers or self.workers) as pool:
            futures: dict[Future[BlobPush], str] = {
                pool.submit(
                    self.push_blob,
                    repo_ref,
                    desc,
                    source,
                    mount_from.get(digest, ()) if isinstance(mount_from, Mapping) else mount_from,
                    category=category,
                ): digest
                for digest, (desc, source) in unique.items()
            }
            done, pending = wait(futures, return_when=FIRST_EXCEPTION)
            for future in pending:
                future.cancel()
            for future in done:
                exc = future.exception()
                if exc is not None:
                    wait(pending)
                    raise exc
                results[futures[future]] = future.result()
            for future in pending:
                results[futures[future]] = future.result()
        return results


def _said(response: httpx.Response) -> str | None:
    said = error_messages(response)
    return f"the registry said: {said}" if said else None
