"""Every remote-cache backend session, against in-process fakes (no root, no network).

Each "machine" is a fresh build: its own blob store, locator, warnings and stats, so what a
load returns can only have come through the backend. The registry and the GitHub Actions
cache service are in-memory fakes behind ``httpx.MockTransport``
(:mod:`tests.fixtures.fake_registry`, :mod:`tests.fixtures.fake_gha`); the local backend
writes to ``tmp_path``. The same flows run end to end in ``tests/integration/cache``.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from tests.fixtures.fake_gha import URL as GHA_URL
from tests.fixtures.fake_gha import FakeGha, VirtualTime, gha_token
from tests.fixtures.fake_registry import HOST, FakeRegistry

from kiln.build import cache_backends
from kiln.cache.backends.gha import GhaSession, blob_key, index_prefix
from kiln.cache.records import CacheEntry, MountRecord, StepRecord
from kiln.cache.remote.base import CacheContext, CacheExport, CacheImport, ImportedCache
from kiln.cache.remote.flags import parse_cache_from, parse_cache_to
from kiln.cache.remote.format import (
    ANNOTATION_CREATED,
    ANNOTATION_DIFF_ID,
    CACHE_CONFIG_MEDIA_TYPE,
    INLINE_CONFIG_KEY,
    parse_config,
    parse_inline,
)
from kiln.cache.remote.session import CacheSessions, RemoteCaches
from kiln.content import BlobLocator, BlobStore
from kiln.errors import AuthError, CacheError, UsageError
from kiln.gha.client import READ, WRITE
from kiln.http.stats import TransferStats
from kiln.image import ImageConfig
from kiln.oci import (
    DOCKER_LAYER_GZIP,
    DOCKER_MANIFEST_LIST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    Descriptor,
    Layer,
    Platform,
    canonical_json,
    sha256_digest,
)
from kiln.registry import transport
from kiln.registry.blobsource import RegistryBlobSource
from kiln.registry.client import RegistryClient
from kiln.registry.reference import Reference

BACKENDS = cache_backends()
PLATFORM = Platform("linux", "amd64")
REPO = "cache/app"
REF = f"{HOST}/{REPO}:buildcache"
MAIN = "refs/heads/main"
PR = "refs/pull/7/merge"


# --------------------------------------------------------------------------- machines
class Machine:
    """One build on a fresh machine: what a session sees through its CacheContext."""

    def __init__(self, root: Path, client: RegistryClient) -> None:
        self.store = BlobStore(root / "blobs")
        self.locator = BlobLocator(self.store)
        self.warnings: list[str] = []
        self.stats = TransferStats()
        self.ctx = CacheContext(
            client,
            self.store,
            self.locator,
            self.warnings.append,
            self.stats,
            PLATFORM,
            build_scope="kiln-app",
        )

    def layer(self, n: int, size: int = 0) -> Layer:
        """Layer *n*: its blob stored on this machine (the same bytes on every machine)."""
        size = size or 40 + 10 * n
        seed = hashlib.sha256(f"layer {n}".encode()).digest()
        data = (seed * (1 + size // len(seed)))[:size]
        digest = self.store.put(data)
        return Layer(Descriptor(OCI_LAYER_GZIP, digest, len(data)), sha256_digest(b"diff" + data))

    def export(self, text: str, entries: list[CacheEntry],
               mounts: Sequence[MountRecord] = ()) -> None:  # fmt: skip
        """``--cache-to text`` with the backend's default session."""
        sessions = CacheSessions(self.ctx)
        try:
            parse_cache_to(text, BACKENDS).export(sessions, entries, list(mounts))
        finally:
            sessions.close()

    def load(self, text: str) -> ImportedCache | None:
        """``--cache-from text`` with the backend's default session."""
        sessions = CacheSessions(self.ctx)
        try:
            return parse_cache_from(text, BACKENDS).load(sessions)
        finally:
            sessions.close()


@pytest.fixture
def registry() -> FakeRegistry:
    return FakeRegistry()


@pytest.fixture
def machine(tmp_path: Path, registry: FakeRegistry) -> Iterator[Callable[[str], Machine]]:
    """``machine(name)``: a fresh machine whose registry client talks to the fake."""
    clients: list[RegistryClient] = []

    def make(name: str) -> Machine:
        client = registry.client()
        clients.append(client)
        return Machine(tmp_path / name, client)

    yield make
    for client in clients:
        client.close()


def key(n: int) -> str:
    return sha256_digest(f"step {n}".encode())


def created(n: int) -> str:
    return f"2026-01-0{n}T00:00:00Z"


def chain(m: Machine) -> list[CacheEntry]:
    """Two stages on one base step: 1 → 2 (no layer) → 3 → 4, and 1 → 5."""
    l1, l2, l3, l4 = (m.layer(n) for n in (1, 2, 3, 4))
    return [
        CacheEntry(key(1), None, l1, created(1)),
        CacheEntry(key(2), key(1), None, created(2)),
        CacheEntry(key(3), key(2), l2, created(3)),
        CacheEntry(key(4), key(3), l3, created(4)),
        CacheEntry(key(5), key(1), l4, created(5)),
    ]


