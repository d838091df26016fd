"""``kiln du`` and ``kiln prune``: what ``$KILN_ROOT`` holds, and removing it (as ``docker
buildx du`` / ``docker buildx prune``; the rules are in :mod:`kiln.gc`)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from typing import TYPE_CHECKING, Any

from kiln.errors import KilnError, UsageError

if TYPE_CHECKING:
    from kiln.gc.entries import Inventory, Item
    from kiln.gc.policy import PruneOptions

_FILTER_KEYS = ("until",)


@dataclasses.dataclass(frozen=True, slots=True)
class _Row:
    kind: str
    count: int
    size: int
    reclaimable: int
    last_used: int  # ns


def register(sub: Any) -> None:
    du = sub.add_parser("du", help="show what $KILN_ROOT holds, by kind")
    du.add_argument("--verbose", action="store_true", help="list every entry")
    du.add_argument("--format", choices=["table", "json"], default="table")
    du.set_defaults(handler=run_du)
    p = sub.add_parser("prune", help="remove cached state from $KILN_ROOT, least recently "
                                     "used first")  # fmt: skip
    p.add_argument("-a", "--all", action="store_true",
                   help="everything (subject to the filters), not only dangling state")  # fmt: skip
    p.add_argument("--keep-storage", "--max-used-space", dest="keep_storage", metavar="SIZE",
                   help="remove least recently used entries only until at most SIZE is "
                   "kept")  # fmt: skip
    p.add_argument("--filter", action="append", default=[], metavar="until=DURATION",
                   help="only entries last used before DURATION ago (24h, 7d)")  # fmt: skip
    p.add_argument("-f", "--force", action="store_true", help="do not ask for confirmation")
    p.add_argument("--verbose", action="store_true", help="also say why each entry went")
    p.set_defaults(handler=run_prune)


# ---------------------------------------------------------------------------- du
def run_du(args: argparse.Namespace) -> int:
    from kiln.gc.collect import usage
    from kiln.gc.entries import KINDS, Inventory
    from kiln.gc.policy import PruneOptions, plan
    from kiln.state import KilnRoot, default_root

    root = KilnRoot(default_root())
    try:
        found = usage(root)
    except OSError as exc:
        raise KilnError(f"cannot read {root.path}: {exc.strerror or exc}") from exc
    inv, clock = found if found is not None else (Inventory(root.path), None)
    reclaim = plan(inv, PruneOptions(all=True), now=clock.now, fence=clock.fence) if clock \
        else None  # fmt: skip
    now = clock.now if clock else time.time_ns()
    fence = clock.fence if clock else now
    rows = []
    for kind in KINDS:
        items = [i for i in inv.items if i.kind == kind]
        rows.append(_Row(str(kind), sum(i.count for i in items), inv.size_of(kind),
                         reclaim.freed[kind] if reclaim else 0,
                         max((i.last_used for i in items), default=0)))  # fmt: skip
    total_reclaim = reclaim.total_freed if reclaim else 0
    if args.format == "json":
        doc: dict[str, Any] = {
            "root": str(root.path),
            "total": inv.total,
            "reclaimable": total_reclaim,
            "kinds": [{**dataclasses.asdict(r), "last_used": _iso(r.last_used)} for r in rows],
        }
        if args.verbose:
            doc["entries"] = [_entry_json(inv, i, fence) for i in _by_use(inv.items)]
        json.dump(doc, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    if args.verbose:
        print(f"{'KIND':<13} {'SIZE':>10}  {'LAST USED':<15} {'NAME'}")
        for item in _by_use(inv.items):
            state = _state(item, fence)
            print(f"{item.kind:<13} {_size(inv.footprint(item)):>10}  "
                  f"{_ago(item.last_used, now):<15} {item.name}"
                  f"{'  (' + state + ')' if state else ''}")  # fmt: skip
        print()
    print(f"{'KIND':<13} {'COUNT':>7} {'SIZE':>10} {'RECLAIMABLE':>12}  LAST USED")
    for r in rows:
        last = _ago(r.last_used, now) if r.last_used else "-"
        print(f"{r.kind:<13} {r.count:>7} {_size(r.size):>10} {_size(r.reclaimable):>12}  "
              f"{last}")  # fmt: skip
    print(f"Reclaimable:  {_size(total_reclaim)}")
    print(f"Total:        {_size(inv.total)}")
    return 0


# ---------------------------------------------------------------------------- prune
def run_prune(args: argparse.Namespace) -> int:
    from kiln.gc.collect import collect
    from kiln.state import KilnRoot, default_root

    options = parse_prune_options(args.all, args.keep_storage, args.filter)
    if not args.force and not _confirm(options):
        return 0
    root = KilnRoot(default_root())
    try:
        outcome = collect(root, options)
    except OSError as exc:
        raise KilnError(f"cannot prune {root.path}: {exc.strerror or exc}") from exc
    if outcome is None:
        print("Total:\t0 B")
        return 0
    removed = outcome.removed
    now = time.time_ns()
    if removed.items:
        print(f"{'KIND':<13} {'SIZE':>10}  {'LAST USED':<15} NAME")
    for item in removed.items:
        why = f"  ({item.note})" if args.verbose and item.note else ""
        print(f"{item.kind:<13} {_size(item.size):>10}  {_ago(item.last_used, now):<15} "
              f"{item.name}{why}")  # fmt: skip
    if args.verbose:
        for kind, freed in removed.freed.items():
            if freed:
                print(f"{kind}: {_size(freed)}")
    kept = outcome.plan.in_use + removed.busy
    if kept:
        print(f"kept {kept} entries in use by running builds", file=sys.stderr)
    print(f"Total:\t{_size(removed.total)}")
    if removed.errors:
        raise KilnError(
            f"{len(removed.errors)} entries could not be removed: {removed.errors[0]}",
            hint="check the permissions of $KILN_ROOT (kiln builds as root)",
        )
    return 0


def parse_prune_options(all_: bool, keep_storage: str | None,
                        filters: list[str]) -> PruneOptions:  # fmt: skip
    """The prune's options from its flags; a bad value is a :class:`UsageError`."""
    from kiln.gc.policy import PruneOptions
    from kiln.units import parse_duration, parse_size

    keep = None
    if keep_storage is not None:
        try:
            keep = parse_size(keep_storage)
        except ValueError as exc:
            raise UsageError(f"--keep-storage: {exc}") from exc
    until = None
    for text in filters:
        key, sep, value = text.partition("=")
        key = key.strip().lower()
        if not sep or key not in _FILTER_KEYS:
            raise UsageError(f"--filter {text!r}: unknown filter",
                             hint="kiln prune filters by until=DURATION (until=24h)")  # fmt: skip
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            raise UsageError(f"--filter {text!r}: {exc}") from exc
        until = seconds if until is None else max(until, seconds)
    return PruneOptions(all=all_, keep_storage=keep, until=until)


