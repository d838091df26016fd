"""What a cache holds and hands out: step records, and hits with their source.

A :class:`StepRecord` is a step's result (the layer it made, or none, and when it was
created); a :class:`CacheHit` is a record found under a key, with where it came from. The
solver looks keys up through :class:`CacheLookup` (the local store, imported caches).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from kiln.oci import Descriptor, Layer, is_digest

CacheSource = Literal["local", "remote"]


@dataclass(frozen=True, slots=True)
class StepRecord:
    layer: Layer | None
    created: str
    # for a step that reads other stages: the digest of what it read (see
    # kiln.solver.keys), so its content key is known without building those stages
    inputs: str | None = None

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"created": self.created}
        if self.layer is not None:
            out["layer"] = {**self.layer.blob.to_json(), "diffID": self.layer.diff_id}
        if self.inputs is not None:
            out["inputs"] = self.inputs
        return out

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
        return cls(layer, created, inputs)


@dataclass(frozen=True, slots=True)
class CacheHit:
    record: StepRecord
    source: CacheSource


class CacheLookup(Protocol):
    """A source of step results by cache key (the local store, imported remote caches)."""

    def lookup(self, key: str) -> CacheHit | None: ...


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """One step to export: its key, the key before it, and what it produced."""

    key: str
    parent: str | None
    layer: Layer | None
    created: str
    inputs: str | None = None  # see StepRecord.inputs