def expected(entries: list[CacheEntry], media_type: str | None = None) -> dict[str, StepRecord]:
    """The records a load must return: a step without a layer keeps no creation time
    (BuildKit's format has none for it)."""
    out = {}
    for e in entries:
        layer = e.layer
        if layer is not None and media_type is not None:
            layer = Layer(Descriptor(media_type, layer.digest, layer.blob.size), layer.diff_id)
        out[e.key] = StepRecord(layer, e.created if layer else "")
    return out


def record_parents(config: dict[str, Any]) -> dict[str, str | None]:
    """Each record's key → the key its ``inputs`` link to."""
    records = config["records"]
    return {
        r["digest"]: records[r["inputs"][0][0]["link"]]["digest"] if "inputs" in r else None
        for r in records
    }


def layer_parents(config: dict[str, Any]) -> dict[str, str | None]:
    """Each layer blob → its parent blob (BuildKit omits a parent of 0; -1 is none)."""
    layers = config["layers"]
    out = {}
    for item in layers:
        parent = item.get("parent", 0)
        out[item["blob"]] = layers[parent]["blob"] if parent >= 0 else None
    return out


def assert_chain_structure(config: dict[str, Any], entries: list[CacheEntry]) -> None:
    layer = {e.key: e.layer.digest for e in entries if e.layer}
    assert record_parents(config) == {e.key: e.parent for e in entries}
    # a layer's parent is the layer of the nearest earlier step that made one
    assert layer_parents(config) == {
        layer[key(1)]: None,
        layer[key(3)]: layer[key(1)],
        layer[key(4)]: layer[key(3)],
        layer[key(5)]: layer[key(1)],
    }


# --------------------------------------------------------------------------- registry
MANIFEST_FORMS = [
    pytest.param("", OCI_MANIFEST, OCI_LAYER_GZIP, id="image-manifest"),
    pytest.param(",image-manifest=false", OCI_INDEX, OCI_LAYER_GZIP, id="oci-index"),
    pytest.param(
        ",image-manifest=false,oci-mediatypes=false",
        DOCKER_MANIFEST_LIST,
        DOCKER_LAYER_GZIP,
        id="docker-manifest-list",
    ),
]


