from __future__ import annotations

import json

import pytest

from kiln.errors import NotFoundError, RegistryError
from kiln.oci import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
    Platform,
    sha256_digest,
)
from kiln.registry.manifest import Manifest, detect_media_type, image_parts, select_platform
from kiln.registry.reference import Reference

REF = Reference.parse("example.com/app:1")


def _digest(n: int) -> str:
    return sha256_digest(str(n).encode())


def _index(*platforms: dict[str, str], annotations: list[dict[str, str]] | None = None) -> Manifest:
    entries = []
    for i, plat in enumerate(platforms):
        entry: dict[str, object] = {
            "mediaType": OCI_MANIFEST,
            "digest": _digest(i),
            "size": 100 + i,
            "platform": plat,
        }
        if annotations and annotations[i]:
            entry["annotations"] = annotations[i]
        entries.append(entry)
    raw = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}).encode()
    return Manifest(raw, OCI_INDEX, sha256_digest(raw))


def test_select_platform_picks_the_matching_entry() -> None:
    index = _index(
        {"os": "linux", "architecture": "arm64", "variant": "v8"},
        {"os": "linux", "architecture": "amd64"},
        {"os": "linux", "architecture": "arm", "variant": "v7"},
    )
    assert select_platform(index, Platform("linux", "amd64"), REF).digest == _digest(1)
    assert select_platform(index, Platform("linux", "arm64", "v8"), REF).digest == _digest(0)
    assert select_platform(index, Platform.parse("linux/arm/v7"), REF).digest == _digest(2)
    # as containerd: --platform linux/arm64 (or aarch64) is arm64/v8
    for wanted in ("linux/arm64", "linux/aarch64", "linux/arm64/v8"):
        assert select_platform(index, Platform.parse(wanted), REF).digest == _digest(0)


def test_select_platform_prefers_exact_variant_and_skips_attestations() -> None:
    index = _index(
        {"os": "unknown", "architecture": "unknown"},
        {"os": "linux", "architecture": "arm64"},
        {"os": "linux", "architecture": "arm64", "variant": "v8"},
        annotations=[{"vnd.docker.reference.type": "attestation-manifest"}, {}, {}],
    )
    assert select_platform(index, Platform("linux", "arm64", "v8"), REF).digest == _digest(2)


def test_select_platform_lists_what_exists() -> None:
    index = _index(
        {"os": "linux", "architecture": "arm64", "variant": "v8"},
        {"os": "linux", "architecture": "s390x"},
    )
    with pytest.raises(NotFoundError) as info:
        select_platform(index, Platform("linux", "amd64"), REF)
    text = str(info.value)
    assert "linux/amd64" in text and str(REF) in text
    assert "linux/arm64/v8" in text and "linux/s390x" in text


@pytest.mark.parametrize(
    ("content_type", "doc", "expected"),
    [
        (OCI_MANIFEST + "; charset=utf-8", {}, OCI_MANIFEST),
        (DOCKER_MANIFEST_LIST, {}, DOCKER_MANIFEST_LIST),
        ("application/json", {"mediaType": DOCKER_MANIFEST}, DOCKER_MANIFEST),
        (None, {"schemaVersion": 2, "manifests": []}, OCI_INDEX),
        ("text/plain", {"schemaVersion": 2, "config": {}, "layers": []}, OCI_MANIFEST),
        (
            "application/json",
            {"schemaVersion": 1},
            "application/vnd.docker.distribution.manifest.v1+json",
        ),
    ],
)
def test_detect_media_type(content_type: str | None, doc: object, expected: str) -> None:
    assert detect_media_type(content_type, json.dumps(doc).encode()) == expected


def test_image_parts() -> None:
    cfg = {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": _digest(9),
           "size": 3}  # fmt: skip
    layer = {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": _digest(8),
             "size": 5, "annotations": {"a": "b"}}  # fmt: skip
    raw = json.dumps({"schemaVersion": 2, "config": cfg, "layers": [layer]}).encode()
    config, layers = image_parts(Manifest(raw, OCI_MANIFEST, sha256_digest(raw)), REF)
    assert config.digest == _digest(9) and config.size == 3
    assert [(lay.digest, lay.size, dict(lay.annotations)) for lay in layers] == [
        (_digest(8), 5, {"a": "b"})
    ]
    with pytest.raises(RegistryError, match="unsupported manifest type"):
        image_parts(Manifest(b"{}", "application/vnd.docker.distribution.manifest.v1+json",
                             sha256_digest(b"{}")), REF)  # fmt: skip
    with pytest.raises(RegistryError, match="malformed"):
        image_parts(Manifest(b"{}", OCI_MANIFEST, sha256_digest(b"{}")), REF)


def test_a_layer_of_an_unknown_media_type_is_refused() -> None:
    cfg = {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": _digest(9),
           "size": 3}  # fmt: skip
    layer = {"mediaType": "text/plain", "digest": _digest(8), "size": 5}
    raw = json.dumps({"schemaVersion": 2, "config": cfg, "layers": [layer]}).encode()
    with pytest.raises(RegistryError, match="unknown media type 'text/plain'") as info:
        image_parts(Manifest(raw, OCI_MANIFEST, sha256_digest(raw)), REF)
    assert info.value.why == f"layer {_digest(8)}" and info.value.hint
