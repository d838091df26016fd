"""OCI model shared by every stage: media types, descriptors, digests, platforms."""

from __future__ import annotations

import hashlib
import json
import platform as _platform
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# Media types
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_FOREIGN = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

# every layer media type an image may use (OCI's deprecated non-distributable ones too)
LAYER_TYPES = frozenset({
    OCI_LAYER_TAR, OCI_LAYER_GZIP, OCI_LAYER_ZSTD, DOCKER_LAYER_GZIP, DOCKER_LAYER_TAR,
    DOCKER_LAYER_FOREIGN,
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
})  # fmt: skip
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})

_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def is_digest(value: str) -> bool:
    return bool(_DIGEST_RE.match(value))


def digest_hex(digest: str) -> str:
    """The hex part of a ``sha256:<hex>`` digest (validated: it becomes a file name)."""
    if not is_digest(digest):
        raise ValueError(f"not a sha256 digest: {digest!r}")
    return digest.split(":", 1)[1]


def canonical_json(value: Any) -> bytes:
    """Stable JSON encoding: sorted keys, no whitespace (digests depend on it)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def layer_media_type(compression: str, *, oci: bool = True) -> str:
    if compression == "gzip":
        return OCI_LAYER_GZIP if oci else DOCKER_LAYER_GZIP
    if compression == "zstd":
        return OCI_LAYER_ZSTD
    if compression == "uncompressed":
        return OCI_LAYER_TAR if oci else DOCKER_LAYER_TAR
    raise ValueError(f"unknown compression {compression!r}")


def compression_of(media_type: str) -> str:
    if media_type.endswith("+zstd") or media_type.endswith(".zstd"):
        return "zstd"
    if media_type.endswith("gzip"):
        return "gzip"
    return "uncompressed"


@dataclass(frozen=True, slots=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: Mapping[str, str] = field(default_factory=dict)
    platform: Mapping[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.platform:
            out["platform"] = dict(self.platform)
        return out

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Descriptor:
        return cls(
            media_type=str(raw.get("mediaType", "")),
            digest=str(raw["digest"]),
            size=int(raw["size"]),
            annotations=dict(raw.get("annotations") or {}),
            platform=dict(raw["platform"]) if raw.get("platform") else None,
        )


@dataclass(frozen=True, slots=True)
class Layer:
    """One filesystem layer: its compressed blob and its uncompressed digest (diff ID)."""

    blob: Descriptor
    diff_id: str

    @property
    def digest(self) -> str:
        return self.blob.digest


@dataclass(frozen=True, slots=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        base = f"{self.os}/{self.architecture}"
        return f"{base}/{self.variant}" if self.variant else base

    @classmethod
    def parse(cls, text: str) -> Platform:
        parts = text.strip().split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise ValueError(f"invalid platform {text!r}: expected os/arch[/variant]")
        return cls(parts[0], _normalise_arch(parts[1]), parts[2] if len(parts) == 3 else "")

    def matches(self, raw: Mapping[str, Any] | None) -> bool:
        if not raw:
            return False
        if raw.get("os") != self.os or _normalise_arch(str(raw.get("architecture"))) != (
            self.architecture
        ):
            return False
        return not self.variant or raw.get("variant", self.variant) == self.variant


def _normalise_arch(arch: str) -> str:
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm"}.get(arch, arch)


# architectures kiln can build for (natively or under QEMU user emulation)
KNOWN_ARCHITECTURES = ("amd64", "arm64", "arm", "386", "ppc64le", "s390x", "riscv64",
                       "mips64le", "loong64")  # fmt: skip


def parse_platforms(values: Sequence[str]) -> list[Platform]:
    """``--platform`` values (each a comma-separated list) as distinct Linux platforms;
    raises ValueError naming a bad one."""
    out: list[Platform] = []
    for value in values:
        for text in (t.strip() for t in value.split(",")):
            if not text:
                continue
            platform = Platform.parse(text)
            if platform.os != "linux":
                raise ValueError(f"{text}: kiln builds Linux images only")
            if platform.architecture not in KNOWN_ARCHITECTURES:
                raise ValueError(f"{text}: unknown architecture {platform.architecture!r} "
                                 f"(known: {', '.join(KNOWN_ARCHITECTURES)})")  # fmt: skip
            if platform not in out:
                out.append(platform)
    return out


def host_platform() -> Platform:
    arch = _normalise_arch(_platform.machine())
    return Platform("linux", arch, "v8" if arch == "arm64" else "")
