"""``RUN --mount=type=cache`` directories: kept under ``$KILN_ROOT/cache/mounts``, restored
from an imported cache when a step needs one this machine lacks, sealed into a record for
every ``--cache-to`` that carries it.

- **Identity**: a directory per :class:`MountIdentity` (id, uid, gid, mode, platform).
- **Lazy restore**: only a step that runs restores a mount, and only when the machine has
  no directory for it (the machine's own directory is newer than any import). The blobs
  are fetched in the background from the moment the step starts (beside its parent
  layers) and applied in order into a temporary directory renamed into place. A blob that
  is gone ends the chain there (an older state); a corrupt one leaves the mount empty —
  a warning either way, never a failed build.
- **Incremental export**: next to each directory, ``.<name>.state.json`` holds the chain
  it was restored from or last exported as, and the table of its entries at that moment
  (:mod:`kiln.cache.mounts.tree`). Sealing compares the directory with that table: nothing
  changed, the same chain; otherwise one new blob on top with the changed entries and
  whiteouts, or one blob with everything when the chain is long or mostly stale.
- **Bounded**: over the cap, the least recently used files are removed first (logged).
- **Secrets**: a secret's target inside a mount, and any file holding a secret's bytes,
  is never exported.

Callers hold the directory's lock (:meth:`MountStore.lock_path`) around :meth:`restore`
and while a step uses the directory; :meth:`seal` takes it itself. The lock file's mtime
is the mount's last use; ``kiln prune`` (:mod:`kiln.gc`) removes a directory and its
state together, only when it can take the lock at once, and the chain blobs a state
names only once the state is gone.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from kiln.cache.mounts.tree import Table, changes, scan, trim
from kiln.cache.records import MountIdentity, MountLayer, MountRecord, MountSource
from kiln.content import BlobLocator, BlobStore
from kiln.differ.layer import write_tree
from kiln.errors import KilnError
from kiln.oci import Descriptor, Layer, is_digest
from kiln.snapshot.unpack import unpack_stored
from kiln.state import KilnRoot, write_atomic
from kiln.units import format_size


class CacheMountSpec(Protocol):
    """What identifies a cache mount as the Dockerfile writes it."""

    @property
    def id(self) -> str: ...
    @property
    def uid(self) -> int: ...
    @property
    def gid(self) -> int: ...
    @property
    def mode(self) -> int: ...


MAX_CHAIN = 8  # blobs in a chain before it is compacted into one
LOCK_SUFFIX = ".lock"  # .<name>.lock beside the directory <name>
STATE_SUFFIX = ".state.json"  # .<name>.state.json
COMPACT_FLOOR = 1 << 20  # bytes of deltas or stale content below which size never compacts
_STATE_VERSION = 1


@dataclass
class MountReport:
    """What happened to one cache mount in this build (progress, ``--metadata-file``)."""

    identity: MountIdentity
    restored_from: str = ""
    imported_bytes: int = 0  # blob bytes applied on restore
    import_seconds: float = 0.0
    exported_bytes: int = 0  # bytes of the new blob an export adds (0: unchanged)
    export_seconds: float = 0.0
    layers: int = 0  # blobs in the exported chain
    export: str = ""  # "", unchanged, delta, compacted, full, carried

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.identity.id,
            "uid": self.identity.uid,
            "gid": self.identity.gid,
            "mode": f"{self.identity.mode:o}",
            "platform": self.identity.platform,
            "imported_bytes": self.imported_bytes,
            "import_seconds": round(self.import_seconds, 3),
            "exported_bytes": self.exported_bytes,
            "export_seconds": round(self.export_seconds, 3),
            "layers": self.layers,
        }
        if self.restored_from:
            out["restored_from"] = self.restored_from
        if self.export:
            out["export"] = self.export
        return out


@dataclass
class _State:
    chain: list[MountLayer] = field(default_factory=list)
    table: Table = field(default_factory=dict)
    excluded: set[str] = field(default_factory=set)
    updated: str = ""


class MountStore:
    def __init__(
        self,
        root: KilnRoot,
        blobs: BlobStore,
        locator: BlobLocator,
        *,
        now: Callable[[], str],
        source: MountSource | None = None,
        message: Callable[[str], None] = lambda _m: None,
        warn: Callable[[str], None] = lambda _m: None,
        secrets: Sequence[Path] = (),
    ) -> None:
        self.root = root
        self.dir = root.cache_mounts
        self.blobs = blobs
        self.locator = locator
        self.now = now
        self.source = source
        self.message = message
        self.warn = warn
        self.secrets = list(secrets)
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._fetches: dict[str, list[Future[None]]] = {}
        self._excluded: dict[str, set[str]] = {}
        self._reports: dict[str, MountReport] = {}

    # ------------------------------------------------------------------ identity
    @staticmethod
    def identity_of(mount: CacheMountSpec, platform: str) -> MountIdentity:
        """The identity of a ``RUN --mount=type=cache`` run as *platform*."""
        return MountIdentity(mount.id, mount.uid, mount.gid, mount.mode, platform)

    def directory(self, ident: MountIdentity) -> Path:
        return self.dir / ident.name

    def lock_path(self, ident: MountIdentity) -> Path:
        return self.dir / f".{ident.name}{LOCK_SUFFIX}"

    def _state_path(self, ident: MountIdentity) -> Path:
        return self.dir / f".{ident.name}{STATE_SUFFIX}"

    def _touch(self, ident: MountIdentity) -> None:
        """Mark the mount used now (its lock file's mtime; the caller holds the lock)."""
        with contextlib.suppress(OSError):
            os.utime(self.lock_path(ident))

    def _report(self, ident: MountIdentity) -> MountReport:
        with self._lock:
            return self._reports.setdefault(ident.name, MountReport(ident))

    def reports(self) -> list[MountReport]:
        with self._lock:
            return list(self._reports.values())

    # ------------------------------------------------------------------ use by steps
    def used(self, ident: MountIdentity, excluded: Iterable[str] = ()) -> None:
        """A step uses the mount; *excluded*: relative paths inside it that hold secrets."""
        self._report(ident)
        self._touch(ident)
        with self._lock:
            self._excluded.setdefault(ident.name, set()).update(excluded)

    def _imported(self, ident: MountIdentity) -> tuple[MountRecord, str] | None:
        if self.source is None:
            return None
        return self.source.mount(ident.name)

    def prefetch(self, ident: MountIdentity) -> None:
        """Start fetching the imported chain of a mount this machine lacks (a step that
        uses it is about to run)."""
        if self.directory(ident).is_dir():
            return
        found = self._imported(ident)
        if found is None:
            return
        with self._lock:
            if ident.name in self._fetches:
                return
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="mount")
            pool = self._pool
            self._fetches[ident.name] = [
                pool.submit(self.locator.fetch, m.layer.blob, check=False) for m in found[0].layers
            ]

    def restore(self, ident: MountIdentity) -> bool:
        """Make the mount's directory from the imported chain; False when none was
        imported. The caller holds the lock exclusively and the directory is missing."""
        found = self._imported(ident)
        if found is None:
            return False
        record, where = found
        self.prefetch(ident)
        with self._lock:
            fetches = self._fetches.pop(ident.name, [])
        started = time.monotonic()
        tmp = self.root.tempdir("mount-") / "dir"
        _make_root(tmp, ident)
        applied: list[MountLayer] = []
        for n, item in enumerate(record.layers):
            try:
                if n < len(fetches):
                    fetches[n].result()
                self.locator.fetch(item.layer.blob, check=False)
            except KilnError as exc:
                self.warn(f"cache mount {ident.describe()}: {exc.what}; restored the "
                          f"{len(applied)} of {len(record.layers)} blobs before it")  # fmt: skip
                break
            try:
                unpack_stored(self.blobs, item.layer, tmp, mode="apply")
            except KilnError as exc:
                self.warn(f"cache mount {ident.describe()}: blob {item.layer.digest} cannot be "
                          f"applied ({exc.what}): starting it empty")  # fmt: skip
                shutil.rmtree(tmp, ignore_errors=True)
                _make_root(tmp, ident)
                applied = []
                break
            applied.append(item)
        for future in fetches[len(applied) + 1 :]:
            future.cancel()
        state = _State(applied, scan(tmp).table, set(), record.updated)
        os.rename(tmp, self.directory(ident))
        self._write_state(ident, state)
        report = self._report(ident)
        report.restored_from = where
        report.imported_bytes = sum(m.layer.blob.size for m in applied)
        report.import_seconds = time.monotonic() - started
        size = format_size(report.imported_bytes)
        self.message(f"cache mount {ident.describe()}: restored {size} ({len(applied)} blobs) "
                     f"from {where} in {report.import_seconds:.2f} s")  # fmt: skip
        return True

    # ------------------------------------------------------------------ export
    def seal(self, ident: MountIdentity, max_size: int) -> MountRecord | None:
        """The mount's content as a record within *max_size* bytes (its directory on this
        machine, else the imported record as it was); None when there is nothing. A
        failure is a warning: the export goes on without the mount."""
        started = time.monotonic()
        try:
            with self._locked(ident):
                record = self._seal(ident, max_size)
                self._touch(ident)
        except (OSError, KilnError) as exc:
            self.warn(f"cache mount {ident.describe()} is not exported: {exc}")
            return None
        report = self._report(ident)
        report.export_seconds = time.monotonic() - started
        if record is not None:
            report.layers = len(record.layers)
            self.message(self._export_line(report, record))
        return record

    def _seal(self, ident: MountIdentity, max_size: int) -> MountRecord | None:
        host = self.directory(ident)
        report = self._report(ident)
        if not host.is_dir():
            imported = self._imported(ident)
            if imported is None:
                return None
            report.export = "carried"
            return imported[0]
        state = self._read_state(ident)
        trimmed = trim(host, max_size)
        if trimmed.files:
            total, cap, freed = (format_size(n) for n in (trimmed.total, max_size, trimmed.bytes))
            self.warn(f"cache mount {ident.describe()} holds {total}, over its cap of {cap} "
                      f"(cache-mount-max-size): removed the {trimmed.files} least recently "
                      f"used files ({freed})")  # fmt: skip
        with self._lock:
            excluded = state.excluded | self._excluded.get(ident.name, set())
        found = scan(host, excluded=excluded, secrets=self._secret_contents())
        for rel in found.left_out:
            if rel not in excluded:
                self.warn(f"cache mount {ident.describe()}: {rel} holds a secret and is not "
                          "exported")  # fmt: skip
        excluded |= set(found.left_out)  # and stays out of later exports, secret or not
        chain = state.chain if all(self._available(m.layer) for m in state.chain) else []
        if not chain and not found.table:
            return None
        size = found.content_bytes
        if chain and found.table == state.table:
            report.export = "unchanged"
            if excluded != state.excluded:
                self._write_state(ident, _State(chain, state.table, excluded, state.updated))
            return MountRecord(ident, tuple(chain), size, state.updated or self.now())
        changed, deleted = changes(state.table if chain else {}, found.table)
        new_chain: list[MountLayer]
        if chain:
            layer, content = write_tree(host, self.blobs, include=changed.__contains__,
                                        deleted=deleted)  # fmt: skip
            new_chain = [*chain, MountLayer(layer, content)]
            report.export = "delta"
            if _worth_compacting(new_chain, size):
                new_chain, report.export = [], "compacted"
        else:
            new_chain, report.export = [], "full"
        if not new_chain:
            layer, content = write_tree(host, self.blobs, include=found.table.__contains__)
            new_chain = [MountLayer(layer, content)]
        report.exported_bytes = new_chain[-1].layer.blob.size
        updated = self.now()
        self._write_state(ident, _State(new_chain, found.table, excluded, updated))
        return MountRecord(ident, tuple(new_chain), size, updated)

    def _available(self, layer: Layer) -> bool:
        return self.blobs.has(layer.digest) or bool(self.locator.providers(layer.digest))

    def _export_line(self, report: MountReport, record: MountRecord) -> str:
        what = f"cache mount {report.identity.describe()}"
        chain = f"chain of {len(record.layers)}, {format_size(record.blob_bytes)}"
        if report.export == "carried":
            return f"{what}: not used by this build, exported as imported ({chain})"
        if report.export == "unchanged":
            return f"{what}: unchanged, nothing new to upload ({chain})"
        size, took = format_size(report.exported_bytes), f"{report.export_seconds:.2f} s"
        if report.export == "delta":
            return f"{what}: exported a delta of {size} ({chain}) in {took}"
        if report.export == "compacted":
            return f"{what}: compacted into one blob of {size} in {took}"
        return f"{what}: exported {size} as a new chain in {took}"

    def _secret_contents(self) -> list[bytes]:
        out = []
        for path in self.secrets:
            with contextlib.suppress(OSError):
                data = path.read_bytes()
                if data:
                    out.append(data)
        return out

    # ------------------------------------------------------------------ state
    @contextlib.contextmanager
    def _locked(self, ident: MountIdentity) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path(ident), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _read_state(self, ident: MountIdentity) -> _State:
        """The recorded state, or an empty one (no chain: the next export is whole)."""
        try:
            raw = json.loads(self._state_path(ident).read_bytes())
            if raw.get("version") != _STATE_VERSION:
                return _State()
            chain = [_mount_layer(m) for m in raw["chain"]]
            table = {str(k): tuple(int(x) for x in v) for k, v in raw["table"].items()}
            return _State(chain, table, set(raw.get("excluded") or []),  # type: ignore[arg-type]
                          str(raw.get("updated") or ""))  # fmt: skip
        except (OSError, ValueError, KeyError, TypeError, AttributeError, OverflowError):
            return _State()

    def _write_state(self, ident: MountIdentity, state: _State) -> None:
        raw = {
            "version": _STATE_VERSION,
            "identity": ident.describe(),  # for `kiln du --verbose`
            "chain": [
                {"blob": m.layer.blob.to_json(), "diffID": m.layer.diff_id, "content": m.content}
                for m in state.chain
            ],
            "table": state.table,
            "excluded": sorted(state.excluded),
            "updated": state.updated,
        }
        write_atomic(self._state_path(ident), json.dumps(raw, separators=(",", ":")).encode())

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
            self._fetches.clear()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def state_summary(path: Path) -> tuple[list[str], str] | None:
    """The chain blobs (digests) a state file names and the mount it describes (as
    :meth:`MountIdentity.describe` says; empty in states written before it was kept), or
    None when the file is unreadable (then it names nothing: the next export is whole)."""
    try:
        raw = json.loads(path.read_bytes())
        if raw.get("version") != _STATE_VERSION:
            return None
        chain = [_mount_layer(m).layer.digest for m in raw["chain"]]
        return chain, str(raw.get("identity") or "")
    except (OSError, ValueError, KeyError, TypeError, AttributeError, OverflowError):
        return None


def _mount_layer(raw: dict[str, Any]) -> MountLayer:
    layer = Layer(Descriptor.from_json(raw["blob"]), str(raw["diffID"]))
    if not (is_digest(layer.digest) and is_digest(layer.diff_id)):
        raise ValueError("not a digest")
    return MountLayer(layer, int(raw["content"]))


def _make_root(path: Path, ident: MountIdentity) -> None:
    path.mkdir()
    os.chown(path, ident.uid, ident.gid)
    os.chmod(path, ident.mode)


def _worth_compacting(chain: list[MountLayer], live_bytes: int) -> bool:
    """A chain is rewritten as one blob when it is long, when its deltas outweigh its
    base, or when most of the content it carries has since been deleted or replaced."""
    if len(chain) > MAX_CHAIN:
        return True
    base, deltas = chain[0], chain[1:]
    delta_bytes = sum(m.layer.blob.size for m in deltas)
    if delta_bytes > max(base.layer.blob.size, COMPACT_FLOOR):
        return True
    carried = sum(m.content for m in chain)
    return carried > 2 * live_bytes + COMPACT_FLOOR