def _confirm(options: PruneOptions) -> bool:
    what = "all build cache" if options.all else "all dangling build cache"
    sys.stderr.write(f"WARNING! This will remove {what} from $KILN_ROOT. "
                     "Are you sure you want to continue? [y/N] ")  # fmt: skip
    sys.stderr.flush()
    answer = sys.stdin.readline()
    return answer.strip().lower() in ("y", "yes")


# ---------------------------------------------------------------------------- formatting
def _size(n: int) -> str:
    from kiln.units import format_size

    return format_size(n)


def _ago(ns: int, now: int) -> str:
    seconds = max(0, (now - ns) // 10**9)
    for unit, length in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= length:
            n = seconds // length
            return f"{n} {unit}{'s' if n > 1 else ''} ago"
    return "just now" if seconds < 5 else f"{seconds} seconds ago"


def _iso(ns: int) -> str | None:
    if not ns:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ns / 1e9))


def _by_use(items: list[Item]) -> list[Item]:
    return sorted(items, key=lambda i: (-i.last_used, str(i.kind), i.name))


def _state(item: Item, fence: int) -> str:
    parts = []
    if item.last_used >= fence:
        parts.append("in use")
    if item.dangling:
        parts.append("dangling")
    if item.note:
        parts.append(item.note)
    return ", ".join(parts)


def _entry_json(inv: Inventory, item: Item, fence: int) -> dict[str, Any]:
    return {
        "kind": str(item.kind),
        "name": item.name,
        "size": inv.footprint(item),
        "count": item.count,
        "last_used": _iso(item.last_used),
        "in_use": item.last_used >= fence,
        "dangling": item.dangling,
        "note": item.note,
    }
