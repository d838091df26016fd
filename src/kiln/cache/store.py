"""The local step cache: cache key → step result, under ``$KILN_ROOT/cache/keys``.

One small JSON file per key, written atomically. A record names the layer the step
produced (or none, for a step that changed nothing) and when it was created (history
timestamps stay stable across rebuilds). A record that cannot be read, or whose layer is
no longer present locally, is a miss: never a crash and never a wrong hit.

For explaining misses, a record also holds its key's description; beside the keys,
``cache/slots`` lists the newest keys of each step position (``KeyDescription.slot``)
and ``cache/trees`` holds the trees of context files the descriptions name.

A lookup marks the record used (its mtime) and a put marks its blob, under the use lock
(``BlobStore.guard``): ``kiln prune`` (:mod:`kiln.gc`) removes the least recently used
records first, each before the blob it names, and never one a running build used.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from pathlib import Path

from kiln.cache.records import StepRecord
from kiln.content import BlobStore
from kiln.oci import Layer, digest_hex, is_digest
from kiln.state import write_atomic

log = logging.getLogger(__name__)


SLOT_KEYS = 16  # keys remembered per step position


class LocalCache:
    name = "the local store"

    def __init__(self, root: Path, blobs: BlobStore) -> None:
        self.root = root
        self.blobs = blobs
        self.slots = root.parent / "slots"
        self.trees = root.parent / "trees"
        root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / (digest_hex(key) + ".json")

    def get(self, key: str) -> StepRecord | None:
        path = self._path(key)
        with self.blobs.guard.shared():  # the collector removes a record or keeps it used
            try:
                os.utime(path)  # last use, for pruning (kiln.gc): least recently used first
            except FileNotFoundError:
                return None
            except OSError:
                pass
            try:
                raw = json.loads(path.read_bytes())
                record = StepRecord.from_json(raw)
            except FileNotFoundError:
                return None
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("ignoring unreadable cache entry %s: %s", path.name, exc)
                self._drop(path)
                return None
            layer = record.layer
            if layer is not None and not self._blob_intact(layer):
                return None
            return record

    def _blob_intact(self, layer: Layer) -> bool:
        """The layer's blob is here with the size its descriptor says (a cheap check; a
        truncated or replaced blob is removed and the step runs again)."""
        try:
            size = self.blobs.size(layer.digest)
        except OSError:
            return False
        if size != layer.blob.size:
            log.warning("blob %s has %d bytes, expected %d: removed", layer.digest, size,
                        layer.blob.size)  # fmt: skip
            self.blobs.remove(layer.digest)
            return False
        return True

    def put(self, key: str, record: StepRecord) -> None:
        data = json.dumps(record.to_json(), sort_keys=True).encode()
        with self.blobs.guard.shared():
            if record.layer is not None:
                self.blobs.touch(record.layer.digest)  # named again: used now
            write_atomic(self._path(key), data)
        if record.about is not None:
            self._remember(record.about.slot, key)

    # ------------------------------------------------------------------ explaining
    def _slot_path(self, slot: str) -> Path:
        return self.slots / (hashlib.sha256(slot.encode()).hexdigest()[:32] + ".json")

    def _slot_keys(self, slot: str) -> list[str]:
        try:
            keys = json.loads(self._slot_path(slot).read_bytes())
        except (OSError, ValueError):
            return []
        if not isinstance(keys, list):
            return []
        return [k for k in keys if isinstance(k, str) and is_digest(k)]

    def _remember(self, slot: str, key: str) -> None:
        """The newest keys at *slot* (a lost update between two builds only loses a
        candidate for an explanation)."""
        keys = self._slot_keys(slot)
        if keys[:1] == [key]:
            return
        keys = [key, *(k for k in keys if k != key)][:SLOT_KEYS]
        with contextlib.suppress(OSError):
            write_atomic(self._slot_path(slot), json.dumps(keys).encode(), durable=False)

    def candidates(self, slot: str, parent: str) -> list[StepRecord]:
        out = []
        for key in self._slot_keys(slot):
            try:
                record = StepRecord.from_json(json.loads(self._path(key).read_bytes()))
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if record.about is not None:
                out.append(record)
        return out

    def tree(self, digest: str) -> str | None:
        try:
            return (self.trees / digest_hex(digest)).read_text()
        except (OSError, ValueError):
            return None

    def has_tree(self, digest: str) -> bool:
        return (self.trees / digest_hex(digest)).exists()

    def put_tree(self, digest: str, encoded: str) -> None:
        with contextlib.suppress(OSError):
            write_atomic(self.trees / digest_hex(digest), encoded.encode(), durable=False)

    def _drop(self, path: Path) -> None:
        with contextlib.suppress(OSError):
            path.unlink()


def now_rfc3339(source_date_epoch: int | None = None) -> str:
    t = source_date_epoch if source_date_epoch is not None else time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
