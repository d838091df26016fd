"""The automatic cap: after every build, ``$KILN_ROOT`` is pruned back under ``KILN_ROOT_MAX``.

``KILN_ROOT_MAX`` is a size (``20GB``, ``500MiB``); ``0`` or ``off`` turns the cap off.
Unset, the cap is 10 % of the file system that holds ``$KILN_ROOT``, at most 20 GB (as
BuildKit's default garbage collection keeps 10 % of the disk; the bound keeps a big disk
from filling with cache nobody reuses). A bad value is a usage error before the build
starts.

The check is cheap when the root is under its cap: a walk that stats the entries of the
blob store, the step cache and the download, mount and snapshot directories but reads no
file, with the sizes of snapshot and context trees remembered (:mod:`kiln.gc.sizes`).
Over the cap, the least recently used entries are pruned (``kiln prune --all
--keep-storage CAP``) — never what this build or a running one used, so the newest
results stay even when they alone exceed the cap (then a warning says so). It never
blocks the build for long: it skips when another prune is running, takes entry locks
without waiting and waits for the use lock only briefly.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from kiln.errors import KilnError, UsageError
from kiln.gc.clock import Clock
from kiln.gc.measure import measure
from kiln.state import KilnRoot, Lease, build_lease
from kiln.units import format_size, parse_size

log = logging.getLogger(__name__)

ENV = "KILN_ROOT_MAX"
DEFAULT_MAX = 20 * 10**9
DEFAULT_SHARE = 0.10  # of the file system holding KILN_ROOT


def configured_cap(root: Path, environ: Mapping[str, str] = os.environ) -> int | None:
    """The cap in bytes (None: no cap) that ``KILN_ROOT_MAX`` sets for *root*."""
    text = environ.get(ENV, "").strip()
    if not text:
        return default_cap(root)
    if text.lower() in ("0", "off"):
        return None
    try:
        return parse_size(text) or None
    except ValueError as exc:
        raise UsageError(f"{ENV}={text}: {exc}",
                         hint="set it to a size such as 20GB, or to 0 or off for no cap"
                         ) from exc  # fmt: skip


def default_cap(root: Path) -> int:
    """10 % of the file system holding *root*, at most 20 GB."""
    try:
        st = os.statvfs(root)
    except OSError:
        return DEFAULT_MAX
    return min(DEFAULT_MAX, int(st.f_blocks * st.f_frsize * DEFAULT_SHARE))


@contextlib.contextmanager
def capped(root: KilnRoot, message: Callable[[str], None]) -> Iterator[Lease]:
    """Hold a build's lease while it runs; then (also after a failed build: what its
    steps stored counts too) keep *root* under its cap."""
    cap = configured_cap(root.path)
    with build_lease(root.tmp) as lease:
        try:
            yield lease
        except Exception:
            enforce(root, cap, lease, message)
            raise
        enforce(root, cap, lease, message)


def enforce(root: KilnRoot, cap: int | None, lease: Lease | None,
            message: Callable[[str], None]) -> None:  # fmt: skip
    """Prune *root* back under *cap* if it is over; failures are warnings."""
    if cap is None:
        return
    started = time.monotonic()
    try:
        clock = Clock.read(root, lease)
        held = measure(root, now=clock.now, busy_since=clock.busy_since)
        log.debug("%s holds %d bytes (cap %d), checked in %.3f s", root.path, held, cap,
                  time.monotonic() - started)  # fmt: skip
        if held <= cap:
            return
        from kiln.gc.collect import collect  # the prune itself, loaded only when needed
        from kiln.gc.policy import PruneOptions

        outcome = collect(root, PruneOptions(all=True, keep_storage=cap), own=lease,
                          wait=False, patience=2.0)  # fmt: skip
    except (OSError, KilnError) as exc:
        message(f"WARNING: the automatic prune of {root.path} failed: {exc}")
        return
    if outcome is None:
        return  # another prune is running: it will do
    removed = outcome.removed
    left = outcome.plan.before - removed.total
    message(f"{root.path} held {format_size(outcome.plan.before)}, over its cap of "
            f"{format_size(cap)} ({ENV}): removed the {len(removed.items)} least recently "
            f"used entries ({format_size(removed.total)}) in "
            f"{time.monotonic() - started:.2f} s")  # fmt: skip
    for error in removed.errors[:5]:
        message(f"WARNING: {error}")
    if left > cap:
        message(f"WARNING: {root.path} still holds {format_size(left)}: the rest is in use "
                "by this build or by builds running now")  # fmt: skip
