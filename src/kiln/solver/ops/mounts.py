"""``RUN --mount`` made real: cache directories, bind sources, tmpfs, secrets.

- cache: a directory per identity (id, uid, gid, mode, platform) kept by
  :class:`kiln.cache.mounts.store.MountStore` between builds (its content is never part
  of a key). ``sharing=shared`` lets steps use it at once, ``locked`` serialises them
  (across kiln processes too, with ``flock``), ``private`` gives a step that finds it busy
  a fresh directory of its own (never exported). A directory this machine lacks is
  restored from an imported cache, else seeded from ``from=<stage>`` (``source=`` inside
  it) when given, else made empty. Secret targets inside it are never exported.
- bind of the build context: a view holding only what ``.dockerignore`` lets through
  (what the step's cache key covers), made once per content digest; ``rw`` binds get a
  private copy whose writes are dropped after the step, as in BuildKit.
- secret: a file at the target, or (``env=``) an environment variable; never in a key.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import posixpath
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

from kiln.cache.mounts.store import MountStore
from kiln.errors import ContextError, KilnError
from kiln.executor.paths import resolve_in_root
from kiln.executor.spec import HostMount, RunSpec, TmpfsSpec
from kiln.frontend.base import (
    BindMount,
    CacheMount,
    ExecOp,
    ImageSource,
    SecretMount,
    TmpfsMount,
)
from kiln.image import env_with
from kiln.oci import digest_hex
from kiln.solver.ops import file as fileops
from kiln.source.context import BuildContext

# mounts a chain of layers read-only and yields its root
ChainMounter = Callable[[ImageSource | int], contextlib.AbstractContextManager[Path]]


class RunMounts:
    def __init__(
        self,
        store: MountStore,
        context: BuildContext,
        mount_source: ChainMounter,
        secrets: dict[str, str],
    ) -> None:
        self.store = store
        self.root = store.root
        self.context = context
        self.mount_source = mount_source
        self.secrets = secrets

    def prepare(
        self, op: ExecOp, spec: RunSpec, stack: contextlib.ExitStack, scratch: Path
    ) -> None:
        """Add the step's mounts (and secret env vars) to *spec*; undone by *stack*."""
        for n, mount in enumerate(op.mounts):
            if isinstance(mount, TmpfsMount):
                spec.tmpfs.append(TmpfsSpec(mount.target, mount.size))
            elif isinstance(mount, CacheMount):
                secrets = [m.target for m in op.mounts if isinstance(m, SecretMount) and m.target]
                secret_paths = _inside(mount.target, secrets)
                private = scratch / f"cache-{n}"
                host = stack.enter_context(self._cache(mount, op.platform, private, secret_paths))
                spec.binds.append(host)
            elif isinstance(mount, BindMount):
                spec.binds.append(stack.enter_context(self._bind(mount, scratch / f"bind-{n}")))
            elif isinstance(mount, SecretMount):
                self._secret(mount, spec, scratch / f"secret-{n}")

    # ------------------------------------------------------------------ cache
    def prefetch(self, op: ExecOp) -> None:
        """Start fetching the imported cache mounts *op* will need (before its parent
        layers are unpacked, so both downloads run at once)."""
        for mount in op.mounts:
            if isinstance(mount, CacheMount):
                self.store.prefetch(self.store.identity_of(mount, op.platform))

    @contextlib.contextmanager
    def _cache(self, mount: CacheMount, platform: str, private_dir: Path,
               secret_paths: list[str]) -> Iterator[HostMount]:  # fmt: skip
        ident = self.store.identity_of(mount, platform)
        host = self.store.directory(ident)
        host.parent.mkdir(parents=True, exist_ok=True)
        with open(self.store.lock_path(ident), "a") as lock:
            if mount.sharing == "private":
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:  # in use: this step gets a directory of its own
                    private_dir.mkdir()
                    os.chmod(private_dir, mount.mode)
                    os.chown(private_dir, mount.uid, mount.gid)
                    yield HostMount(private_dir, mount.target, readonly=mount.readonly)
                    return
            else:
                fcntl.flock(lock, fcntl.LOCK_EX)  # creation and seeding happen once
            if not host.is_dir() and not self.store.restore(ident):
                self._create_cache(mount, host)
            self.store.used(ident, secret_paths)
            if mount.sharing == "shared":
                fcntl.flock(lock, fcntl.LOCK_SH)  # others may use it at the same time
            yield HostMount(host, mount.target, readonly=mount.readonly)

    def _create_cache(self, mount: CacheMount, host: Path) -> None:
        tmp = self.root.tempdir("cachemount-") / "dir"
        if mount.from_stage is not None:
            with self.mount_source(mount.from_stage) as src_root:
                source = resolve_in_root(src_root, mount.source or "/")
                if not source.is_dir():
                    raise ContextError(f"cache mount source {mount.source!r} is not a directory")
                _copy_tree(source, tmp)
        else:
            tmp.mkdir()
            os.chmod(tmp, mount.mode)
            os.chown(tmp, mount.uid, mount.gid)
        os.rename(tmp, host)

    # ------------------------------------------------------------------ bind
    @contextlib.contextmanager
    def _bind(self, mount: BindMount, rw_copy: Path) -> Iterator[HostMount]:
        with contextlib.ExitStack() as stack:
            if mount.from_stage is None and mount.from_image is None:
                source = self._context_view(mount)
            else:
                origin = ImageSource(mount.from_image) if mount.from_image else mount.from_stage
                assert origin is not None
                src_root = stack.enter_context(self.mount_source(origin))
                source = resolve_in_root(src_root, mount.source)
                if not os.path.lexists(source):
                    raise ContextError(f"bind mount source {mount.source!r} not found")
            if mount.readwrite:  # writes are discarded after the step, as in BuildKit
                _copy_tree(source, rw_copy)
                source = rw_copy
            yield HostMount(source, mount.target, readonly=not mount.readwrite)

    def _context_view(self, mount: BindMount) -> Path:
        """The bound part of the context, as ``.dockerignore`` filters it, made once per
        content digest under ``$KILN_ROOT/contexts``."""
        rel = mount.source.strip("/") or "."
        final = self.root.path / "contexts" / digest_hex(mount.context_digest)
        if not final.is_dir():
            matches = self.context.select([rel])
            if len(matches) != 1:
                raise ContextError(f"bind mount source {mount.source!r} names no single path")
            tmp = self.root.tempdir("context-view-")
            options = fileops.CopyOptions(None, None, keep_owner=False, extract_archives=False)
            if matches[0].is_dir:
                fileops.copy_sources(tmp, self.context, matches, "/view/", options)
            else:
                fileops.copy_sources(tmp, self.context, matches, "/view", options)
            final.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(OSError):  # another build made it first: fine
                os.rename(tmp, final)
        return final / "view"

    # ------------------------------------------------------------------ secret
    def _secret(self, mount: SecretMount, spec: RunSpec, host: Path) -> None:
        path = self.secrets.get(mount.id)
        if path is None:
            if mount.required:
                raise KilnError(
                    f"secret {mount.id} is required but was not provided",
                    hint=f"pass it with --secret id={mount.id},src=FILE",
                )
            return
        if mount.env:
            value = Path(path).read_text().rstrip("\n")
            spec.env = env_with(spec.env, [f"{mount.env}={value}"], replace=True)
        if mount.target:
            shutil.copyfile(path, host)
            os.chown(host, mount.uid, mount.gid)
            os.chmod(host, mount.mode)
            spec.binds.append(HostMount(host, mount.target, readonly=True))


def _inside(target: str, paths: list[str]) -> list[str]:
    """*paths* that lie inside the directory *target*, relative to it."""
    base = posixpath.normpath("/" + target)
    out = []
    for path in paths:
        norm = posixpath.normpath("/" + path)
        if norm != base and norm.startswith(base.rstrip("/") + "/"):
            out.append(norm[len(base.rstrip("/")) + 1 :])
    return out


def _copy_tree(source: Path, dest: Path) -> None:
    proc = subprocess.run(["cp", "-a", str(source), str(dest)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise KilnError(f"cannot copy {source}: {proc.stderr.strip()}")
