"""Test doubles shared by the tests of kiln.http and of its users."""

from __future__ import annotations

from kiln.http.retry import RetryPolicy


class FakeTime:
    """A monotonic clock that only moves when slept on (unless *frozen*); records sleeps."""

    def __init__(self, *, frozen: bool = False) -> None:
        self.now = 1000.0
        self.frozen = frozen
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if not self.frozen:
            self.now += seconds

    def policy(self, **kw: object) -> RetryPolicy:
        """A :class:`RetryPolicy` on this clock (*kw* overrides its fields)."""
        return RetryPolicy(sleep=self.sleep, clock=self.clock, **kw)  # type: ignore[arg-type]
