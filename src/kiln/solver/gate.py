"""Steps of one key run once in a build, whichever platform's solver reaches them first."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator


class StepGate:
    """One lock per step key: a key being run by one solver is not run by another."""

    def __init__(self) -> None:
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def hold(self, key: str) -> Iterator[None]:
        with self._lock:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            yield
