"""Everything under ``$KILN_ROOT``, as entries that can be pruned, with sizes that add up.

A walk puts every byte under the root (see :mod:`kiln.gc.sizes` for what a byte on disk
is) in exactly one place: an :class:`Item` (something ``kiln prune`` can remove: a step
record, a snapshot, a cache mount, a download, ...), a :class:`Shared` file that items
keep (a blob several records name, a context tree), or the bytes of its kind that are
not an entry (directories, lock files, files kiln does not know). So the kinds add up to
the total, which is what ``du -sxB1 $KILN_ROOT`` says of a quiet root.

The layout, by kind:

- **step cache**: ``cache/keys/<hex>.json`` records, grouped by the layer blob they name
  (``blobs/sha256/<hex>`` and its ``blobs/diffids/<hex>``); ``cache/trees/<hex>``
  (context trees the records' descriptions name) and ``cache/slots/`` (the newest keys
  of each step position), both for explaining misses;
- **other blobs**: blobs no record and no mount state names (base-image layers, image
  configs and manifests, superseded mount chains);
- **snapshots**: ``snapshots/<hex>`` (an unpacked layer) and its ``snapshots/l/`` link, or
  ``snapshots/<hex>.erofs`` (a layer image);
- **cache mounts**: ``cache/mounts/<name>`` with ``.<name>.state.json`` and the chain
  blobs the state names;
- **sources**: ``sources/<url hex>/``, an ADD URL download;
- **contexts**: ``contexts/<hex>`` (a build-context view bound into RUN steps) and
  ``context/`` (the file-hash memo of each context directory);
- **scratch**: ``tmp/`` (the sessions of running kiln processes; a dead one's leftovers);
- **other**: everything else (directories, lock files, ``gc/``, unknown files; files
  left half-written by a crash are other items).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from kiln.cache.mounts.store import LOCK_SUFFIX, STATE_SUFFIX, state_summary
from kiln.cache.records import StepRecord
from kiln.gc.entries import How, Inventory, Item, Kind, Shared
from kiln.gc.measure import HEX32 as _HEX32
from kiln.gc.measure import HEX64 as _HEX64
from kiln.gc.measure import mount_used
from kiln.gc.sizes import Seen, SizeCache, on_disk, tree_size
from kiln.source.http import LOCK as SOURCE_LOCK
from kiln.source.http import META as SOURCE_META
from kiln.source.http import committed
from kiln.state import LEASE_GLOB, KilnRoot

JUNK_AGE = 3600 * 10**9  # ns: a temporary file this old is a crash's leftover


def take(root: KilnRoot, *, now: int, busy_since: int, parse: bool = True,
         scratch: bool = True) -> Inventory:  # fmt: skip
    """Walk *root*. *now*: a file-system time (ns, :func:`kiln.state.fs_now`) taken before
    the walk; *busy_since*: the start of the oldest build running in another process (or
    *now*): a cache mount used since is measured, not remembered. Without *parse*,
    records and states are not read (sizes only: no references, nothing dangling);
    without *scratch*, ``tmp/`` is not walked."""
    walk = _Walk(root, now, busy_since, parse, SizeCache(root.path / "gc" / "sizes.json"))
    walk.run(scratch=scratch)
    return walk.inv


class _Walk:
    def __init__(self, root: KilnRoot, now: int, busy_since: int, parse: bool,
                 sizes: SizeCache) -> None:  # fmt: skip
        self.root = root
        self.now = now
        self.busy_since = busy_since
        self.parse = parse
        self.sizes = sizes
        self.seen: Seen = set()
        self.inv = Inventory(root.path)
        self.diff_ids: dict[str, str] = {}  # blob digest → diff ID, when recorded
        self.records: dict[str, Item] = {}  # by blob digest, or file name when no layer
        self.layer_diff_ids: set[str] = set()  # diff IDs of the layers usable records name

    # ------------------------------------------------------------------ helpers
    def _stat(self, path: Path) -> os.stat_result | None:
        try:
            return path.lstat()
        except OSError:
            return None

    def _loose(self, kind: Kind, path: Path, st: os.stat_result | None = None) -> None:
        """Count *path* itself (not below it) as bytes of *kind* that are no entry."""
        st = st or self._stat(path)
        if st is not None:
            self.inv.loose[kind] += on_disk(st, self.seen)

    def _loose_tree(self, kind: Kind, path: Path) -> None:
        self.inv.loose[kind] += tree_size(path, self.seen)

    def _entries(self, directory: Path) -> Iterator[tuple[Path, os.stat_result]]:
        try:
            names = sorted(os.listdir(directory))
        except OSError:
            return
        for name in names:
            path = directory / name
            st = self._stat(path)
            if st is not None:
                yield path, st

    def _junk(self, path: Path, st: os.stat_result, kind: Kind = Kind.OTHER) -> None:
        """A file with a temporary name: being written, or (once :data:`JUNK_AGE` old)
        left half-written by a crash."""
        size = tree_size(path, self.seen) if stat.S_ISDIR(st.st_mode) else on_disk(st, self.seen)
        if st.st_mtime_ns > self.now - JUNK_AGE:
            self.inv.loose[kind] += size
            return
        self.inv.items.append(Item(kind, f"leftover {self._rel(path)}", size, st.st_mtime_ns,
                                   How.GUARDED, [path], [path], dangling=True,
                                   note="left by an interrupted write"))  # fmt: skip

    def _rel(self, path: Path) -> str:
        return os.path.relpath(path, self.root.path)

    # ------------------------------------------------------------------ the root
    def run(self, *, scratch: bool) -> None:
        root = self.root.path
        top = self._stat(root)
        if top is None:
            return
        self._loose(Kind.OTHER, root, top)
        known = {
            "blobs": self._blobs,
            "snapshots": self._snapshots,
            "cache": self._cache,
            "sources": self._sources,
            "contexts": self._context_views,
            "context": self._memos,
        }
        for path, _st in self._entries(root):
            if path.name in known:
                known[path.name](path)
            elif path.name == "tmp":
                if scratch:
                    self._tmp(path)
            elif path.name != "gc":
                self._loose_tree(Kind.OTHER, path)
        self._references()
        self.sizes.save(forget_unused=scratch)
        self._loose_tree(Kind.OTHER, root / "gc")  # last: the size memo was just written

    # ------------------------------------------------------------------ blobs
    def _blobs(self, path: Path) -> None:
        self._loose(Kind.OTHER, path)
        diff_dir = path / "diffids"
        diff_files: dict[str, tuple[Path, os.stat_result]] = {}
        for entry, st in self._entries(diff_dir) if diff_dir.is_dir() else []:
            if _HEX64.fullmatch(entry.name) and stat.S_ISREG(st.st_mode):
                diff_files[entry.name] = (entry, st)
            elif entry.name.startswith("."):
                self._junk(entry, st)
            else:
                self._loose_tree(Kind.OTHER, entry)
        for entry, st in self._entries(path):
            if entry.name == "sha256":
                self._blob_files(entry, st, diff_files)
            elif entry.name != "diffids":
                self._loose_tree(Kind.OTHER, entry)  # gc.lock, unknown files
        if diff_dir.is_dir():
            self._loose(Kind.OTHER, diff_dir)
        for name, (entry, st) in diff_files.items():  # a diff ID whose blob is gone
            self.inv.items.append(Item(Kind.OTHER, f"diff ID of gone blob {name[:12]}",
                                       on_disk(st, self.seen), st.st_mtime_ns, How.GUARDED,
                                       [entry], [entry], dangling=True))  # fmt: skip

    def _blob_files(self, path: Path, st: os.stat_result,
                    diff_files: dict[str, tuple[Path, os.stat_result]]) -> None:  # fmt: skip
        self._loose(Kind.OTHER, path, st)
        for entry, est in self._entries(path):
            name = entry.name
            if _HEX64.fullmatch(name) and stat.S_ISREG(est.st_mode):
                digest = "sha256:" + name
                paths, size = [entry], on_disk(est, self.seen)
                diff = diff_files.pop(name, None)
                if diff is not None:
                    paths.append(diff[0])
                    size += on_disk(diff[1], self.seen)
                    if self.parse:
                        with contextlib.suppress(OSError):
                            self.diff_ids[digest] = diff[0].read_text().strip()
                self.inv.shared[digest] = Shared(digest, paths, size, est.st_mtime_ns)
            elif name.startswith("."):
                self._junk(entry, est)  # .ingest-*: a download or a layer cut short
            else:
                self._loose_tree(Kind.OTHER, entry)

    # ------------------------------------------------------------------ snapshots
    def _snapshots(self, path: Path) -> None:
        self._loose(Kind.OTHER, path)
        links: dict[str, tuple[Path, os.stat_result]] = {}
        link_dir = path / "l"
        for entry, st in self._entries(link_dir) if link_dir.is_dir() else []:
            if stat.S_ISLNK(st.st_mode) and not entry.name.endswith(".tmp"):
                links[entry.name] = (entry, st)
            else:
                self._junk(entry, st)
        self._loose(Kind.OTHER, link_dir)
        for entry, st in self._entries(path):
            name = entry.name
            image = name.endswith(".erofs") and stat.S_ISREG(st.st_mode)
            hex_id = name.removesuffix(".erofs") if image else name
            if _HEX64.fullmatch(hex_id) and (image or stat.S_ISDIR(st.st_mode)):
                lock = path / f".{hex_id}.lock"
                lock_st = self._stat(lock)
                used = max(st.st_mtime_ns, lock_st.st_mtime_ns if lock_st else 0)
                size = on_disk(st, self.seen) if image else self.sizes.fixed(
                    f"snapshots/{name}", entry, st)  # fmt: skip
                item = Item(Kind.SNAPSHOTS, "sha256:" + hex_id, size, used, How.LOCKED,
                            [entry], [lock, entry], lock=lock)  # fmt: skip
                link = None if image else links.pop(name[:16], None)
                if link is not None:
                    item.paths.append(link[0])
                    item.size += on_disk(link[1], self.seen)
                self.inv.items.append(item)
            elif name != "l":  # lock files (never removed: see kiln.gc.delete), empty dirs
                self._loose_tree(Kind.OTHER, entry)
        for entry, st in links.values():  # a link whose snapshot is gone
            self.inv.items.append(Item(Kind.OTHER, f"link {entry.name}", on_disk(st, self.seen),
                                       st.st_mtime_ns, How.GUARDED, [entry], [entry],
                                       dangling=True))  # fmt: skip

    # ------------------------------------------------------------------ cache/
    def _cache(self, path: Path) -> None:
        self._loose(Kind.OTHER, path)
        for entry, _st in self._entries(path):
            if entry.name == "keys":
                self._records(entry)
            elif entry.name == "mounts":
                self._mounts(entry)
            elif entry.name == "trees":
                self._trees(entry)
            elif entry.name == "slots":
                self._slots(entry)
            else:
                self._loose_tree(Kind.OTHER, entry)

    def _records(self, path: Path) -> None:
        self._loose(Kind.OTHER, path)
        for entry, st in self._entries(path):
            name = entry.name
            if name.endswith(".json") and _HEX64.fullmatch(name[:-5]) and stat.S_ISREG(st.st_mode):
                self._record(entry, st)
            elif name.startswith("."):
                self._junk(entry, st)
            else:
                self._loose_tree(Kind.OTHER, entry)

    def _record(self, path: Path, st: os.stat_result) -> None:
        size = on_disk(st, self.seen)
        record: StepRecord | None = None
        if self.parse:
            try:
                record = StepRecord.from_json(json.loads(path.read_bytes()))
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                self.inv.items.append(Item(Kind.RECORDS, f"record {path.stem[:12]}", size,
                                           st.st_mtime_ns, How.GUARDED, [path], [path],
                                           dangling=True, note="unreadable"))  # fmt: skip
                return
        layer = record.layer if record is not None else None
        group = layer.digest if layer is not None else path.name
        item = self.records.get(group)
        if item is None:
            shown = f"layer {layer.digest}" if layer is not None else f"record {path.stem[:12]}"
            item = Item(Kind.RECORDS, shown, 0, 0, How.GUARDED, count=0)
            self.records[group] = item
            self.inv.items.append(item)
            if layer is not None:
                item.shared.add(layer.digest)
                item.layer = (layer.digest, layer.blob.size)
                self.layer_diff_ids.add(layer.diff_id)
        item.size += size
        item.count += 1
        item.last_used = max(item.last_used, st.st_mtime_ns)
        item.paths.append(path)
        item.stamps.append(path)
        if record is not None and record.about is not None and record.about.tree:
            item.shared.add("tree:" + record.about.tree)

    def _trees(self, path: Path) -> None:
        self._loose(Kind.OTHER, path)
        for entry, st in self._entries(path):
            if _HEX64.fullmatch(entry.name) and stat.S_ISREG(st.st_mode):
                key = "tree:sha256:" + entry.name
                self.inv.shared[key] = Shared(key, [entry], on_disk(st, self.seen),
                                              st.st_mtime_ns, kind=Kind.RECORDS)  # fmt: skip
            elif entry.name.startswith("."):
                self._junk(entry, st)
            else:
                self._loose_tree(Kind.OTHER, entry)

    def _slots(self, path: Path) -> None:
        self._loose(Kind.OTHER, path)
        keys_dir = path.parent / "keys"
        for entry, st in self._entries(path):
            if entry.name.endswith(".json") and stat.S_ISREG(st.st_mode):
                dangling = False
                if self.parse:
                    try:
                        keys = json.loads(entry.read_bytes())
                        dangling = not any(
                            (keys_dir / f"{k.split(':', 1)[1]}.json").exists()
                            for k in keys
                            if isinstance(k, str) and ":" in k
                        )
                    except (OSError, ValueError, TypeError, AttributeError):
                        dangling = True
                self.inv.items.append(Item(Kind.RECORDS, f"slot {entry.stem[:12]}",
                                           on_disk(st, self.seen), st.st_mtime_ns, How.GUARDED,
                                           [entry], [entry], dangling=dangling, count=0,
                                           note="step position (miss explanations)"))  # fmt: skip
            elif entry.name.startswith("."):
                self._junk(entry, st)
            else:
                self._loose_tree(Kind.OTHER, entry)

    def _mounts(self, path: Path) -> None:
        self._loose(Kind.OTHER, path)
        names: dict[str, dict[str, tuple[Path, os.stat_result]]] = {}
        for entry, st in self._entries(path):
            name = entry.name
            if _HEX32.fullmatch(name) and stat.S_ISDIR(st.st_mode):
                names.setdefault(name, {})["dir"] = (entry, st)
            elif name.startswith(".") and name.endswith(STATE_SUFFIX) and \
                    _HEX32.fullmatch(name[1 : -len(STATE_SUFFIX)]):  # fmt: skip
                names.setdefault(name[1 : -len(STATE_SUFFIX)], {})["state"] = (entry, st)
            elif name.startswith(".") and name.endswith(LOCK_SUFFIX) and \
                    _HEX32.fullmatch(name[1 : -len(LOCK_SUFFIX)]):  # fmt: skip
                names.setdefault(name[1 : -len(LOCK_SUFFIX)], {})["lock"] = (entry, st)
            elif name.startswith("."):
                self._junk(entry, st)
            else:
                self._loose_tree(Kind.OTHER, entry)
        for name, parts in names.items():
            lock = path / f".{name}{LOCK_SUFFIX}"
            if "lock" in parts:
                self._loose(Kind.OTHER, *parts["lock"])  # never removed: see kiln.gc.delete
            if "dir" not in parts and "state" not in parts:
                continue
            stamps = [p for p, _ in parts.values()]
            used = max(st.st_mtime_ns for _, st in parts.values())
            item = Item(Kind.MOUNTS, name, 0, used, How.LOCKED, stamps=stamps, lock=lock)
            if "dir" in parts:
                entry, st = parts["dir"]
                used = max(used, mount_used(path, name, st))
                quiet = used < self.busy_since
                item.size += self.sizes.changing(f"cache/mounts/{name}", entry, st, used,
                                                 self.now, quiet=quiet)  # fmt: skip
                item.paths.append(entry)
            else:
                item.dangling, item.note = True, "state of a directory that is gone"
            if "state" in parts:
                entry, st = parts["state"]
                item.size += on_disk(st, self.seen)
                item.paths.append(entry)
                summary = state_summary(entry) if self.parse else None
                if summary is not None:
                    item.shared.update(summary[0])
                    item.name = summary[1] or name
            self.inv.items.append(item)

    # ------------------------------------------------------------------ sources
    def _sources(self, path: Path) -> None:
        self._loose(Kind.OTHER, path)
        for entry, st in self._entries(path):
            if not (_HEX64.fullmatch(entry.name) and stat.S_ISDIR(st.st_mode)):
                self._loose_tree(Kind.OTHER, entry)
                continue
            self._loose(Kind.OTHER, entry, st)  # the directory and its lock stay
            item = Item(Kind.SOURCES, f"url {entry.name[:12]}", 0, 0, How.LOCKED,
                        lock=entry / SOURCE_LOCK)  # fmt: skip
            meta = entry / SOURCE_META
            for part, pst in self._entries(entry):
                if part.name == SOURCE_LOCK:
                    self._loose(Kind.OTHER, part, pst)
                    continue
                item.size += tree_size(part, self.seen)
                item.last_used = max(item.last_used, pst.st_mtime_ns)
                item.paths.append(part)
            if not item.paths:
                continue
            item.paths.sort(key=lambda p: p != meta)  # meta.json first: the download is gone
            item.stamps = list(item.paths)
            if self.parse and not committed(entry):
                item.dangling, item.note = True, "no complete download"
            self.inv.items.append(item)

    # ------------------------------------------------------------------ contexts
    def _context_views(self, path: Path) -> None:
        self._loose(Kind.OTHER, path)
        for entry, st in self._entries(path):
            if _HEX64.fullmatch(entry.name) and stat.S_ISDIR(st.st_mode):
                size = self.sizes.fixed(f"contexts/{entry.name}", entry, st)
                self.inv.items.append(Item(Kind.CONTEXTS, f"context view {entry.name[:12]}",
                                           size, st.st_mtime_ns, How.QUIET, [entry],
                                           [entry]))  # fmt: skip
            else:
                self._loose_tree(Kind.OTHER, entry)

    def _memos(self, path: Path) -> None:
        self._loose(Kind.OTHER, path)
        for entry, st in self._entries(path):
            if entry.name.startswith("context-") and stat.S_ISREG(st.st_mode):
                self.inv.items.append(Item(Kind.CONTEXTS, f"file-hash memo {entry.stem[8:20]}",
                                           on_disk(st, self.seen), st.st_mtime_ns, How.QUIET,
                                           [entry], [entry]))  # fmt: skip
            elif entry.name.startswith("."):
                self._junk(entry, st)
            else:
                self._loose_tree(Kind.OTHER, entry)

    # ------------------------------------------------------------------ tmp
    def _tmp(self, path: Path) -> None:
        self._loose(Kind.SCRATCH, path)
        leases = {p.name for p in path.glob(LEASE_GLOB)}
        for entry, st in self._entries(path):
            name = entry.name
            if name.startswith("session-") and name.endswith(".lock"):
                session = entry.with_suffix("")
                try:
                    with open(entry, "a") as fh:
                        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        live = False
                except BlockingIOError:
                    live = True
                except OSError:
                    continue
                size = on_disk(st, self.seen) + tree_size(session, self.seen)
                if live:
                    self.inv.loose[Kind.SCRATCH] += size
                else:
                    self.inv.items.append(Item(Kind.SCRATCH, f"dead {session.name}", size,
                                               st.st_mtime_ns, How.SWEEP, [session, entry],
                                               [entry], dangling=True))  # fmt: skip
            elif name.startswith("session-") and (path / f"{name}.lock").exists():
                continue  # counted with its lock
            elif name in leases:
                self._loose(Kind.SCRATCH, entry, st)  # a dead one is removed by live_leases
            elif name.startswith(".build-"):
                self._junk(entry, st, Kind.SCRATCH)  # a lease that never took its name
            else:
                self._loose_tree(Kind.SCRATCH, entry)

    # ------------------------------------------------------------------ references
    def _references(self) -> None:
        """Link items to the shared files they name; blobs no one names become items."""
        shared = self.inv.shared
        for item in self.inv.items:
            for key in list(item.shared):
                if key not in shared:
                    item.shared.discard(key)
                    continue
                shared[key].referrers += 1
                if item.kind == Kind.RECORDS:
                    shared[key].kind = Kind.RECORDS
                elif item.kind == Kind.MOUNTS and shared[key].kind != Kind.RECORDS:
                    shared[key].kind = Kind.MOUNTS
            if item.layer is not None:  # a record whose blob is unusable is already a miss
                blob = shared.get(item.layer[0])
                if blob is None:
                    item.dangling, item.note = True, "its blob is gone"
                elif not _size_matches(blob, item.layer[1]):
                    item.dangling, item.note = True, "its blob has the wrong size"
        snapshots = {i.name for i in self.inv.items if i.kind == Kind.SNAPSHOTS}
        blob_diff_ids = set()
        for entry in list(shared.values()):
            if entry.key.startswith("tree:"):
                if entry.referrers == 0:
                    entry.referrers = 1
                    self.inv.items.append(Item(Kind.RECORDS, f"tree {entry.key[12:24]}", 0,
                                               entry.last_used, How.GUARDED, [], entry.paths,
                                               {entry.key}, dangling=self.parse, count=0,
                                               note="context tree no record names"))  # fmt: skip
                continue
            diff_id = self.diff_ids.get(entry.key, "")
            blob_diff_ids.add(diff_id)
            if entry.referrers == 0:
                entry.referrers = 1
                unpacked = diff_id in snapshots
                self.inv.items.append(Item(
                    Kind.BLOBS, f"blob {entry.key}", 0, entry.last_used, How.GUARDED, [],
                    [entry.paths[0]], {entry.key}, dangling=self.parse and not unpacked,
                    note="unpacked" if unpacked else ""))  # fmt: skip
        if not self.parse:
            return
        for item in self.inv.items:  # a snapshot no record names and no blob can remake
            if item.kind == Kind.SNAPSHOTS and item.name not in self.layer_diff_ids \
                    and item.name not in blob_diff_ids:  # fmt: skip
                item.dangling, item.note = True, "no record or blob has its layer"


def _size_matches(blob: Shared, size: int) -> bool:
    try:
        return blob.paths[0].stat().st_size == size
    except OSError:
        return False
