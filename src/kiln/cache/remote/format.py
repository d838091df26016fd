"""BuildKit's cache config (``application/vnd.buildkit.cacheconfig.v0``), written and read.

Every backend stores the same structure; they differ only in where blobs and the config
live. kiln maps one exported step to one record: ``digest`` is the step's cache key,
``inputs`` links to the record of the step before it, ``layers`` names the layer the step
produced — as the top of a chain whose ``parent`` links follow the steps — or is empty
when the step changed nothing. kiln's keys are its own (opaque digests), so a BuildKit
cache is never mistaken for a kiln one; the structure is BuildKit's so that registries,
tools and people who know BuildKit caches recognise kiln's.

Each record also carries its key's description in kiln's own ``kiln.about``, and the
config the trees of context files they name in ``kiln.trees`` (see
:mod:`kiln.cache.description`): names and fingerprints, never a build-arg value.

Cache mounts travel in kiln's own top-level field ``kiln.mounts`` (BuildKit ignores it):
per mount its identity, size, time and chain of self-describing layer entries (blob,
media type, diff ID, size, content bytes). Their blobs are among the layers a backend
stores, so registries and layout directories keep them referenced.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kiln.cache.records import (
    CacheEntry,
    MountIdentity,
    MountLayer,
    MountRecord,
    StepRecord,
    read_about,
)
from kiln.oci import LAYER_TYPES, Descriptor, Layer, is_digest

CACHE_CONFIG_MEDIA_TYPE = "application/vnd.buildkit.cacheconfig.v0"
INLINE_CONFIG_KEY = "moby.buildkit.cache.v0"
ANNOTATION_DIFF_ID = "containerd.io/uncompressed"
ANNOTATION_CREATED = "buildkit/createdat"
MAX_CONFIG_SIZE = 16 << 20
# a record's digest of what its step read from other stages (kiln.cache.records.StepRecord)
INPUTS_KEY = "kiln.inputs"
# kiln's exported cache mounts (see the module docstring)
MOUNTS_KEY = "kiln.mounts"
# a record's key description (kiln.cache.description) and the trees of context files
# they name, by digest (kiln.source.tree): what explains a later build's miss
ABOUT_KEY = "kiln.about"
TREES_KEY = "kiln.trees"


class CacheFormatError(ValueError):
    """The cache config is not something kiln can read."""


# what malformed JSON structures raise when read as if they were well formed
MALFORMED = (KeyError, TypeError, ValueError, AttributeError, OverflowError)


def _sorted(entries: Iterable[CacheEntry]) -> list[CacheEntry]:
    unique = {e.key: e for e in entries}
    return [unique[k] for k in sorted(unique)]


@dataclass(frozen=True, slots=True)
class CacheContents:
    """What one imported cache holds: step records by key, cache mounts and the trees of
    context files its records' descriptions name."""

    records: dict[str, StepRecord]
    mounts: list[MountRecord] = field(default_factory=list)
    trees: dict[str, str] = field(default_factory=dict)


