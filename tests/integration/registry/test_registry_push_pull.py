"""The registry client against a real Distribution registry (anonymous access)."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from tests.fixtures.registry import RegistryServer

from kiln.content import BlobStore
from kiln.errors import NotFoundError, RegistryError
from kiln.http.stats import TransferStats
from kiln.oci import (
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    Descriptor,
    Platform,
    host_platform,
    sha256_digest,
)
from kiln.registry.client import RegistryClient
from kiln.registry.reference import Reference
from kiln.registry.upload import BlobPush

pytestmark = pytest.mark.integration


class Recorder(httpx.HTTPTransport):
    """The real network, with a log of what was sent."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(request)
        return super().handle_request(request)

    def methods(self) -> list[str]:
        return [r.method for r in self.sent]


def _repo(server: RegistryServer, name: str = "") -> Reference:
    return Reference.parse(f"{server.host}/kiln-test/{name or secrets.token_hex(4)}")


def _blob(size: int, media_type: str = OCI_LAYER_GZIP) -> tuple[Descriptor, bytes]:
    data = os.urandom(size)
    return Descriptor(media_type, sha256_digest(data), size), data


def _raw_blob(server: RegistryServer, repo: Reference, digest: str) -> bytes | None:
    """The blob as the registry serves it, fetched without kiln's client."""
    r = httpx.get(f"{server.url}/v2/{repo.repository}/blobs/{digest}", follow_redirects=True)
    return r.content if r.status_code == 200 else None


def _push_image(
    client: RegistryClient, ref: Reference, arch: str, layer: bytes
) -> tuple[str, bytes, Descriptor]:
    config = json.dumps(
        {"architecture": arch, "os": "linux",
         "rootfs": {"type": "layers", "diff_ids": [sha256_digest(layer)]}}
    ).encode()  # fmt: skip
    cdesc = Descriptor(OCI_CONFIG, sha256_digest(config), len(config))
    ldesc = Descriptor(OCI_LAYER_GZIP, sha256_digest(layer), len(layer))
    client.push_blobs(ref.repo_ref, [(cdesc, config), (ldesc, layer)])
    manifest = json.dumps(
        {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": cdesc.to_json(),
         "layers": [ldesc.to_json()]}
    ).encode()  # fmt: skip
    digest = client.put_manifest(ref.repo_ref.with_digest(sha256_digest(manifest)), manifest,
                                 OCI_MANIFEST)  # fmt: skip
    return digest, manifest, ldesc


def test_monolithic_push_then_head_skip(registry: RegistryServer) -> None:
    recorder = Recorder()
    repo = _repo(registry)
    desc, data = _blob(100_000)
    with RegistryClient(transport=recorder) as client:
        assert client.push_blob(repo, desc, data) == BlobPush.UPLOADED
        assert recorder.methods() == ["HEAD", "POST", "PUT"]
        assert client.stats.pushed() == len(data)
        assert client.stats.layers_pushed() == len(data)
        assert client.blob_exists(repo, desc.digest)

        recorder.sent.clear()
        assert client.push_blob(repo, desc, data) == BlobPush.EXISTS
        assert recorder.methods() == ["HEAD"]  # nothing uploaded the second time
        assert client.stats.pushed() == len(data)
    assert _raw_blob(registry, repo, desc.digest) == data


def test_chunked_push_streams_a_file(registry: RegistryServer, tmp_path: Path) -> None:
    recorder = Recorder()
    repo = _repo(registry)
    desc, data = _blob(700_000)
    source = tmp_path / "layer.tar.gz"
    source.write_bytes(data)
    with RegistryClient(
        transport=recorder, monolithic_threshold=256 * 1024, chunk_size=256 * 1024
    ) as client:
        assert client.push_blob(repo, desc, source) == BlobPush.UPLOADED
        assert client.stats.pushed() == len(data)
    patches = [r for r in recorder.sent if r.method == "PATCH"]
    assert [r.headers["content-range"] for r in patches] == [
        "0-262143",
        "262144-524287",
        "524288-699999",
    ]
    # Every step followed the Location the previous one returned.
    assert len({str(r.url) for r in patches}) == 3
    assert recorder.methods() == ["HEAD", "POST", "PATCH", "PATCH", "PATCH", "PUT"]
    assert _raw_blob(registry, repo, desc.digest) == data


