"""``kiln.mounts`` in the cache config: written by build_config (its blobs among the
layers a backend stores, once each), read leniently by parse_mounts."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from kiln.cache.records import CacheEntry, MountIdentity, MountLayer, MountRecord
from kiln.cache.remote.format import MOUNTS_KEY, build_config, parse_json, parse_mounts
from kiln.cache.remote.manifest import build_manifest, read_records
from kiln.errors import CacheError
from kiln.oci import OCI_LAYER_GZIP, OCI_LAYER_ZSTD, Descriptor, Layer, sha256_digest


def layer(name: str, media_type: str = OCI_LAYER_ZSTD, size: int = 100) -> Layer:
    return Layer(Descriptor(media_type, sha256_digest(f"blob {name}".encode()), size),
                 sha256_digest(f"tar {name}".encode()))  # fmt: skip


def record(mount_id: str, *blobs: str, platform: str = "linux/amd64", uid: int = 0,
           mode: int = 0o755) -> MountRecord:  # fmt: skip
    layers = tuple(
        MountLayer(layer(b, size=10 * (n + 1)), 7 * (n + 1)) for n, b in enumerate(blobs)
    )
    return MountRecord(MountIdentity(mount_id, uid, uid, mode, platform), layers,
                       sum(m.content for m in layers), "2026-03-01T12:00:00Z")  # fmt: skip


STEP = CacheEntry(
    sha256_digest(b"step"), None, layer("step", OCI_LAYER_GZIP), "2026-01-01T00:00:00Z"
)


def round_trip(config: dict[str, Any]) -> dict[str, Any]:
    return parse_json(json.dumps(config).encode(), "config")


@pytest.mark.parametrize("annotate", [False, True])
def test_mounts_written_then_read_are_the_same_records(annotate: bool) -> None:
    mounts = [
        record("/root/.cache/go-build", "go-base", "go-delta"),
        record("pip", "pip-base", uid=1000, mode=0o2770),
        record("pip", "pip-arm", platform="linux/arm64"),  # another identity: kept apart
    ]
    config, _ = build_config([STEP], annotate=annotate, mounts=mounts)
    assert parse_mounts(round_trip(config)) == mounts


def test_no_mounts_leave_the_config_as_buildkit_writes_it() -> None:
    config, layers = build_config([STEP], annotate=False)
    assert MOUNTS_KEY not in config
    assert layers == [STEP.layer]
    assert parse_mounts(round_trip(config)) == []


def test_mount_blobs_follow_the_step_layers_once_each() -> None:
    shared = record("a", "step", "a-delta")  # its base happens to be the step's blob
    twice = record("b", "a-delta", "b-top")  # a blob of two mounts
    config, layers = build_config([STEP], annotate=False, mounts=[shared, twice])
    assert [x.digest for x in layers] == [
        STEP.layer.digest,
        layer("a-delta").digest,
        layer("b-top").digest,
    ]
    assert len(config["layers"]) == 1  # the step's layer entries hold step layers only
    assert [len(m["layers"]) for m in config[MOUNTS_KEY]] == [2, 2]


def test_the_first_mount_of_one_identity_wins() -> None:
    first, second = record("pip", "one"), record("pip", "two")
    config, _ = build_config([], annotate=False, mounts=[first, second])
    assert parse_mounts(round_trip(config)) == [first]


GOOD = build_config([], annotate=False, mounts=[record("good", "g1", "g2")])[0][MOUNTS_KEY][0]


def spoiled(edit: Any) -> dict[str, Any]:
    item = copy.deepcopy(GOOD)
    item["id"] = "spoiled"
    edit(item)
    return item


def _set(path: tuple[Any, ...], value: Any) -> Any:
    def edit(item: Any) -> None:
        for part in path[:-1]:
            item = item[part]
        item[path[-1]] = value

    return edit


def _drop(path: tuple[Any, ...]) -> Any:
    def edit(item: Any) -> None:
        for part in path[:-1]:
            item = item[part]
        del item[path[-1]]

    return edit


BAD_ENTRIES = {
    "bad-blob-digest": spoiled(_set(("layers", 1, "blob"), "sha256:xyz")),
    "bad-diff-id": spoiled(_set(("layers", 0, "diffID"), "md5:" + "0" * 32)),
    "negative-size": spoiled(_set(("layers", 0, "size"), -1)),
    "size-a-string": spoiled(_set(("layers", 0, "size"), "100")),
    "negative-content": spoiled(_set(("layers", 0, "content"), -5)),
    "unknown-media-type": spoiled(_set(("layers", 0, "mediaType"), "text/plain")),
    "no-media-type": spoiled(_drop(("layers", 0, "mediaType"))),
    "no-blob": spoiled(_drop(("layers", 1, "blob"))),
    "no-id": spoiled(_drop(("id",))),
    "empty-id": spoiled(_set(("id",), "")),
    "no-platform": spoiled(_drop(("platform",))),
    "negative-uid": spoiled(_set(("uid",), -1)),
    "uid-true": spoiled(_set(("uid",), True)),
    "mode-too-big": spoiled(_set(("mode",), 0o17777)),
    "no-layers": spoiled(_set(("layers",), [])),
    "layers-not-a-list": spoiled(_set(("layers",), {"blob": "x"})),
    "layer-not-an-object": spoiled(_set(("layers", 0), "sha256:" + "1" * 64)),
    "negative-mount-size": spoiled(_set(("size",), -100)),
    "not-an-object": ["id", "pip"],
    "null": None,
}


@pytest.mark.parametrize("bad", list(BAD_ENTRIES.values()), ids=list(BAD_ENTRIES))
def test_a_malformed_mount_entry_is_skipped_and_the_others_kept(bad: Any) -> None:
    config = {"layers": [], "records": [], MOUNTS_KEY: [bad, GOOD, bad]}
    (parsed,) = parse_mounts(round_trip(config))
    assert parsed == record("good", "g1", "g2")


@pytest.mark.parametrize("value", [{"id": "x"}, "mounts", 3, None, True])
def test_mounts_that_are_not_a_list_are_no_mounts(value: Any) -> None:
    assert parse_mounts({"layers": [], "records": [], MOUNTS_KEY: value}) == []


@pytest.mark.parametrize("image_manifest", [True, False])
def test_a_cache_manifest_carries_the_mounts_and_their_blobs(image_manifest: bool) -> None:
    mount = record("/var/cache/apt", "apt-1", "apt-2")
    cache = build_manifest([STEP], image_manifest=image_manifest, mounts=[mount])
    assert [x.digest for x in cache.layers] == [
        STEP.layer.digest,
        *(m.layer.digest for m in mount.layers),
    ]
    assert (
        cache.layers[1].blob.annotations["containerd.io/uncompressed"]
        == mount.layers[0].layer.diff_id
    )
    blobs = {cache.config_desc.digest: cache.config}
    contents = read_records(json.loads(cache.manifest), cache.media_type,
                            lambda d: blobs[d.digest], "test")  # fmt: skip
    assert contents.mounts == [mount]
    assert set(contents.records) == {STEP.key}


def test_zstd_mount_blobs_cannot_go_into_docker_media_types() -> None:
    with pytest.raises(CacheError, match="zstd"):
        build_manifest([STEP], image_manifest=False, oci=False, mounts=[record("a", "z")])
