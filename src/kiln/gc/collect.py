"""One prune: take the inventory, plan, remove — one prune at a time per KILN_ROOT."""

from __future__ import annotations

from dataclasses import dataclass

from kiln.gc.clock import Clock
from kiln.gc.delete import Removed, Remover
from kiln.gc.entries import Inventory
from kiln.gc.inventory import take
from kiln.gc.policy import Plan, PruneOptions, cutoff, plan
from kiln.state import KilnRoot, Lease, exclusive_lock


@dataclass
class Outcome:
    inventory: Inventory
    plan: Plan
    removed: Removed


def usage(root: KilnRoot) -> tuple[Inventory, Clock] | None:
    """What is under *root* now (None when it does not exist)."""
    if not root.path.is_dir():
        return None
    clock = Clock.read(root)
    return take(root, now=clock.now, busy_since=clock.busy_since), clock


def collect(
    root: KilnRoot,
    options: PruneOptions,
    *,
    own: Lease | None = None,
    wait: bool = True,
    patience: float | None = None,
) -> Outcome | None:
    """Prune *root* as *options* say. *own*: the lease of the build this runs in (what it
    used stays); without *wait*, None when another prune is running; *patience*: see
    :class:`~kiln.gc.delete.Remover`."""
    if not root.path.is_dir():
        return None
    (root.path / "gc").mkdir(exist_ok=True)
    with exclusive_lock(root.path / "gc" / "prune.lock", wait=wait) as held:
        if not held:
            return None
        clock = Clock.read(root, own)
        inv = take(root, now=clock.now, busy_since=clock.busy_since)
        chosen = plan(inv, options, now=clock.now, fence=clock.fence)
        limit = cutoff(options, now=clock.now, fence=clock.fence)
        remover = Remover(root, inv, limit=limit, own_lease=own.path if own else None,
                          patience=patience)  # fmt: skip
        return Outcome(inv, chosen, remover.run(chosen))