def cache_config_of(registry: FakeRegistry) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The stored cache config and the layer descriptors of the tagged cache manifest."""
    raw, media_type = registry.manifest(REPO, "buildcache")
    body = json.loads(raw)
    if media_type == OCI_MANIFEST:
        config_desc, layers = body["config"], body["layers"]
    else:
        *layers, config_desc = body["manifests"]
    assert config_desc["mediaType"] == CACHE_CONFIG_MEDIA_TYPE
    return json.loads(registry.blob(REPO, config_desc["digest"])), layers


@pytest.mark.parametrize(("form", "manifest_type", "layer_type"), MANIFEST_FORMS)
def test_registry_export_then_load_round_trips_records(
    machine: Callable[[str], Machine],
    registry: FakeRegistry,
    form: str,
    manifest_type: str,
    layer_type: str,
) -> None:
    m1 = machine("m1")
    entries = chain(m1)
    m1.export(f"type=registry,ref={REF},mode=max{form}", entries)

    assert registry.manifest(REPO, "buildcache")[1] == manifest_type
    config, layer_descs = cache_config_of(registry)
    assert_chain_structure(config, entries)
    by_digest = {e.layer.digest: e for e in entries if e.layer}
    assert [d["mediaType"] for d in layer_descs] == [layer_type] * 4
    for desc in layer_descs:
        entry = by_digest[desc["digest"]]
        assert desc["annotations"][ANNOTATION_DIFF_ID] == entry.layer.diff_id
        assert desc["annotations"][ANNOTATION_CREATED] == entry.created

    m2 = machine("m2")
    cache = m2.load(f"type=registry,ref={REF}")
    assert cache is not None and m2.warnings == []
    assert cache.records == expected(entries, layer_type)
    # the layers come lazily: a hit registers the repository, a fetch downloads from it
    assert entries[3].layer is not None and not m2.store.has(entries[3].layer.digest)
    hit = cache.lookup(key(4))
    assert hit is not None and hit.source == "remote" and hit.record.layer is not None
    m2.locator.fetch(hit.record.layer.blob)
    assert m2.store.read(hit.record.layer.digest) == m1.store.read(hit.record.layer.digest)


def test_registry_export_pushes_every_blob_before_the_manifest(
    machine: Callable[[str], Machine], registry: FakeRegistry
) -> None:
    m1 = machine("m1")
    entries = chain(m1)
    m1.export(f"type=registry,ref={REF},mode=max", entries)

    requests = registry.requests
    puts = [i for i, r in enumerate(requests) if r.method == "PUT" and "/manifests/" in r.path]
    assert puts == [len(requests) - 1]  # one manifest, the very last request
    assert requests[-1].status == 201 and requests[-1].path.endswith("/manifests/buildcache")
    config, _ = cache_config_of(registry)
    config_digest = sha256_digest(canonical_json(config))
    layer_digests = {e.layer.digest for e in entries if e.layer}
    assert sorted(registry.uploaded()) == sorted(layer_digests | {config_digest})
    for digest in layer_digests | {config_digest}:  # each one looked for before it was sent
        head = next(
            i for i, r in enumerate(requests) if r.method == "HEAD" and r.path.endswith(digest)
        )
        commit = next(
            i
            for i, r in enumerate(requests)
            if r.method == "PUT" and r.query.get("digest") == digest
        )
        assert requests[head].status == 404 and head < commit < puts[0]


def test_registry_export_skips_blobs_the_registry_already_has(
    machine: Callable[[str], Machine], registry: FakeRegistry
) -> None:
    m1 = machine("m1")
    entries = chain(m1)
    l1, l2 = entries[0].layer, entries[2].layer
    assert l1 is not None and l2 is not None
    for layer in (l1, l2):
        registry.add_blob(REPO, m1.store.read(layer.digest))
        m1.store.remove(layer.digest)  # an upload of these could not even find the bytes
    m1.export(f"type=registry,ref={REF},mode=max", entries)

    uploaded = registry.uploaded()
    assert l1.digest not in uploaded and l2.digest not in uploaded
    assert len(uploaded) == 3  # the two other layers and the cache config
    heads = {r.path.rsplit("/", 1)[1]: r.status for r in registry.seen("HEAD", "/blobs/")}
    assert heads[l1.digest] == heads[l2.digest] == 200
    assert registry.seen("GET", "/blobs/") == [] and not m1.store.has(l1.digest)

    # a second export of the same records from a machine without any layer sends no blob
    before = len(registry.requests)
    machine("m2").export(f"type=registry,ref={REF},mode=max", entries)
    again = registry.requests[before:]
    assert [(r.method, r.status) for r in again if "/blobs/" in r.path] == [("HEAD", 200)] * 5
    assert [(r.method, r.path) for r in again if "/blobs/" not in r.path] == [
        ("PUT", f"/v2/{REPO}/manifests/buildcache")
    ]


def test_registry_export_mounts_a_blob_known_in_another_repository(
    machine: Callable[[str], Machine], registry: FakeRegistry
) -> None:
    m1 = machine("m1")
    entries = chain(m1)
    base = entries[0].layer
    assert base is not None
    registry.add_blob("library/base", m1.store.read(base.digest))
    m1.store.remove(base.digest)  # a base-image layer this machine never downloaded
    source = Reference.parse(f"{HOST}/library/base:1.0")
    m1.locator.add(base.digest, RegistryBlobSource(m1.ctx.client, source, "image"))
    m1.export(f"type=registry,ref={REF},mode=max", entries)

    mounts = [r for r in registry.seen("POST", "/blobs/uploads/") if "mount" in r.query]
    assert [(r.query, r.status) for r in mounts] == [
        ({"mount": base.digest, "from": "library/base"}, 201)
    ]
    assert base.digest not in registry.uploaded()
    assert base.digest in registry.blobs[REPO]
    assert registry.seen("GET", base.digest) == [] and not m1.store.has(base.digest)


def test_registry_load_of_a_missing_cache_warns_and_returns_none(
    machine: Callable[[str], Machine], registry: FakeRegistry
) -> None:
    m1 = machine("m1")
    assert m1.load(f"type=registry,ref={REF}") is None
    assert m1.warnings == [f"cache {REF} not found: building without it"]
    assert [r.status for r in registry.seen("GET", "/manifests/")] == [404]  # not retried


@pytest.fixture
def registry_time(monkeypatch: pytest.MonkeyPatch) -> VirtualTime:
    """Virtual time for the registry client's default retry policy, so that its backoff
    does not really sleep. Only a speed-up: RegistryClient is built without ``retry=``
    (being reworked), and should the default stop coming from this name the test still
    passes, just slower; nothing asserts on these sleeps."""
    time = VirtualTime()
    default = transport.RetryPolicy
    monkeypatch.setattr(
        transport, "RetryPolicy", functools.partial(default, sleep=time.sleep, clock=time.clock)
    )
    return time


@pytest.mark.usefixtures("registry_time")
def test_registry_load_retries_a_500_and_warns_when_it_persists(
    machine: Callable[[str], Machine], registry: FakeRegistry
) -> None:
    seed = machine("seed")
    entries = chain(seed)
    seed.export(f"type=registry,ref={REF},mode=max", entries)
    down = {"Retry-After": "0", "Content-Type": "application/json"}
    said = json.dumps({"errors": [{"code": "UNAVAILABLE", "message": "backend down"}]}).encode()

    registry.fail(500, match="/manifests/", count=1, headers=down, body=said)  # transient
    m1 = machine("m1")
    cache = m1.load(f"type=registry,ref={REF}")
    assert cache is not None and cache.records == expected(entries) and m1.warnings == []

    registry.fail(500, match="/manifests/", headers=down, body=said)  # for ever
    before = len(registry.seen("GET", "/manifests/"))
    m2 = machine("m2")
    assert m2.load(f"type=registry,ref={REF}") is None
    tries = registry.seen("GET", "/manifests/")[before:]
    assert len(tries) > 1 and {r.status for r in tries} == {500}
    assert len(m2.warnings) == 1
    assert m2.warnings[0].startswith(f"cannot import cache {REF}: pull manifest")


def _cache_manifest(registry: FakeRegistry, config: bytes) -> bytes:
    config_digest = registry.add_blob(REPO, config)
    desc = {"mediaType": CACHE_CONFIG_MEDIA_TYPE, "digest": config_digest, "size": len(config)}
    return json.dumps(
        {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": desc, "layers": []}
    ).encode()


MALFORMED = {
    "manifest-not-json": lambda registry: b"{this is not json",
    "config-not-json": lambda registry: _cache_manifest(registry, b"records: [oops"),
    "config-not-an-object": lambda registry: _cache_manifest(registry, b"[1, 2, 3]"),
    "descriptor-without-digest": lambda registry: json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": CACHE_CONFIG_MEDIA_TYPE, "size": 2},
            "layers": [],
        }
    ).encode(),
    "image-without-inline-cache": lambda registry: json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "layers": [],
            "config": {
                "mediaType": OCI_CONFIG,
                "size": 2,
                "digest": registry.add_blob(REPO, b"{}"),
            },
        }
    ).encode(),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_registry_load_of_a_malformed_cache_warns_and_returns_none(
    machine: Callable[[str], Machine], registry: FakeRegistry, case: str
) -> None:
    registry.add_manifest(REPO, "buildcache", MALFORMED[case](registry), OCI_MANIFEST)
    m1 = machine("m1")
    assert m1.load(f"type=registry,ref={REF}") is None
    assert len(m1.warnings) == 1 and m1.warnings[0].startswith(f"cannot import cache {REF}: ")


def test_registry_export_refused_with_401_raises_auth_error(
    machine: Callable[[str], Machine], registry: FakeRegistry
) -> None:
    registry.fail(401, headers={"WWW-Authenticate": f'Basic realm="{HOST}"'})
    m1 = machine("m1")
    entries = chain(m1)
    with pytest.raises(AuthError) as caught:
        m1.export(f"type=registry,ref={REF},mode=max", entries)
    assert "access denied" in str(caught.value) and caught.value.hint
    assert registry.seen("PUT") == [] and registry.blobs == {}  # nothing was written
    # ignore-error=true turns the same failure into a warning
    flag = parse_cache_to(f"type=registry,ref={REF},mode=max,ignore-error=true", BACKENDS)
    caches = RemoteCaches(m1.ctx, [], [flag])
    try:
        caches.export(lambda mode: entries)
    finally:
        caches.close()
    assert len(m1.warnings) == 1 and "failed (ignored)" in m1.warnings[0]
    assert "access denied" in m1.warnings[0]


def test_registry_insecure_marks_the_registry_host() -> None:
    ref = "registry.internal:5000/cache/app:buildcache"
    assert parse_cache_from(
        f"type=registry,ref={ref},registry.insecure=true", BACKENDS
    ).insecure_hosts == {"registry.internal:5000"}
    assert parse_cache_to(
        f"type=registry,ref={ref},mode=max,registry.insecure=true", BACKENDS
    ).insecure_hosts == {"registry.internal:5000"}
    for secure in (
        f"type=registry,ref={ref}",
        f"type=registry,ref={ref},registry.insecure=false",
        ref,
    ):
        assert parse_cache_from(secure, BACKENDS).insecure_hosts == frozenset()
        assert parse_cache_to(secure, BACKENDS).insecure_hosts == frozenset()
    with pytest.raises(UsageError, match=r"registry\.insecure must be true or false"):
        parse_cache_from(f"type=registry,ref={ref},registry.insecure=maybe", BACKENDS)


# --------------------------------------------------------------------------- inline
def test_inline_annotate_image_writes_the_cache_into_the_config(
    machine: Callable[[str], Machine], registry: FakeRegistry
) -> None:
    m1 = machine("m1")
    entries = chain(m1)
    image_layers = [e.layer for e in entries[:4] if e.layer]  # the final stage: 1 → 2 → 3 → 4
    config = ImageConfig(PLATFORM, diff_ids=[x.diff_id for x in image_layers])
    flag = parse_cache_to("type=inline", BACKENDS)
    sessions = CacheSessions(m1.ctx)
    try:
        flag.annotate_image(sessions, config, entries, image_layers)
        flag.export(sessions, entries, [])  # nothing to do: the cache travels with the image
    finally:
        sessions.close()

    value = config.extra[INLINE_CONFIG_KEY]
    assert json.loads(config.to_bytes())[INLINE_CONFIG_KEY] == value
    raw = json.loads(base64.b64decode(value))
    records = {r["digest"]: r for r in raw["records"]}
    # step 5 made a layer the image does not carry: it cannot be described
    assert set(records) == {key(1), key(2), key(3), key(4)}
    assert {k: r["layers"][0]["layer"] for k, r in records.items() if "layers" in r} == {
        key(1): 0,
        key(3): 1,
        key(4): 2,
    }
    assert parse_inline(value, image_layers) == {
        k: v for k, v in expected(entries).items() if k != key(5)
    }
    assert registry.requests == []


def test_registry_load_reads_the_inline_cache_of_an_image_index(
    machine: Callable[[str], Machine], registry: FakeRegistry
) -> None:
    m1 = machine("m1")
    entries = chain(m1)[:4]
    image_layers = [e.layer for e in entries if e.layer]
    config = ImageConfig(PLATFORM, diff_ids=[x.diff_id for x in image_layers])
    flag = parse_cache_to("type=inline", BACKENDS)
    sessions = CacheSessions(m1.ctx)
    try:
        flag.annotate_image(sessions, config, entries, image_layers)
    finally:
        sessions.close()
    # push the image as an index of two platforms, only linux/amd64 carrying the cache
    repo = "app/web"
    for layer in image_layers:
        registry.add_blob(repo, m1.store.read(layer.digest))

    def image(config_bytes: bytes) -> bytes:
        desc = {
            "mediaType": OCI_CONFIG,
            "digest": registry.add_blob(repo, config_bytes),
            "size": len(config_bytes),
        }
        return json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": desc,
                "layers": [x.blob.to_json() for x in image_layers],
            }
        ).encode()

    other = ImageConfig(Platform("linux", "arm64", "v8"), diff_ids=config.diff_ids)
    manifests = []
    for cfg in (other, config):
        raw = image(cfg.to_bytes())
        digest = registry.add_manifest(repo, sha256_digest(raw), raw, OCI_MANIFEST)
        plat = {"os": cfg.platform.os, "architecture": cfg.platform.architecture}
        manifests.append(
            {"mediaType": OCI_MANIFEST, "digest": digest, "size": len(raw), "platform": plat}
        )
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests})
    registry.add_manifest(repo, "latest", index.encode(), OCI_INDEX)

    m2 = machine("m2")
    cache = m2.load(f"type=registry,ref={HOST}/{repo}:latest")
    assert cache is not None and m2.warnings == []
    assert cache.records == expected(entries)
    # the amd64 image's config was read, never the arm64 one
    config_reads = [r.path.rsplit("/", 1)[1] for r in registry.seen("GET", "/blobs/")]
    assert config_reads == [sha256_digest(config.to_bytes())]


def test_inline_cannot_be_imported_nor_export_every_step() -> None:
    with pytest.raises(UsageError) as caught:
        parse_cache_from("type=inline", BACKENDS)
    assert "--cache-from 'type=inline'" in str(caught.value)
    assert "type=inline cannot be imported directly" in str(caught.value)
    assert caught.value.hint and "--cache-from type=registry,ref=<image>" in caught.value.hint

    with pytest.raises(UsageError) as caught:
        parse_cache_to("type=inline,mode=max", BACKENDS)
    assert "--cache-to 'type=inline,mode=max'" in str(caught.value)
    assert "type=inline supports only mode=min" in str(caught.value)
    assert caught.value.hint and "type=registry" in caught.value.hint
    assert "mode=max" in caught.value.hint

    with pytest.raises(UsageError, match="unknown attribute 'ref' for type=inline"):
        parse_cache_to("type=inline,ref=x/y", BACKENDS)
    assert parse_cache_to("type=inline,mode=min", BACKENDS).options.mode == "min"


# --------------------------------------------------------------------------- local
def layout_blobs(cache: Path) -> set[str]:
    return {
        "sha256:" + p.name
        for p in (cache / "blobs" / "sha256").iterdir()
        if not p.name.startswith(".")
    }


def layout_referenced(cache: Path) -> set[str]:
    """Every blob the tags of ``index.json`` reach (manifests or indexes of the cache)."""
    names: set[str] = set()
    for entry in json.loads((cache / "index.json").read_text())["manifests"]:
        names.add(entry["digest"])
        body = json.loads((cache / "blobs" / "sha256" / entry["digest"][7:]).read_bytes())
        children = body.get("manifests") or [body["config"], *body["layers"]]
        names.update(c["digest"] for c in children)
    return names


def tags(cache: Path) -> list[str]:
    index = json.loads((cache / "index.json").read_text())
    return [m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"]]


@pytest.mark.parametrize("form", ["", ",image-manifest=false"])
def test_local_export_then_load_round_trips_records(
    machine: Callable[[str], Machine], registry: FakeRegistry, tmp_path: Path, form: str
) -> None:
    cache = tmp_path / "cache"
    m1 = machine("m1")
    entries = chain(m1)
    m1.export(f"type=local,dest={cache},mode=max{form}", entries)
    assert json.loads((cache / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    assert tags(cache) == ["latest"]
    assert layout_blobs(cache) == layout_referenced(cache)

    m2 = machine("m2")
    loaded = m2.load(f"type=local,src={cache}")
    assert loaded is not None and m2.warnings == []
    assert loaded.records == expected(entries)
    hit = loaded.lookup(key(4))
    assert hit is not None and hit.record.layer is not None
    m2.locator.fetch(hit.record.layer.blob)  # copied (and verified) from the directory
    assert m2.store.read(hit.record.layer.digest) == m1.store.read(hit.record.layer.digest)
    # a pinned digest finds the same manifest
    digest = json.loads((cache / "index.json").read_text())["manifests"][0]["digest"]
    pinned = m2.load(f"type=local,src={cache},digest={digest}")
    assert pinned is not None and pinned.records == loaded.records
    assert registry.requests == []  # no HTTP at all


def test_local_exporting_twice_keeps_exactly_the_referenced_blobs(
    machine: Callable[[str], Machine], tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    m1 = machine("m1")
    entries = chain(m1)
    old, other = entries[:4], entries[4:]
    m1.export(f"type=local,dest={cache},mode=max,tag=other", other)
    m1.export(f"type=local,dest={cache},mode=max", old)
    first = layout_blobs(cache)
    # the next build changed step 4: its old layer must go, the other tag's must stay
    l5 = m1.layer(5)
    new = [*old[:3], CacheEntry(key(6), key(3), l5, created(6))]
    m1.export(f"type=local,dest={cache},mode=max", new)

    blobs = layout_blobs(cache)
    assert blobs == layout_referenced(cache)
    assert sorted(tags(cache)) == ["latest", "other"]
    dropped = entries[3].layer
    assert dropped is not None and dropped.digest in first and dropped.digest not in blobs
    assert l5.digest in blobs and other[0].layer is not None and other[0].layer.digest in blobs
    # the replaced manifest and its config are gone too: 4 layers, 2 configs, 2 manifests
    assert len(blobs) == 8
    m2 = machine("m2")
    latest, kept = m2.load(f"type=local,src={cache}"), m2.load(f"type=local,src={cache},tag=other")
    assert latest is not None and latest.records == expected(new)
    assert kept is not None and kept.records == expected(other)


def test_local_max_size_leaves_out_the_oldest_entries_with_a_warning(
    machine: Callable[[str], Machine], tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    m1 = machine("m1")
    entries = [CacheEntry(key(n), None, m1.layer(n, size=4000), created(n)) for n in (3, 1, 2)]
    m1.export(f"type=local,dest={cache},mode=max,max-size=10000", entries)

    assert m1.warnings == [
        f"local cache {cache}: left out the 1 oldest results to stay within max-size=10000 bytes"
    ]
    total = sum(p.stat().st_size for p in (cache / "blobs" / "sha256").iterdir())
    assert total <= 10000
    loaded = machine("m2").load(f"type=local,src={cache}")
    assert loaded is not None and set(loaded.records) == {key(2), key(3)}  # key(1) is oldest
    oldest = entries[1].layer
    assert oldest is not None and oldest.digest not in layout_blobs(cache)

    with pytest.raises(CacheError, match="cannot fit in max-size=100 bytes"):
        m1.export(f"type=local,dest={tmp_path / 'tiny'},mode=max,max-size=100", entries)


def test_local_corrupt_index_warns_on_load_and_stops_an_export(
    machine: Callable[[str], Machine], tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    m1 = machine("m1")
    entries = chain(m1)
    m1.export(f"type=local,dest={cache},mode=max", entries)
    (cache / "index.json").write_bytes(b'{"manifests": [')

    m2 = machine("m2")
    assert m2.load(f"type=local,src={cache}") is None
    assert len(m2.warnings) == 1
    assert m2.warnings[0].startswith(f"cannot read cache {cache}: ")
    assert "not JSON" in m2.warnings[0]
    # exporting over it would lose the other tags: refused, the directory untouched
    with pytest.raises(CacheError, match=r"index\.json is unreadable") as caught:
        m1.export(f"type=local,dest={cache},mode=max", entries)
    assert caught.value.hint and "remove the directory" in caught.value.hint
    assert (cache / "index.json").read_bytes() == b'{"manifests": ['


def test_local_corrupt_manifest_missing_tag_or_directory_warns(
    machine: Callable[[str], Machine], tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    m1 = machine("m1")
    m1.export(f"type=local,dest={cache},mode=max", chain(m1))
    m2 = machine("m2")
    assert m2.load(f"type=local,src={tmp_path / 'nowhere'}") is None
    assert m2.load(f"type=local,src={cache},tag=v9") is None
    digest = json.loads((cache / "index.json").read_text())["manifests"][0]["digest"]
    (cache / "blobs" / "sha256" / digest[7:]).write_bytes(b'{"schemaVersion": 2}')
    assert m2.load(f"type=local,src={cache}") is None
    assert m2.warnings[0] == f"no cache at {tmp_path / 'nowhere'}: building without it"
    assert m2.warnings[1] == f"cache {cache} (tag v9) not found: building without it"
    assert m2.warnings[2].startswith(f"cannot read cache {cache} (tag latest): ")
    assert "corrupt" in m2.warnings[2] and len(m2.warnings) == 3


# --------------------------------------------------------------------------- gha
def gha_spec(token: str, version: int, extra: str = "", *, export: bool = True) -> Any:
    """The parsed spec of ``--cache-to`` (or ``--cache-from``) ``type=gha,...``."""
    text = f"type=gha,url={GHA_URL},url_v2={GHA_URL},token={token},version={version}{extra}"
    if export:
        flag = parse_cache_to(text + ",mode=max", BACKENDS)
        assert isinstance(flag, CacheExport)
        return flag.spec
    imported = parse_cache_from(text, BACKENDS)
    assert isinstance(imported, CacheImport)
    return imported.spec


def gha_export(
    gha: FakeGha,
    m: Machine,
    token: str,
    version: int,
    entries: list[CacheEntry],
    mounts: Sequence[MountRecord] = (),
    **kw: Any,
) -> None:
    session = GhaSession(m.ctx, client_factory=gha.factory(**kw))
    try:
        session.export(gha_spec(token, version), entries, list(mounts))
    finally:
        session.close()


def gha_load(gha: FakeGha, m: Machine, token: str, version: int, **kw: Any) -> ImportedCache | None:
    session = GhaSession(m.ctx, client_factory=gha.factory(**kw))
    try:
        return gha_load_in(session, token, version)
    finally:
        session.close()


def gha_load_in(session: GhaSession, token: str, version: int) -> ImportedCache | None:
    return session.load(gha_spec(token, version, export=False))


def index_keys(gha: FakeGha, scope: str = MAIN) -> list[str]:
    return [k for k in gha.committed(scope) if k.startswith("index-")]


VERSIONS = [pytest.param(1, id="v1"), pytest.param(2, id="v2")]


@pytest.mark.parametrize("version", VERSIONS)
def test_gha_export_saves_blob_entries_and_one_index(
    machine: Callable[[str], Machine], version: int
) -> None:
    gha = FakeGha()
    m1 = machine("m1")
    entries = chain(m1)
    gha_export(gha, m1, gha_token(MAIN), version, entries)

    saved = gha.committed(MAIN)
    layers = [e.layer for e in entries if e.layer]
    prefix = index_prefix("kiln-app", MAIN)  # the build's scope: no scope= given
    assert set(saved) == {blob_key(x.digest) for x in layers} | {prefix + "#1"}
    for layer in layers:
        assert saved[blob_key(layer.digest)] == m1.store.read(layer.digest)
    index = json.loads(saved[prefix + "#1"])
    assert parse_config(index) == expected(entries)  # annotated: readable without a manifest
    assert_chain_structure(index, entries)
    assert [c.key for c in gha.ops("reserve")][-1] == prefix + "#1"  # the index last
    assert len(gha.ops("reserve")) == 5
    assert m1.stats.pushed("cache") == sum(x.blob.size for x in layers) + len(saved[prefix + "#1"])
    assert all(t.closed for t in gha.transports)


@pytest.mark.parametrize("version", VERSIONS)
def test_gha_second_export_of_unchanged_entries_saves_no_index(
    machine: Callable[[str], Machine], version: int
) -> None:
    gha = FakeGha()
    token = gha_token(MAIN)
    m1 = machine("m1")
    entries = chain(m1)
    gha_export(gha, m1, token, version, entries)

    # the next build imports the index, changes nothing and exports: not one request
    m2 = machine("m2")
    session = GhaSession(m2.ctx, client_factory=gha.factory())
    try:
        cache = gha_load_in(session, token, version)
        assert cache is not None and cache.records == expected(entries)
        before = len(gha.calls)
        session.export(gha_spec(token, version), entries, [])
        assert gha.calls[before:] == []
    finally:
        session.close()
    assert index_keys(gha) == [index_prefix("kiln-app", MAIN) + "#1"]

    # a build with one new step saves that step's blob and a new index, nothing else; the
    # layers it did not make were never on that machine (the service has them)
    m3 = machine("m3")
    l5 = m3.layer(5)
    changed = [*entries, CacheEntry(key(6), key(4), l5, created(6))]
    session = GhaSession(m3.ctx, client_factory=gha.factory())
    try:
        assert gha_load_in(session, token, version) is not None
        before = len(gha.calls)
        session.export(gha_spec(token, version), changed, [])
        reserved = [c.key for c in gha.calls[before:] if c.op == "reserve"]
    finally:
        session.close()
    prefix = index_prefix("kiln-app", MAIN)
    assert reserved == [blob_key(l5.digest), prefix + "#2"]
    assert index_keys(gha) == [prefix + "#1", prefix + "#2"]
    newest = gha_load(gha, machine("m4"), token, version)
    assert newest is not None and newest.records == expected(changed)


def test_gha_load_merges_readable_scopes_in_order(machine: Callable[[str], Machine]) -> None:
    gha = FakeGha()
    m1 = machine("m1")
    l1, l2, l3, l4 = (m1.layer(n) for n in (1, 2, 3, 4))
    on_main = [CacheEntry(key(1), None, l1, created(1)), CacheEntry(key(2), None, l2, created(2))]
    on_pr = [CacheEntry(key(1), None, l3, created(3)), CacheEntry(key(3), None, l4, created(4))]
    gha_export(gha, m1, gha_token(MAIN), 1, on_main)
    # the pull request writes to its own scope; dev is a scope its token may only write
    pr_token = gha_token(PR, (MAIN, READ), ("refs/heads/dev", WRITE))
    gha_export(gha, m1, pr_token, 1, on_pr)
    pr_prefix, main_prefix = index_prefix("kiln-app", PR), index_prefix("kiln-app", MAIN)
    assert gha.scope_of(pr_prefix + "#1") == PR and gha.scope_of(main_prefix + "#1") == MAIN

    m2 = machine("m2")
    before = len(gha.calls)
    merged = gha_load(gha, m2, pr_token, 1)
    assert merged is not None and m2.warnings == []
    # the pull request's own scope first: its record of step 1 wins over main's
    assert merged.records == {
        key(1): StepRecord(l3, created(3)),
        key(2): StepRecord(l2, created(2)),
        key(3): StepRecord(l4, created(4)),
    }
    lookups = [c.key for c in gha.calls[before:] if c.op == "lookup"]
    assert lookups == [pr_prefix + "#", main_prefix + "#"]  # dev is not readable: not asked
    main_only = gha_load(gha, machine("m3"), gha_token(MAIN), 1)
    assert main_only is not None and main_only.records == expected(on_main)

    # a hit's blob is fetched lazily from the service
    session = GhaSession(m2.ctx, client_factory=gha.factory())
    try:
        cache = gha_load_in(session, pr_token, 1)
        assert cache is not None
        hit = cache.lookup(key(1))
        assert hit is not None and hit.record.layer == l3
        m2.locator.fetch(l3.blob)
    finally:
        session.close()
    assert m2.store.read(l3.digest) == m1.store.read(l3.digest)


def test_gha_read_only_token_raises_on_export(machine: Callable[[str], Machine]) -> None:
    gha = FakeGha()
    m1 = machine("m1")
    entries = chain(m1)
    with pytest.raises(CacheError) as caught:
        gha_export(gha, m1, gha_token((MAIN, READ)), 1, entries)
    assert "cannot write to any cache scope" in str(caught.value)
    assert caught.value.hint and "read-only" in caught.value.hint
    assert gha.calls == [] and gha.entries == []  # refused before a single request


@pytest.mark.parametrize("version", VERSIONS)
def test_gha_throttling_with_retry_after_is_retried(
    machine: Callable[[str], Machine], version: int
) -> None:
    gha = FakeGha()
    token = gha_token(MAIN)
    m1 = machine("m1")
    entries = chain(m1)
    gha_export(gha, m1, token, version, entries)

    started = time.monotonic()
    vt = VirtualTime()
    gha.throttle(2, retry_after="3")
    m2 = machine("m2")
    cache = gha_load(gha, m2, token, version, time=vt)
    assert cache is not None and cache.records == expected(entries) and m2.warnings == []
    assert len(gha.ops("lookup", 429)) == 2
    assert len(vt.sleeps) == 2 and all(s >= 3 for s in vt.sleeps)  # Retry-After honoured

    # a throttled save is retried, not lost nor saved twice
    gha.throttle(1, retry_after="1", op="reserve")
    changed = [*entries, CacheEntry(key(6), key(4), m1.layer(6), created(6))]
    gha_export(gha, m1, token, version, changed, time=vt)
    assert len(gha.ops("reserve", 429)) == 1
    assert index_keys(gha) == [index_prefix("kiln-app", MAIN) + f"#{n}" for n in (1, 2)]
    assert time.monotonic() - started < 2  # no real waiting


def test_gha_close_closes_every_client(machine: Callable[[str], Machine]) -> None:
    gha = FakeGha()
    token = gha_token(MAIN)
    m1 = machine("m1")
    entries = chain(m1)
    session = GhaSession(m1.ctx, client_factory=gha.factory())
    # one client per connection for the whole build: imports, fetches and the export
    assert gha_load_in(session, token, 1) is None
    session.export(gha_spec(token, 1), entries, [])
    session.export(gha_spec(token, 1, ",scope=docs"), entries, [])
    assert gha_load_in(session, token, 1) is not None
    assert len(gha.transports) == 2 and not any(t.closed for t in gha.transports)
    session.close()
    assert all(t.closed for t in gha.transports)
    session.close()  # twice is harmless
    # the docs scope got its own index
    assert index_keys(gha) == [
        index_prefix("kiln-app", MAIN) + "#1",
        index_prefix("docs", MAIN) + "#1",
    ]


def test_gha_empty_or_broken_cache_warns_and_returns_none(
    machine: Callable[[str], Machine],
) -> None:
    gha = FakeGha()
    token = gha_token(MAIN)
    m1 = machine("m1")
    assert gha_load(gha, m1, token, 1) is None
    assert m1.warnings == ["gha cache scope 'kiln-app' is empty: building without it"]

    with gha.client(token) as client:  # an index that is not a cache config
        client.save_mutable(index_prefix("kiln-app", MAIN), b"{definitely not json")
    m2 = machine("m2")
    assert gha_load(gha, m2, token, 1) is None
    assert len(m2.warnings) == 1 and m2.warnings[0].startswith("cannot import gha cache: ")