def build_config(
    entries: Iterable[CacheEntry], *, annotate: bool, mounts: Sequence[MountRecord] = ()
) -> tuple[dict[str, Any], list[Layer]]:
    """The cache config and the distinct layers it references: the steps' in ``layers``
    order, then the cache mounts' blobs.

    With *annotate* (backends without an OCI manifest, like gha) each layer entry carries
    its media type, diff ID, size and creation time.
    """
    ordered = _sorted(entries)
    by_key = {e.key: e for e in ordered}
    layer_index: dict[tuple[str, int], int] = {}
    layers_json: list[dict[str, Any]] = []
    layers: list[Layer] = []

    def index_of(entry: CacheEntry, seen: frozenset[str] = frozenset()) -> int:
        """Index of *entry*'s layer, its parent being the nearest earlier step layer."""
        assert entry.layer is not None
        parent_index = -1
        parent = by_key.get(entry.parent) if entry.parent else None
        while parent is not None and parent.layer is None and parent.key not in seen:
            seen = seen | {parent.key}
            parent = by_key.get(parent.parent) if parent.parent else None
        if parent is not None and parent.layer is not None and parent.key not in seen:
            parent_index = index_of(parent, seen | {entry.key})
        slot = (entry.layer.digest, parent_index)
        if slot not in layer_index:
            item: dict[str, Any] = {"blob": entry.layer.digest}
            if parent_index != 0:  # BuildKit omits a zero parent
                item["parent"] = parent_index
            if annotate:
                item["annotations"] = {
                    "mediaType": entry.layer.blob.media_type,
                    "diffID": entry.layer.diff_id,
                    "size": entry.layer.blob.size,
                }
                if entry.created:  # Go cannot parse an empty time: leave it out
                    item["annotations"]["createdAt"] = entry.created
            layer_index[slot] = len(layers_json)
            layers_json.append(item)
            if entry.layer.digest not in {x.digest for x in layers}:
                layers.append(entry.layer)
        return layer_index[slot]

    records = _records_json(ordered, index_of, describe=True)
    config: dict[str, Any] = {"layers": layers_json, "records": records}
    trees = {e.about.tree: e.tree for e in ordered if e.about and e.about.tree and e.tree}
    if trees:
        config[TREES_KEY] = dict(sorted(trees.items()))
    if mounts:
        config[MOUNTS_KEY] = [_mount_json(m) for m in mounts]
        known = {x.digest for x in layers}
        for item in (m.layer for record in mounts for m in record.layers):
            if item.digest not in known:
                known.add(item.digest)
                layers.append(item)
    return config, layers


def _mount_json(record: MountRecord) -> dict[str, Any]:
    ident = record.identity
    return {
        "id": ident.id,
        "uid": ident.uid,
        "gid": ident.gid,
        "mode": ident.mode,
        "platform": ident.platform,
        "size": record.size,
        "updated": record.updated,
        "layers": [
            {
                "blob": m.layer.digest,
                "mediaType": m.layer.blob.media_type,
                "diffID": m.layer.diff_id,
                "size": m.layer.blob.size,
                "content": m.content,
            }
            for m in record.layers
        ],
    }


def parse_trees(raw: Mapping[str, Any]) -> dict[str, str]:
    """The encoded trees of a cache config by digest (malformed ones left out)."""
    items = raw.get(TREES_KEY)
    if not isinstance(items, dict):
        return {}
    return {k: v for k, v in items.items() if is_digest(str(k)) and isinstance(v, str)}


def parse_mounts(raw: Mapping[str, Any]) -> list[MountRecord]:
    """The cache mounts of a cache config; a malformed mount entry is left out (it only
    ever made builds faster), the first of two with one identity wins."""
    items = raw.get(MOUNTS_KEY)
    out: dict[str, MountRecord] = {}
    for item in items if isinstance(items, list) else []:
        try:
            record = _mount(item)
        except MALFORMED:
            continue
        if record is not None:
            out.setdefault(record.identity.name, record)
    return list(out.values())


def _mount(item: Any) -> MountRecord | None:
    ident = MountIdentity(str(item["id"]), _natural(item["uid"]), _natural(item["gid"]),
                          _natural(item["mode"]), str(item["platform"]))  # fmt: skip
    if not ident.id or ident.mode > 0o7777:
        return None
    layers = []
    for entry in item["layers"]:
        digest, diff_id, media = str(entry["blob"]), str(entry["diffID"]), str(entry["mediaType"])
        if not (is_digest(digest) and is_digest(diff_id)) or media not in LAYER_TYPES:
            return None
        blob = Descriptor(media, digest, _natural(entry["size"]))
        layers.append(MountLayer(Layer(blob, diff_id), _natural(entry.get("content", 0))))
    if not layers:
        return None
    return MountRecord(ident, tuple(layers), _natural(item.get("size", 0)),
                       str(item.get("updated") or ""))  # fmt: skip


