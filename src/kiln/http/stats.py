"""Transfer accounting: bytes that actually crossed the wire, per category.

A category is a free-form label chosen by the caller ("image", "cache", ...). Layer blobs
are also counted on their own so a test (or a progress line) can say "zero layer bytes
pulled" even though manifests and configs were fetched.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TransferTotals:
    pulled: int = 0
    pushed: int = 0
    layers_pulled: int = 0
    layers_pushed: int = 0


class TransferStats:
    """Thread-safe byte counters per category."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: defaultdict[tuple[str, str], int] = defaultdict(int)

    def add_pulled(self, nbytes: int, category: str, *, layer: bool = False) -> None:
        self._add("pulled", nbytes, category, layer)

    def add_pushed(self, nbytes: int, category: str, *, layer: bool = False) -> None:
        self._add("pushed", nbytes, category, layer)

    def _add(self, direction: str, nbytes: int, category: str, layer: bool) -> None:
        if nbytes <= 0:
            return
        with self._lock:
            self._counts[(direction, category)] += nbytes
            if layer:
                self._counts[(f"layers_{direction}", category)] += nbytes

    def _get(self, key: str, category: str | None) -> int:
        with self._lock:
            if category is not None:
                return self._counts.get((key, category), 0)
            return sum(n for (k, _), n in self._counts.items() if k == key)

    def pulled(self, category: str | None = None) -> int:
        """All bytes pulled (manifests, configs, layers); every category when None."""
        return self._get("pulled", category)

    def pushed(self, category: str | None = None) -> int:
        return self._get("pushed", category)

    def layers_pulled(self, category: str | None = None) -> int:
        """Bytes of layer blobs pulled (a subset of :meth:`pulled`)."""
        return self._get("layers_pulled", category)

    def layers_pushed(self, category: str | None = None) -> int:
        return self._get("layers_pushed", category)

    def categories(self) -> list[str]:
        with self._lock:
            return sorted({c for (_, c) in self._counts})

    def totals(self, category: str | None = None) -> TransferTotals:
        return TransferTotals(
            self.pulled(category),
            self.pushed(category),
            self.layers_pulled(category),
            self.layers_pushed(category),
        )

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()


def is_layer_media_type(media_type: str) -> bool:
    """Whether a blob of *media_type* is a filesystem layer (OCI, Docker, or unknown)."""
    mt = media_type.lower()
    return ".layer." in mt or ".rootfs." in mt or mt in ("", "application/octet-stream")
