"""Where kiln keeps its state: the layout of ``$KILN_ROOT``.

An empty KILN_ROOT is a fresh machine. Everything under it is written atomically
(temporary name in the same directory, then ``os.replace``) so that a crash never leaves
a half-written entry that could be mistaken for a complete one.
"""

from __future__ import annotations

import atexit
import fcntl
import os
import secrets
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO


def default_root() -> Path:
    env = os.environ.get("KILN_ROOT")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/kiln")
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "kiln"


@dataclass(frozen=True, slots=True)
class KilnRoot:
    path: Path

    @property
    def blobs(self) -> Path:
        return self.path / "blobs" / "sha256"

    @property
    def snapshots(self) -> Path:
        return self.path / "snapshots"

    @property
    def cache_keys(self) -> Path:
        return self.path / "cache" / "keys"

    @property
    def cache_mounts(self) -> Path:
        return self.path / "cache" / "mounts"

    @property
    def tmp(self) -> Path:
        return self.path / "tmp"

    @property
    def sources(self) -> Path:
        """Downloaded ADD sources, keyed by URL digest."""
        return self.path / "sources"

    @property
    def gc_lock(self) -> Path:
        """The lock between users of stored records and blobs and the garbage collector
        (:class:`UseLock`; beside the blobs, see ``kiln.content.BlobStore.guard``)."""
        return self.blobs.parent / "gc.lock"

    def ensure(self) -> KilnRoot:
        for p in (self.blobs, self.snapshots, self.cache_keys, self.cache_mounts, self.tmp):
            p.mkdir(parents=True, exist_ok=True)
        return self

    def tempdir(self, prefix: str) -> Path:
        """A scratch directory of this process (see :func:`sweep_stale_sessions`)."""
        return Path(tempfile.mkdtemp(prefix=prefix, dir=_session_dir(self.tmp)))


_SESSIONS: dict[Path, tuple[Path, IO[str]]] = {}

#: where the OCI runtime (runc, crun) keeps the state of kiln's containers (``--root``)
RUNTIME_ROOT = Path("/run/kiln/runtime")


def _session_dir(tmp: Path) -> Path:
    """This process's directory under ``tmp``, held by an exclusive lock while it lives."""
    key = tmp.absolute()
    if key not in _SESSIONS:
        tmp.mkdir(parents=True, exist_ok=True)
        # the lock is taken before the directory exists, so a sweep never sees it unlocked
        name = f"session-{os.getpid()}-{secrets.token_hex(6)}"
        lock = open(tmp / f"{name}.lock", "w")  # noqa: SIM115 - held open
        fcntl.flock(lock, fcntl.LOCK_EX)
        path = tmp / name
        path.mkdir()
        _SESSIONS[key] = (path, lock)
        atexit.register(_end_session, path, lock)
    return _SESSIONS[key][0]


def _end_session(path: Path, lock: IO[str]) -> None:
    shutil.rmtree(path, ignore_errors=True)
    Path(lock.name).unlink(missing_ok=True)
    lock.close()


