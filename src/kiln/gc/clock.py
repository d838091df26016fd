"""The times a prune goes by (its own module: the after-build check needs only this)."""

from __future__ import annotations

from dataclasses import dataclass

from kiln.state import KilnRoot, Lease, fs_now, live_leases


@dataclass(frozen=True, slots=True)
class Clock:
    """When a prune looks: *now*, the *fence* (the start of the oldest running build, or
    now) and *busy_since* (the same for the builds other than the caller's)."""

    now: int
    fence: int
    busy_since: int
    others: int  # builds running in other processes (or other leases of this one)

    @classmethod
    def read(cls, root: KilnRoot, own: Lease | None = None) -> Clock:
        now = fs_now(root.path / "gc")  # before the leases: a build starting later is newer
        leases = live_leases(root.tmp)
        others = [lease.start for lease in leases if own is None or lease.path != own.path]
        fence = min([now, *(lease.start for lease in leases)])
        return cls(now, fence, min([now, *others]), len(others))
