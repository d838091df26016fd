"""BuildKit's cacheconfig v0 as kiln writes and reads it."""

from __future__ import annotations

import base64
import json

import pytest

from kiln.cache.remote.format import (
    CacheEntry,
    CacheFormatError,
    build_config,
    build_inline,
    parse_config,
    parse_inline,
    parse_json,
)
from kiln.cache.remote.manifest import build_manifest, read_records
from kiln.oci import Descriptor, Layer

GZ = "application/vnd.oci.image.layer.v1.tar+gzip"


def key(n: int) -> str:
    return f"sha256:{n:064x}"


def layer(n: int) -> Layer:
    return Layer(Descriptor(GZ, f"sha256:{n + 100:064x}", 10 + n), f"sha256:{n + 200:064x}")


def chain() -> list[CacheEntry]:
    # step 1 makes a layer, step 2 changes nothing, step 3 makes a layer
    return [
        CacheEntry(key(1), key(0), layer(1), "2026-01-01T00:00:01Z"),
        CacheEntry(key(2), key(1), None, "2026-01-01T00:00:02Z"),
        CacheEntry(key(3), key(2), layer(3), "2026-01-01T00:00:03Z"),
    ]


def test_structure_and_round_trip():
    config, layers = build_config(chain(), annotate=True)
    assert [x.digest for x in layers] == [layer(1).digest, layer(3).digest]
    # the first layer has no parent (-1); the second's parent is index 0, omitted as BuildKit does
    assert config["layers"][0]["parent"] == -1
    assert "parent" not in config["layers"][1]
    records = {r["digest"]: r for r in config["records"]}
    assert "inputs" not in records[key(1)]  # its parent is not in the export
    assert records[key(2)]["inputs"] == [[{"link": 0}]]
    assert "layers" not in records[key(2)]  # changed nothing
    parsed = parse_config(json.loads(json.dumps(config)))
    assert parsed[key(1)].layer == layer(1)
    assert parsed[key(2)].layer is None
    assert parsed[key(3)].layer == layer(3)
    assert parsed[key(3)].created == "2026-01-01T00:00:03Z"


def test_config_is_deterministic():
    a, _ = build_config(chain(), annotate=False)
    b, _ = build_config(list(reversed(chain())), annotate=False)
    assert a == b


def test_manifest_round_trip_in_both_forms():
    for image_manifest in (True, False):
        cache = build_manifest(chain(), image_manifest=image_manifest)
        raw = json.loads(cache.manifest)
        blobs = {cache.config_desc.digest: cache.config}
        contents = read_records(raw, cache.media_type, lambda d, b=blobs: b[d.digest], "test")
        records = contents.records
        # BuildKit's format keeps a creation time per result: none for a step without layer
        assert {k: (r.layer, r.created) for k, r in records.items()} == {
            e.key: (e.layer, e.created if e.layer else "") for e in chain()
        }


def test_inline_points_into_the_image_layers():
    base = Layer(Descriptor(GZ, "sha256:" + "e" * 64, 5), "sha256:" + "f" * 64)
    image_layers = [base, layer(1), layer(3)]
    value = build_inline(chain(), image_layers)
    raw = json.loads(base64.b64decode(value))
    assert "layers" not in raw
    assert {r["layers"][0]["layer"] for r in raw["records"] if "layers" in r} == {1, 2}
    parsed = parse_inline(value, image_layers)
    assert parsed[key(1)].layer == layer(1) and parsed[key(2)].layer is None


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ({"layers": "nope", "records": []}, "layers and records must be lists"),
        ({"layers": [{"blob": "not-a-digest"}], "records": []}, "has no valid blob digest"),
    ],
)
def test_malformed_configs_are_rejected(raw, needle):
    with pytest.raises(CacheFormatError, match=needle):
        parse_config(raw)


def test_unusable_records_are_skipped_not_trusted():
    raw = {
        "layers": [{"blob": layer(1).digest, "parent": -1}],  # no annotations: unknown layer
        "records": [
            {"digest": key(1), "layers": [{"layer": 0}]},
            {"digest": key(2), "layers": [{"layer": 7}]},  # out of range
            {"digest": "bogus", "layers": []},
        ],
    }
    assert parse_config(raw) == {}
    with pytest.raises(CacheFormatError, match="x is not a JSON object"):
        parse_json(b"[1, 2]", "x")


def test_a_cache_layer_of_an_unknown_media_type_makes_the_cache_unreadable():
    for image_manifest in (True, False):
        cache = build_manifest(chain(), image_manifest=image_manifest)
        raw = json.loads(cache.manifest)
        key = "layers" if image_manifest else "manifests"
        victim = next(d for d in raw[key] if d["mediaType"].endswith("tar+gzip"))
        victim["mediaType"] = "text/plain"
        blobs = {cache.config_desc.digest: cache.config}
        with pytest.raises(CacheFormatError, match="unknown media type 'text/plain'"):
            read_records(raw, cache.media_type, lambda d, b=blobs: b[d.digest], "test")
