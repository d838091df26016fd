"""What a cache holds and hands out: step records, hits with their source, cache mounts.

A :class:`StepRecord` is a step's result (the layer it made, or none, and when it was
created); a :class:`CacheHit` is a record found under a key, with where it came from. The
solver looks keys up through :class:`CacheLookup` (the local store, imported caches).
A :class:`MountRecord` is the exported content of one ``RUN --mount=type=cache``
directory (:class:`MountIdentity`) as a chain of layer blobs, base first.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Literal, Protocol

from kiln.cache.description import KeyDescription
from kiln.oci import Descriptor, Layer, is_digest

CacheSource = Literal["local", "remote"]


@dataclass(frozen=True, slots=True)
class StepRecord:
    layer: Layer | None
    created: str
    # for a step that reads other stages: the digest of what it read (see
    # kiln.solver.keys), so its content key is known without building those stages
    inputs: str | None = None
    # what the step's key was made of (for explaining a later miss); not part of a hit
    about: KeyDescription | None = field(default=None, compare=False)

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"created": self.created}
        if self.layer is not None:
            out["layer"] = {**self.layer.blob.to_json(), "diffID": self.layer.diff_id}
        if self.inputs is not None:
            out["inputs"] = self.inputs
        if self.about is not None:
            out["about"] = self.about.to_json()
        return out

    def described(self, about: KeyDescription | None) -> StepRecord:
        return StepRecord(self.layer, self.created, self.inputs, about)

    @classmethod
    def from_json(cls, raw: dict[str, object]) -> StepRecord:
        created = raw["created"]
        if not isinstance(created, str):
            raise ValueError("created is not a string")
        layer_raw = raw.get("layer")
        layer = None
        if layer_raw is not None:
            if not isinstance(layer_raw, dict):
                raise ValueError("layer is not an object")
            desc = Descriptor.from_json(layer_raw)
            diff_id = str(layer_raw["diffID"])
            if not is_digest(desc.digest) or not is_digest(diff_id):
                raise ValueError("bad digest")
            layer = Layer(desc, diff_id)
        inputs = raw.get("inputs")
        if inputs is not None and not (isinstance(inputs, str) and is_digest(inputs)):
            raise ValueError("inputs is not a digest")
        return cls(layer, created, inputs, read_about(raw.get("about")))


def read_about(raw: object) -> KeyDescription | None:
    """A record's description, None when absent or malformed (it only explains)."""
    if raw is None:
        return None
    try:
        return KeyDescription.from_json(raw)
    except (KeyError, TypeError, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class CacheHit:
    record: StepRecord
    source: CacheSource
    origin: str = ""  # the imported cache it came from ("" for the local store)


class CacheLookup(Protocol):
    """A source of step results by cache key (the local store, imported remote caches)."""

    def lookup(self, key: str) -> CacheHit | None: ...


@dataclass(frozen=True, slots=True)
class SourceStatus:
    """How one ``--cache-from`` fared: loaded, or why not (what its import warned)."""

    name: str  # the flag's value, credentials redacted
    loaded: bool
    note: str = ""
    described: bool = True  # its records carry key descriptions (not inline, not BuildKit's)


class DescribedSource(Protocol):
    """Where a missed step finds the closest cached steps to compare itself with."""

    @property
    def name(self) -> str: ...

    def candidates(self, slot: str, parent: str) -> list[StepRecord]:
        """Records of steps at *slot* (see KeyDescription.slot) or started from
        *parent*, with their descriptions."""
        ...

    def tree(self, digest: str) -> str | None:
        """The encoded tree of context files *digest* (kiln.source.tree), if held."""
        ...


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """One step to export: its key, the key before it, and what it produced."""

    key: str
    parent: str | None
    layer: Layer | None
    created: str
    inputs: str | None = None  # see StepRecord.inputs
    about: KeyDescription | None = None  # see StepRecord.about
    tree: str | None = None  # the encoded tree about.tree names, when it names one


@dataclass(frozen=True, slots=True)
class MountIdentity:
    """What makes two cache mounts the same directory: the ``id`` (default: the target),
    owner and mode of its root, and the platform it is built for (an arm64 Go build cache
    is never an amd64 one). Its content is never part of any step key."""

    id: str
    uid: int = 0
    gid: int = 0
    mode: int = 0o755
    platform: str = ""

    @property
    def name(self) -> str:
        """A file name for the identity (a digest: ids are arbitrary text)."""
        text = json.dumps([self.id, self.uid, self.gid, self.mode, self.platform])
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def describe(self) -> str:
        extra = [f"uid={self.uid}"] if self.uid else []
        extra += [f"gid={self.gid}"] if self.gid else []
        extra += [f"mode={self.mode:o}"] if self.mode != 0o755 else []
        return " ".join([self.id, *extra])


@dataclass(frozen=True, slots=True)
class MountLayer:
    """One blob of a mount's chain and the bytes of file content it holds (to decide when
    the chain is worth compacting)."""

    layer: Layer
    content: int


@dataclass(frozen=True, slots=True)
class MountRecord:
    """A cache mount's content as exported: apply ``layers`` in order onto an empty
    directory owned and moded as the identity says."""

    identity: MountIdentity
    layers: tuple[MountLayer, ...]
    size: int  # bytes of file content in the directory when it was exported
    updated: str  # RFC 3339

    @property
    def blob_bytes(self) -> int:
        return sum(m.layer.blob.size for m in self.layers)


class MountSource(Protocol):
    """Imported cache mounts by identity name: the record and where it comes from; the
    record's blobs become fetchable through the build's blob locator."""

    def mount(self, name: str) -> tuple[MountRecord, str] | None: ...
