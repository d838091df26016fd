"""Where a build's time goes: seconds per phase, for ``--metadata-file``'s ``phases``.

A phase is timed with ``with phase("pull"):`` anywhere in the pipeline. Times are
*exclusive* within a thread (a blob pulled inside a push counts as pull, not push) and
summed over threads: two layers pulled at once count twice, and ``compress`` (the
differ's compressing thread) overlaps the ``diff`` that feeds it, so the sum can exceed
the build's wall time. The totals are per process; a build reads them as the difference
of two :func:`totals`.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")

PHASES = ("context", "resolve", "cache import", "pull", "unpack", "run", "diff", "compress",
          "push", "cache export")  # fmt: skip

_totals = dict.fromkeys(PHASES, 0.0)
_lock = threading.Lock()
_local = threading.local()


def _stack() -> list[float]:
    stack: list[float] | None = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    return stack


def add(name: str, seconds: float) -> None:
    """Count *seconds* of *name* measured by the caller (a nested span: they are taken out
    of the phase this thread is in)."""
    stack = _stack()
    if stack:
        stack[-1] += seconds
    _count(name, seconds)


def _count(name: str, seconds: float) -> None:
    with _lock:
        _totals[name] = _totals.get(name, 0.0) + seconds


@contextmanager
def phase(name: str) -> Iterator[None]:
    stack = _stack()
    stack.append(0.0)  # the time of phases nested in this one
    start = time.perf_counter()
    try:
        yield
    finally:
        elapsed = time.perf_counter() - start
        _count(name, elapsed - stack.pop())
        if stack:
            stack[-1] += elapsed


def totals() -> dict[str, float]:
    with _lock:
        return dict(_totals)


def since(before: dict[str, float]) -> dict[str, float]:
    """Seconds per phase since *before* (a :func:`totals`), rounded to microseconds (a
    phase that ran at all is never shown as 0: compressing a tiny layer takes well under a
    millisecond)."""
    now = totals()
    return {name: round(now[name] - before.get(name, 0.0), 6) for name in now}


def timed(name: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a function whose every call is phase *name*."""

    def decorate(func: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(func)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            with phase(name):
                return func(*args, **kwargs)

        return wrapper

    return decorate