def test_cross_repository_mount(registry: RegistryServer) -> None:
    recorder = Recorder()
    source, target, empty = _repo(registry), _repo(registry), _repo(registry)
    desc, data = _blob(50_000)
    with RegistryClient(transport=recorder) as client:
        client.push_blob(source, desc, data)
        pushed = client.stats.pushed()
        recorder.sent.clear()
        # Other registries and repositories without the blob are skipped or fall through.
        mount_from = [Reference.parse("ghcr.io/elsewhere/x"), empty, source]
        assert client.push_blob(target, desc, data, mount_from=mount_from) == BlobPush.MOUNTED
        assert client.stats.pushed() == pushed  # not a byte sent
        posts = [r for r in recorder.sent if r.method == "POST"]
        assert [r.url.params["from"] for r in posts] == [empty.repository, source.repository]
        assert "PUT" not in recorder.methods() and "PATCH" not in recorder.methods()
    assert _raw_blob(registry, target, desc.digest) == data


def test_failed_mount_falls_back_to_upload(registry: RegistryServer) -> None:
    recorder = Recorder()
    target, elsewhere = _repo(registry), _repo(registry)
    desc, data = _blob(10_000)
    with RegistryClient(transport=recorder) as client:
        assert client.push_blob(target, desc, data, [elsewhere]) == BlobPush.UPLOADED
    # The upload reused the session the refused mount opened: one POST only.
    assert recorder.methods() == ["HEAD", "POST", "PUT"]
    assert _raw_blob(registry, target, desc.digest) == data


def test_manifest_by_tag_and_digest(registry: RegistryServer) -> None:
    ref = _repo(registry).with_tag("v1")
    with RegistryClient() as client:
        digest, raw, _ = _push_image(client, ref, "amd64", os.urandom(1000))
        assert client.put_manifest(ref, raw, OCI_MANIFEST) == digest
        by_tag = client.get_manifest(ref)
        assert (by_tag.raw, by_tag.media_type, by_tag.digest) == (raw, OCI_MANIFEST, digest)
        by_digest = client.get_manifest(ref.repo_ref.with_digest(digest))
        assert by_digest.raw == raw
        assert client.head_manifest(ref) == digest
        assert client.head_manifest(ref.with_tag("missing")) is None
        with pytest.raises(NotFoundError) as info:
            client.get_manifest(ref.with_tag("missing"))
        assert str(ref.with_tag("missing")) in str(info.value)


def test_resolve_index_to_platform_and_count_bytes(registry: RegistryServer) -> None:
    ref = _repo(registry).with_tag("multi")
    here = host_platform()
    other = "s390x" if here.architecture != "s390x" else "ppc64le"
    stats = TransferStats()
    with RegistryClient(stats=stats) as client:
        d_here, raw_here, layer_here = _push_image(client, ref, here.architecture, b"h" * 5000)
        d_other, raw_other, _ = _push_image(client, ref, other, b"o" * 6000)
        index = json.dumps(
            {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
                {"mediaType": OCI_MANIFEST, "digest": d_other, "size": len(raw_other),
                 "platform": {"os": "linux", "architecture": other}},
                {"mediaType": OCI_MANIFEST, "digest": d_here, "size": len(raw_here),
                 "platform": {"os": "linux", "architecture": here.architecture,
                              **({"variant": here.variant} if here.variant else {})}},
            ]}
        ).encode()  # fmt: skip
        index_digest = client.put_manifest(ref, index, OCI_INDEX)
        stats.reset()

        resolved = client.resolve_image(ref, here, category="image")
        assert resolved.digest == d_here
        assert resolved.index_digest == index_digest
        assert resolved.pinned.digest == index_digest
        assert resolved.layers == [layer_here]
        assert resolved.config_json()["architecture"] == here.architecture
        # Index, manifest and config were read; not one layer byte.
        assert stats.layers_pulled() == 0
        assert stats.pulled("image") == len(index) + len(raw_here) + resolved.config_descriptor.size

        with pytest.raises(NotFoundError) as info:
            client.resolve_image(ref, Platform("linux", "mips64le"))
        assert f"linux/{other}" in str(info.value) and "mips64le" in str(info.value)

        # Pulling by digest pins (and verifies) the index.
        again = client.resolve_image(ref.repo_ref.with_digest(index_digest), here)
        assert again.digest == d_here