def sweep_stale_sessions(tmp: Path) -> int:
    """Remove what killed kiln processes left behind (containers, mounts, scratch files).

    A session whose lock can be taken has no live owner: its runtime containers (named
    with :func:`container_prefix`) are killed and deleted, anything mounted below it is
    unmounted, then it is deleted. Returns how many sessions were swept.
    """
    swept = 0
    live_leases(tmp)  # and the leases of dead builds
    for lock_path in tmp.glob("session-*.lock") if tmp.is_dir() else []:
        session = lock_path.with_suffix("")
        try:
            with open(lock_path, "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                _delete_containers(_prefix_of(session.name))
                _unmount_below(session)
                shutil.rmtree(session, ignore_errors=True)
                lock_path.unlink(missing_ok=True)
                swept += 1
        except BlockingIOError:
            continue  # a live kiln process owns it
    return swept


def container_prefix(tmp: Path) -> str:
    """How this process's runtime containers are named (``kiln-<session>-…``), so that
    the sweep of its session, once it is dead, finds them."""
    return _prefix_of(_session_dir(tmp).name)


def _prefix_of(session_name: str) -> str:
    return "kiln-" + session_name.removeprefix("session-") + "-"


def _delete_containers(prefix: str) -> None:
    """``delete --force`` (kill, then remove) every container under :data:`RUNTIME_ROOT`
    named *prefix*…, with the runtime whose state it is (runc: ``state.json``)."""
    try:
        names = sorted(e.name for e in RUNTIME_ROOT.iterdir() if e.name.startswith(prefix))
    except OSError:
        return
    for name in names:
        runtime = "runc" if (RUNTIME_ROOT / name / "state.json").exists() else "crun"
        binary = shutil.which(runtime) or shutil.which(runtime, path="/usr/sbin:/sbin")
        if binary is None:
            continue
        root = [binary, "--root", str(RUNTIME_ROOT)]
        subprocess.run([*root, "delete", "--force", name], capture_output=True)
        known = subprocess.run([*root, "state", name], capture_output=True).returncode == 0
        if not known:  # a creation cut short (runc: no state.json yet): only a directory
            shutil.rmtree(RUNTIME_ROOT / name, ignore_errors=True)


def _unmount_below(path: Path) -> None:
    prefix = str(path.absolute()) + "/"
    try:
        mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    except OSError:
        return
    for target in sorted((m for m in mounts if m.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "-l", target], capture_output=True)


# ---------------------------------------------------------------------- garbage collection
# What `kiln prune` and the automatic cap (kiln.gc) need from every kiln process: builds
# are visible while they run (leases), and marking a record or blob used is atomic with
# respect to the collector's check-and-delete (the use lock).

LEASE_GLOB = "build-*.lock"


@dataclass(frozen=True, slots=True)
class Lease:
    path: Path
    start: int  # ns, a file-system time


@contextmanager
def build_lease(tmp: Path) -> Iterator[Lease]:
    """Hold a lease for one build: ``tmp/build-*.lock``, locked while the build runs.

    Its start is a file-system time (ns) on the clock that stamps everything the build
    touches: the collector leaves whatever was used at or after the start of the oldest
    live lease (:func:`live_leases`). The file is locked before it takes its name, so a
    lease seen unlocked is always a dead one."""
    tmp.mkdir(parents=True, exist_ok=True)
    token = f"build-{os.getpid()}-{secrets.token_hex(6)}"
    staging = tmp / f".{token}.lock"
    with open(staging, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        final = tmp / f"{token}.lock"
        os.replace(staging, final)
        try:
            yield Lease(final, os.fstat(fh.fileno()).st_mtime_ns)
        finally:
            with suppress(FileNotFoundError):
                final.unlink()


def live_leases(tmp: Path) -> list[Lease]:
    """The builds running now; the leases of dead ones are removed."""
    found = []
    # a staging lease (".build-*.lock") is held by a build about to name it
    paths = [*tmp.glob(LEASE_GLOB), *tmp.glob("." + LEASE_GLOB)] if tmp.is_dir() else []
    for path in sorted(paths):
        try:
            with open(path, "a") as fh:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:  # a live build holds it
                    found.append(Lease(path, os.fstat(fh.fileno()).st_mtime_ns))
                    continue
                path.unlink(missing_ok=True)  # its build is gone
        except OSError:
            continue
    return found


def fs_now(directory: Path) -> int:
    """Now (ns), as the file system of *directory* stamps files (its clock and
    granularity, which can lag ``time.time()``): a marker file is touched and read."""
    directory.mkdir(parents=True, exist_ok=True)
    marker = directory / ".now"
    with open(marker, "a"):
        os.utime(marker)
    return marker.stat().st_mtime_ns


class UseLock:
    """The lock between users of stored state and the garbage collector.

    A build holds it *shared* for an instant while it marks a record or a blob used
    (touches it) and checks that it is there; the collector holds it *exclusive* while it
    checks an entry's last use and deletes it. So either the entry was deleted first (the
    build sees it missing: a miss, a fetch) or the collector sees the new last use and
    keeps it. One lock per process and path: threads share one shared hold (``flock``
    locks belong to open files, so a second open would be a lock of its own)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._mutex = threading.Lock()
        self._holders = 0
        self._fh: IO[str] | None = None

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._mutex:
            if self._holders == 0:
                fh = open(self.path, "a")  # noqa: SIM115 - held while there are holders
                try:
                    fcntl.flock(fh, fcntl.LOCK_SH)  # waits only for a collector's instant
                except BaseException:
                    fh.close()
                    raise
                self._fh = fh
            self._holders += 1
        try:
            yield
        finally:
            with self._mutex:
                self._holders -= 1
                if self._holders == 0 and self._fh is not None:
                    self._fh.close()  # releases the lock
                    self._fh = None

    def exclusive(self, *, wait: bool = True) -> AbstractContextManager[bool]:
        """Hold it exclusively; without *wait*, yields False (not held) when it is busy."""
        return exclusive_lock(self.path, wait=wait)


@contextmanager
def exclusive_lock(path: Path, *, wait: bool = True) -> Iterator[bool]:
    """An exclusive flock on *path*; without *wait*, yields False (not held) when busy."""
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True


_USE_LOCKS: dict[Path, UseLock] = {}
_USE_LOCKS_GUARD = threading.Lock()


def use_lock(path: Path) -> UseLock:
    """This process's :class:`UseLock` of the lock file *path*."""
    key = path.absolute()
    with _USE_LOCKS_GUARD:
        lock = _USE_LOCKS.get(key)
        if lock is None:
            lock = _USE_LOCKS[key] = UseLock(key)
        return lock


@contextmanager
def atomic_writer(target: Path, mode: str = "wb", *, durable: bool = True) -> Iterator[IO[bytes]]:
    """Write *target* through a temporary file that replaces it only on success (synced to
    disk first unless not *durable*: for what a crash may lose, never half-write)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_atomic(target: Path, data: bytes, *, durable: bool = True) -> None:
    with atomic_writer(target, durable=durable) as fh:
        fh.write(data)


def fsync_dir(path: Path) -> None:
    """Make the entries of directory *path* (a rename into it) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
