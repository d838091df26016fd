"""What a prune removes, decided on an :class:`~kiln.gc.entries.Inventory` alone.

- **Candidates**: items last used before the *fence* (the start of the oldest running
  build: whatever a running build used since it started stays) and, with ``until``,
  before ``now - until``. Without ``all`` only dangling items are candidates (see
  :mod:`kiln.gc`); with it, every item.
- **Order**: least recently used first.
- **Keep storage**: with ``keep_storage``, candidates are removed in that order only
  while the total (scratch aside) is above it; without, all of them.
- **Shared files** (a blob several records name, a mount's chain blob, a context tree)
  go with the last item that keeps them, and only if they were not used since the
  fence either (a running build fetched the blob).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kiln.gc.entries import KINDS, Inventory, Item, Kind, Shared

_KIND_ORDER = {kind: n for n, kind in enumerate(KINDS)}


@dataclass(frozen=True, slots=True)
class PruneOptions:
    all: bool = False  # every entry, not only dangling ones
    keep_storage: int | None = None  # bytes: stop once the total is at most this
    until: float | None = None  # seconds: only entries last used longer ago than this


@dataclass
class Plan:
    items: list[Item] = field(default_factory=list)  # in removal order
    frees: dict[int, list[Shared]] = field(default_factory=dict)  # id(item): shared it frees
    freed: dict[Kind, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    before: int = 0  # the total counted against keep_storage
    in_use: int = 0  # items kept because a running build used them

    @property
    def total_freed(self) -> int:
        return sum(self.freed.values())

    @property
    def after(self) -> int:
        return self.before - self.total_freed


def cutoff(options: PruneOptions, *, now: int, fence: int) -> int:
    """Entries last used at or after this (ns) are kept."""
    if options.until is None:
        return fence
    return min(fence, now - int(options.until * 1e9))


def plan(inv: Inventory, options: PruneOptions, *, now: int, fence: int) -> Plan:
    """The removals *options* ask for. *now* and *fence* are file-system times (ns)."""
    limit = cutoff(options, now=now, fence=fence)
    out = Plan(before=inv.kept)
    candidates = []
    for item in inv.items:
        if not (options.all or item.dangling):
            continue
        if item.last_used >= fence:
            out.in_use += 1
        elif item.last_used < limit:
            candidates.append(item)
    candidates.sort(key=lambda i: (i.last_used, _KIND_ORDER[i.kind], i.name))
    refs = {key: entry.referrers for key, entry in inv.shared.items()}
    total = inv.kept
    for item in candidates:
        if options.keep_storage is not None and total <= options.keep_storage:
            break
        frees = []
        for key in sorted(item.shared):
            refs[key] -= 1
            entry = inv.shared[key]
            if refs[key] == 0 and entry.last_used < limit:
                frees.append(entry)
        out.items.append(item)
        out.frees[id(item)] = frees
        out.freed[item.kind] += item.size
        for entry in frees:
            out.freed[entry.kind] += entry.size
        total -= item.size + sum(e.size for e in frees)
    return out
