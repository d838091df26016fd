"""Removing what a :class:`~kiln.gc.policy.Plan` selected, safely against running builds.

Each item is checked again at the moment it goes, under the lock that its users take:

- **guarded** (step records, slots, context trees, blobs, leftovers): under the use lock
  (:class:`kiln.state.UseLock`, exclusive; builds hold it shared while they mark a record
  or a blob used), and only if none of its files was used since the cutoff. Records go
  before the blob they name: a record whose blob is missing is a miss, never a failure;
- **locked** (snapshots, cache mounts, downloads): under the entry's own lock, taken
  without waiting — a snapshot that is mounted, a mount a step uses, a download being
  fetched is busy and stays. A directory is renamed into this process's scratch (one
  step, so no one sees half of it) and deleted there, outside the lock. A mount's
  directory goes before its state, a download's ``meta.json`` before its content. Lock
  files stay (they are empty): someone may be waiting on one, and a new file under the
  same name would be a second lock;
- **quiet** (context views and hash memos, which builds do not mark used): only while
  no other build runs;
- **sweep** (a dead session): :func:`kiln.state.sweep_stale_sessions`.

A shared file (a blob, a tree) goes when the last item keeping it went and it was not
used since the cutoff either.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from kiln.gc.entries import KINDS, How, Inventory, Item, Kind, Shared
from kiln.gc.policy import Plan
from kiln.state import KilnRoot, live_leases, sweep_stale_sessions, use_lock


@dataclass
class Removed:
    items: list[Item] = field(default_factory=list)
    freed: dict[Kind, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    busy: int = 0  # items found in use at the last moment
    errors: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.freed.values())


class Remover:
    """*limit*: entries used at or after it (ns) stay; *own_lease*: the lease of the
    build this prune runs in (``None`` for ``kiln prune``); *patience*: seconds to wait
    for the use lock, per entry (``None``: as long as it takes)."""

    def __init__(self, root: KilnRoot, inv: Inventory, *, limit: int,
                 own_lease: Path | None = None, patience: float | None = None) -> None:  # fmt: skip
        self.root = root
        self.inv = inv
        self.limit = limit
        self.own_lease = own_lease
        self.patience = patience
        self.guard = use_lock(root.gc_lock)
        self.refs = {key: entry.referrers for key, entry in inv.shared.items()}
        self._trash: Path | None = None
        self._moved = 0
        self._swept = False

    def run(self, plan: Plan) -> Removed:
        out = Removed()
        for item in plan.items:
            try:
                if not self._remove(item):
                    out.busy += 1
                    continue
            except OSError as exc:
                out.errors.append(f"cannot remove {item.name}: {exc}")
                continue
            out.items.append(item)
            out.freed[item.kind] += item.size
            for key in sorted(item.shared):
                self.refs[key] -= 1
                entry = self.inv.shared[key]
                if self.refs[key] == 0:
                    try:
                        if self._remove_shared(entry):
                            out.freed[entry.kind] += entry.size
                    except OSError as exc:
                        out.errors.append(f"cannot remove {entry.key}: {exc}")
        return out

    # ------------------------------------------------------------------ by kind
    def _remove(self, item: Item) -> bool:
        if item.how is How.GUARDED:
            with self._guarded() as held:
                if not held or not self._unused(item.stamps):
                    return False
                moved = self._take_away(item.paths)
        elif item.how is How.LOCKED:
            assert item.lock is not None
            with _try_lock(item.lock) as held:
                if not held or not self._unused(item.stamps):
                    return False
                moved = self._take_away(item.paths)
        elif item.how is How.QUIET:
            if self._others_running() or not self._unused(item.stamps):
                return False
            moved = self._take_away(item.paths)
        else:
            if not self._swept:
                sweep_stale_sessions(self.root.tmp)
                self._swept = True
            return not any(os.path.lexists(p) for p in item.paths)
        for path in moved:  # outside any lock
            shutil.rmtree(path, ignore_errors=True)
        return True

    def _remove_shared(self, entry: Shared) -> bool:
        with self._guarded() as held:
            if not held or not self._unused(entry.paths[:1]):
                return False
            for path in entry.paths:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        return True

    # ------------------------------------------------------------------ helpers
    def _unused(self, stamps: list[Path]) -> bool:
        """None of *stamps* was used at or after the limit (a missing one is unused)."""
        for path in stamps:
            try:
                if path.lstat().st_mtime_ns >= self.limit:
                    return False
            except FileNotFoundError:
                continue
        return True

    def _take_away(self, paths: list[Path]) -> list[Path]:
        """Unlink files, rename directories into the trash (deleted by the caller)."""
        moved = []
        for path in paths:
            try:
                is_dir = path.is_dir() and not path.is_symlink()
            except OSError:
                continue
            if not is_dir:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                continue
            self._moved += 1
            target = self._trash_dir() / f"{self._moved}-{path.name}"
            try:
                os.rename(path, target)
            except FileNotFoundError:
                continue
            except OSError:  # another file system: delete in place, under the lock
                shutil.rmtree(path, ignore_errors=True)
                continue
            moved.append(target)
        return moved

    def _trash_dir(self) -> Path:
        if self._trash is None:
            self._trash = self.root.tempdir("prune-")  # swept should this process die
        return self._trash

    def _others_running(self) -> bool:
        return any(lease.path != self.own_lease for lease in live_leases(self.root.tmp))

    @contextlib.contextmanager
    def _guarded(self) -> Iterator[bool]:
        deadline = None if self.patience is None else time.monotonic() + self.patience
        while True:
            with self.guard.exclusive(wait=deadline is None) as held:
                if held or (deadline is not None and time.monotonic() >= deadline):
                    yield held
                    return
            time.sleep(0.01)


@contextlib.contextmanager
def _try_lock(path: Path) -> Iterator[bool]:
    """Hold *path* exclusively if no one holds it now (never waits)."""
    try:
        fh = open(path, "a")  # noqa: SIM115 - closed below
    except FileNotFoundError:  # its directory is gone: so is the entry
        yield False
        return
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
