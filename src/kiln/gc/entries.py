"""What ``$KILN_ROOT`` holds, as :mod:`kiln.gc.inventory` finds it: entries that can be
pruned (:class:`Item`), files they share (:class:`Shared`), and the bytes of each kind."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path


class Kind(enum.StrEnum):
    RECORDS = "step cache"
    BLOBS = "other blobs"
    SNAPSHOTS = "snapshots"
    MOUNTS = "cache mounts"
    SOURCES = "sources"
    CONTEXTS = "contexts"
    SCRATCH = "scratch"
    OTHER = "other"


KINDS = list(Kind)


class How(enum.Enum):
    """How an item is removed safely (:mod:`kiln.gc.delete`)."""

    GUARDED = "guarded"  # under the use lock, exclusive: records, blobs, trees, slots, junk
    LOCKED = "locked"  # under its own lock, only if free at once: snapshots, mounts, sources
    QUIET = "quiet"  # only while no other build runs: context views and hash memos
    SWEEP = "sweep"  # a dead session: kiln.state.sweep_stale_sessions


@dataclass(eq=False)
class Shared:
    """A file items keep while one of them remains: a blob, a context tree."""

    key: str  # a blob's digest, or "tree:<digest>"
    paths: list[Path]
    size: int
    last_used: int  # ns
    referrers: int = 0
    kind: Kind = Kind.BLOBS  # the kind its bytes are counted in


@dataclass(eq=False)
class Item:
    kind: Kind
    name: str  # what `kiln du --verbose` shows
    size: int  # the bytes removing it frees, shared files aside
    last_used: int  # ns; the newest mtime of its stamps
    how: How
    paths: list[Path] = field(default_factory=list)  # removed in this order
    stamps: list[Path] = field(default_factory=list)  # whose mtimes are its last use
    shared: set[str] = field(default_factory=set)  # keys of the Shared files it keeps
    lock: Path | None = None  # How.LOCKED: taken exclusively, without waiting
    dangling: bool = False  # nothing kept can use it: `kiln prune` without --all removes it
    note: str = ""
    count: int = 1  # entries it stands for (records of one layer)
    layer: tuple[str, int] | None = None  # records: the blob they name and its size


@dataclass
class Inventory:
    root: Path
    items: list[Item] = field(default_factory=list)
    shared: dict[str, Shared] = field(default_factory=dict)
    loose: dict[Kind, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))

    def size_of(self, kind: Kind) -> int:
        items = sum(i.size for i in self.items if i.kind == kind)
        shared = sum(s.size for s in self.shared.values() if s.kind == kind)
        return items + shared + self.loose[kind]

    def footprint(self, item: Item) -> int:
        """What *item* takes: its own bytes and the shared files only it keeps."""
        alone = (self.shared[k] for k in item.shared if k in self.shared)
        return item.size + sum(s.size for s in alone if s.referrers == 1)

    @property
    def total(self) -> int:
        return sum(self.size_of(kind) for kind in KINDS)

    @property
    def kept(self) -> int:
        """What the cap and ``--keep-storage`` count: all but running builds' scratch."""
        return self.total - self.size_of(Kind.SCRATCH)


# ---------------------------------------------------------------------------- the walk