def _natural(value: Any) -> int:
    if type(value) is not int or value < 0:
        raise ValueError(f"{value!r} is not a whole number")
    return value


def _records_json(
    ordered: list[CacheEntry], layer_index: Callable[[CacheEntry], int], *, describe: bool
) -> list[dict[str, Any]]:
    """One record per entry: its key, a link to its parent's record, its layer (and with
    *describe*, its key's description)."""
    record_index = {e.key: i for i, e in enumerate(ordered)}
    records: list[dict[str, Any]] = []
    for entry in ordered:
        record: dict[str, Any] = {"digest": entry.key}
        if entry.parent in record_index:
            record["inputs"] = [[{"link": record_index[entry.parent]}]]
        if entry.layer is not None:
            result: dict[str, Any] = {"layer": layer_index(entry)}
            if entry.created:
                result["createdAt"] = entry.created
            record["layers"] = [result]
        if entry.inputs is not None:
            record[INPUTS_KEY] = entry.inputs  # kiln's own field: BuildKit ignores it
        if describe and entry.about is not None:
            record[ABOUT_KEY] = entry.about.to_json()
        records.append(record)
    return records


def build_inline(entries: Iterable[CacheEntry], image_layers: Sequence[Layer]) -> str:
    """The base64 value of ``moby.buildkit.cache.v0``: records only, layer *i* being the
    image's layer *i*."""
    positions = {layer.digest: i for i, layer in enumerate(image_layers)}
    ordered = [e for e in _sorted(entries) if e.layer is None or e.layer.digest in positions]
    # no descriptions: the image config carries this, and every byte of it is pulled
    records = _records_json(ordered, lambda e: positions[e.layer.digest] if e.layer else -1,
                            describe=False)  # fmt: skip
    raw = json.dumps({"records": records}, sort_keys=True, separators=(",", ":"))
    return base64.b64encode(raw.encode()).decode()


