"""The local step cache: cache key → step result, under ``$KILN_ROOT/cache/keys``.

One small JSON file per key, written atomically. A record names the layer the step
produced (or none, for a step that changed nothing) and when it was created (history
timestamps stay stable across rebuilds). A record that cannot be read, or whose layer is
no longer present locally, is a miss: never a crash and never a wrong hit.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path

from kiln.cache.records import StepRecord
from kiln.content import BlobStore
from kiln.oci import Layer, digest_hex
from kiln.state import write_atomic

log = logging.getLogger(__name__)


class LocalCache:
    def __init__(self, root: Path, blobs: BlobStore) -> None:
        self.root = root
        self.blobs = blobs
        root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / (digest_hex(key) + ".json")

    def get(self, key: str) -> StepRecord | None:
        path = self._path(key)
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
        with contextlib.suppress(OSError):
            os.utime(path)  # last use, for size-capped pruning
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
        write_atomic(self._path(key), json.dumps(record.to_json(), sort_keys=True).encode())

    def _drop(self, path: Path) -> None:
        with contextlib.suppress(OSError):
            path.unlink()


def now_rfc3339(source_date_epoch: int | None = None) -> str:
    t = source_date_epoch if source_date_epoch is not None else time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