def test_fetch_blob_and_stream(registry: RegistryServer, tmp_path: Path) -> None:
    repo = _repo(registry)
    desc, data = _blob(300_000)
    cfg_desc, cfg = _blob(200, OCI_CONFIG)
    store = BlobStore(tmp_path / "blobs")
    with RegistryClient() as client:
        client.push_blobs(repo, [(desc, data), (cfg_desc, cfg)])
        client.stats.reset()
        assert client.fetch_blob(repo, desc, store, category="cache") == len(data)
        assert store.read(desc.digest) == data
        assert client.fetch_blob(repo, desc, store, category="cache") == 0  # already stored
        assert client.stats.layers_pulled("cache") == len(data)
        assert client.stats.pulled("image") == 0
        with client.open_blob(repo, desc.digest) as chunks:
            assert b"".join(chunks) == data
        assert client.get_blob_bytes(repo, cfg_desc.digest) == cfg
        with pytest.raises(RegistryError, match="larger than 100 bytes"):
            client.get_blob_bytes(repo, cfg_desc.digest, max_size=100)
        with pytest.raises(NotFoundError):
            client.get_blob_bytes(repo, sha256_digest(b"never pushed"))


def _storage_blob(server: RegistryServer, digest: str) -> Path:
    hexdigest = digest.split(":", 1)[1]
    return server.storage / "docker/registry/v2/blobs/sha256" / hexdigest[:2] / hexdigest / "data"


def test_corrupted_content_is_rejected(registry: RegistryServer, tmp_path: Path) -> None:
    repo = _repo(registry)
    desc, data = _blob(20_000)
    ref = repo.with_tag("t")
    store = BlobStore(tmp_path / "blobs")
    with RegistryClient() as client:
        client.push_blob(repo, desc, data)
        digest, raw, _ = _push_image(client, ref, "amd64", os.urandom(100))
        # Flip bytes in the registry's own storage: it now serves the wrong content.
        _storage_blob(registry, desc.digest).write_bytes(os.urandom(len(data)))
        _storage_blob(registry, digest).write_bytes(raw.replace(b"tar+gzip", b"tar+zstd"))
        with pytest.raises(RegistryError, match="does not match its digest"):
            client.fetch_blob(repo, desc, store)
        assert not store.has(desc.digest)
        assert [p for p in store.root.iterdir()] == []  # no temp file left either
        with pytest.raises(RegistryError, match="does not match its digest"):
            client.get_manifest(repo.with_digest(digest))


def test_registry_rejects_a_wrong_digest(registry: RegistryServer) -> None:
    repo = _repo(registry)
    _, data = _blob(1000)
    lie = Descriptor(OCI_LAYER_GZIP, sha256_digest(b"something else"), len(data))
    with RegistryClient() as client, pytest.raises(RegistryError) as info:
        client.push_blob(repo, lie, data)
    assert "400" in str(info.value) and lie.digest in str(info.value)
    assert _raw_blob(registry, repo, lie.digest) is None


def test_push_blobs_in_parallel(registry: RegistryServer) -> None:
    repo = _repo(registry)
    blobs = [_blob(20_000 + i) for i in range(8)]
    with RegistryClient(workers=4) as client:
        results = client.push_blobs(repo, blobs + blobs[:2])  # duplicates pushed once
        assert results == {d.digest: BlobPush.UPLOADED for d, _ in blobs}
        assert client.stats.pushed() == sum(len(b) for _, b in blobs)
        again = client.push_blobs(repo, blobs)
        assert set(again.values()) == {BlobPush.EXISTS}
    for desc, data in blobs:
        assert _raw_blob(registry, repo, desc.digest) == data


def test_fresh_registry_from_factory(registry_factory: Callable[..., RegistryServer]) -> None:
    server = registry_factory()
    repo = _repo(server, "only-here")
    desc, data = _blob(10)
    with RegistryClient() as client:
        client.push_blob(repo, desc, data)
    assert _raw_blob(server, repo, desc.digest) == data
    server.stop()


def test_unreachable_registry_is_reported_plainly() -> None:
    import socket

    with socket.socket() as sock:  # a port with nothing listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ref = Reference.parse(f"127.0.0.1:{port}/app:v1")
    with RegistryClient() as client, pytest.raises(RegistryError) as info:
        client.get_manifest(ref)
    text = str(info.value)
    assert f"cannot reach registry 127.0.0.1:{port}" in text
    assert "hint:" in text
    assert isinstance(info.value.__cause__, httpx.ConnectError)