def parse_json(data: bytes, what: str) -> dict[str, Any]:
    if len(data) > MAX_CONFIG_SIZE:
        raise CacheFormatError(f"{what} is larger than {MAX_CONFIG_SIZE} bytes")
    try:
        raw = json.loads(data, parse_constant=_no_constants)
    except ValueError as exc:
        raise CacheFormatError(f"{what} is not JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise CacheFormatError(f"{what} is not a JSON object")
    return raw


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_config(
    raw: Mapping[str, Any], blobs: Mapping[str, Layer] | None = None
) -> dict[str, StepRecord]:
    """Records of a cache config (see :func:`_parse_config`); anything malformed is a
    :class:`CacheFormatError`, never a crash."""
    try:
        return _parse_config(raw, blobs)
    except MALFORMED as exc:
        raise CacheFormatError(f"malformed cache config: {exc}") from exc


def _parse_config(
    raw: Mapping[str, Any], blobs: Mapping[str, Layer] | None = None
) -> dict[str, StepRecord]:
    """Records of a cache config: key → what the step produced.

    *blobs* maps a blob digest to its layer (from an OCI manifest's annotated
    descriptors); without it, each layer entry's own annotations must say.
    """
    layers_raw = raw.get("layers") or []
    records_raw = raw.get("records") or []
    if not isinstance(layers_raw, list) or not isinstance(records_raw, list):
        raise CacheFormatError("layers and records must be lists")
    layers: list[Layer | None] = [_layer(item, blobs) for item in layers_raw]
    parents = [_parent(item) for item in layers_raw]
    # a step's layer names the layer of the step before it as its parent (exactly)
    return _records(records_raw, layers, lambda index, below: parents[index] == below)


def parse_inline(value: str, image_layers: Sequence[Layer]) -> dict[str, StepRecord]:
    try:
        raw = parse_json(base64.b64decode(value, validate=True), INLINE_CONFIG_KEY)
    except (ValueError, TypeError) as exc:
        raise CacheFormatError(f"{INLINE_CONFIG_KEY} is not valid base64 JSON: {exc}") from exc
    records_raw = raw.get("records") or []
    if not isinstance(records_raw, list):
        raise CacheFormatError("records must be a list")
    try:
        # image layers are in order: a step's layer lies above the one before it
        return _records(records_raw, list(image_layers), lambda index, below: index > below)
    except MALFORMED as exc:
        raise CacheFormatError(f"malformed inline cache: {exc}") from exc


def _parent(item: Any) -> int:
    """A layer entry's parent index: -1 for none; omitted means 0 (Go's omitempty)."""
    try:
        return int(item.get("parent", 0))
    except (TypeError, ValueError, AttributeError):
        return -2  # not an index: nothing follows it


def _layer(item: Any, blobs: Mapping[str, Layer] | None) -> Layer | None:
    if not isinstance(item, dict) or not is_digest(str(item.get("blob", ""))):
        raise CacheFormatError("a layer entry has no valid blob digest")
    digest = str(item["blob"])
    if blobs is not None and digest in blobs:
        return blobs[digest]
    notes = item.get("annotations")
    if not isinstance(notes, dict):
        return None  # not described anywhere: records using it are unusable
    diff_id = str(notes.get("diffID", ""))
    if not is_digest(diff_id):
        return None
    try:
        size = int(notes.get("size", -1))
    except (TypeError, ValueError):
        return None
    media = str(notes.get("mediaType", ""))
    if size < 0 or not media:
        return None
    if media not in LAYER_TYPES:
        raise CacheFormatError(f"a layer has an unknown media type {media!r}")
    return Layer(Descriptor(media, digest, size), diff_id)


ChainCheck = Callable[[int, int], bool]
"""Whether layer *index* may follow layer *parent* (-1: none) in a step chain."""


def _records(records_raw: list[Any], layers: Sequence[Layer | None], follows: ChainCheck
             ) -> dict[str, StepRecord]:  # fmt: skip
    """Records by key. A record whose layer does not follow the layer of the step before
    it (by its ``inputs`` link) contradicts the chain it claims and is left out: records
    whose layers were swapped are not hits."""
    parsed = [_record(item, layers) for item in records_raw]
    links = [_link(item, len(parsed)) for item in records_raw]

    def below(index: int | None, seen: frozenset[int] = frozenset()) -> int:
        """The layer index of the nearest record at or before *index* that has one."""
        while index is not None and index not in seen:
            seen = seen | {index}
            entry = parsed[index]
            if entry is not None and entry[2] is not None:
                return entry[2]
            index = links[index]
        return -1

    out: dict[str, StepRecord] = {}
    for n, entry in enumerate(parsed):
        if entry is None:
            continue
        key, record, layer_index = entry
        if layer_index is not None and not follows(layer_index, below(links[n])):
            continue
        out[key] = record
    return out


def _link(item: Any, count: int) -> int | None:
    """The record the step's first input links to (the step before it), if any."""
    try:
        link = int(item["inputs"][0][0]["link"])
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    return link if 0 <= link < count else None


def _record(item: Any, layers: Sequence[Layer | None]) -> tuple[str, StepRecord, int | None] | None:
    if not isinstance(item, dict) or not is_digest(str(item.get("digest", ""))):
        return None
    key = str(item["digest"])
    results = item.get("layers") or []
    if not isinstance(results, list):
        return None
    inputs = item.get(INPUTS_KEY)
    if not (isinstance(inputs, str) and is_digest(inputs)):
        inputs = None  # absent, or not something kiln wrote: the content key is unknown
    about = read_about(item.get(ABOUT_KEY))
    if not results:
        return key, StepRecord(None, "", inputs, about), None
    result = results[0]
    if not isinstance(result, dict):
        return None
    try:
        index = int(result.get("layer", -1))
    except (TypeError, ValueError):
        return None
    if not 0 <= index < len(layers):
        return None
    layer = layers[index]
    if layer is None:
        return None
    return key, StepRecord(layer, str(result.get("createdAt") or ""), inputs, about), index
