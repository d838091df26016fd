"""Running one step that missed the cache: mount, run the op, turn the upper dir into a layer."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from kiln.content import BlobLocator, BlobStore
from kiln.differ.layer import write_layer
from kiln.errors import ContextError, KilnError
from kiln.executor import fileops
from kiln.executor.paths import resolve_in_root
from kiln.executor.runc import OutputSink, RuncExecutor
from kiln.executor.spec import HostMount, RunSpec, TmpfsSpec, host_files
from kiln.executor.users import Identity, resolve_user
from kiln.frontend.base import (
    BindMount,
    CacheMount,
    ContextSource,
    CopyOp,
    ExecOp,
    ImageBase,
    ImageSource,
    InlineSource,
    MkdirOp,
    SecretMount,
    StageSource,
    Step,
    TmpfsMount,
    UrlSource,
)
from kiln.frontend.context import BuildContext
from kiln.frontend.dockerignore import IgnoreMatcher
from kiln.oci import Layer
from kiln.snapshot.snapshots import SnapshotStore
from kiln.solver.types import SolveOptions, StageResult
from kiln.solver.urls import downloaded
from kiln.state import KilnRoot

DEFAULT_PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class StepRunner:
    def __init__(
        self,
        root: KilnRoot,
        blobs: BlobStore,
        locator: BlobLocator,
        snapshots: SnapshotStore,
        executor: RuncExecutor,
        context: BuildContext,
        options: SolveOptions,
    ) -> None:
        self.root = root
        self.blobs = blobs
        self.locator = locator
        self.snapshots = snapshots
        self.executor = executor
        self.context = context
        self.options = options
        self.stage_result: Callable[[int], StageResult] = _no_stages
        self._mount_locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    # ------------------------------------------------------------------ helpers
    def fetch(self, layer: Layer) -> None:
        self.locator.fetch(layer.blob)

    @staticmethod
    def image_layers(image: ImageBase) -> list[Layer]:
        diff_ids = image.config.diff_ids
        if len(diff_ids) != len(image.layers):
            raise KilnError(
                f"image {image.ref} is inconsistent: {len(image.layers)} layers but "
                f"{len(diff_ids)} diff IDs in its config"
            )
        return [Layer(d, diff) for d, diff in zip(image.layers, diff_ids, strict=True)]

    def _chain_of(self, source: StageSource | ImageSource | int) -> list[Layer]:
        if isinstance(source, ImageSource):
            return self.image_layers(source.image)
        index = source.stage if isinstance(source, StageSource) else source
        return list(self.stage_result(index).layers)

    # ------------------------------------------------------------------ execution
    def execute(self, step: Step, chain: list[Layer], output: OutputSink) -> Layer | None:
        scratch = self.root.tempdir("step-")
        upper = scratch / "upper"
        upper.mkdir()
        try:
            with self.snapshots.mounted(chain, self.fetch, upper=upper) as rootfs:
                op = step.op
                if isinstance(op, ExecOp):
                    self._exec(op, rootfs, output, step)
                elif isinstance(op, CopyOp):
                    self._copy(op, rootfs)
                else:
                    assert isinstance(op, MkdirOp)
                    fileops.mkdir_p(rootfs, op.path, file_owner(rootfs, op.user))
            layer = write_layer(
                upper,
                self.blobs,
                compression=self.options.compression,
                level=self.options.compression_level,
                source_date_epoch=self.options.source_date_epoch,
            )
            if layer is not None:
                self.snapshots.adopt(upper, layer.diff_id)
            return layer
        except OSError as exc:
            raise KilnError(f"{step.text}: {exc}") from exc
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    # ------------------------------------------------------------------ RUN
    def _exec(self, op: ExecOp, rootfs: Path, output: OutputSink, step: Step) -> None:
        identity = resolve_user(rootfs, op.user)
        if not resolve_in_root(rootfs, op.workdir).is_dir():
            fileops.mkdir_p(rootfs, op.workdir, Identity(0, 0))
        env = list(op.env)
        if not any(e.startswith("PATH=") for e in env):
            env.insert(0, DEFAULT_PATH_ENV)
        spec = RunSpec(rootfs, list(op.args), env, op.workdir, identity, op.network)
        spec.binds.extend(host_files())
        with contextlib.ExitStack() as stack:
            scratch = self.root.tempdir("run-")
            stack.callback(shutil.rmtree, scratch, True)
            for path, content, mode in op.files:
                host = scratch / hashlib.sha256(path.encode()).hexdigest()[:16]
                host.write_text(content)
                host.chmod(mode)
                spec.binds.append(HostMount(host, path, readonly=True))
            for mount in op.mounts:
                if isinstance(mount, TmpfsMount):
                    spec.tmpfs.append(TmpfsSpec(mount.target, mount.size))
                elif isinstance(mount, CacheMount):
                    spec.binds.append(stack.enter_context(self._cache_mount(mount)))
                elif isinstance(mount, BindMount):
                    spec.binds.append(stack.enter_context(self._bind_mount(mount, scratch)))
                elif isinstance(mount, SecretMount):
                    secret = self._secret(mount, scratch)
                    if secret is not None:
                        spec.binds.append(secret)
            self.executor.run(spec, output, description=f"[{step.label}]")

    @contextlib.contextmanager
    def _cache_mount(self, mount: CacheMount) -> Iterator[HostMount]:
        name = hashlib.sha256(mount.id.encode()).hexdigest()[:32]
        host = self.root.cache_mounts / name
        if not host.is_dir():
            tmp = self.root.tempdir("cachemount-")
            os.chmod(tmp, mount.mode)
            os.chown(tmp, mount.uid, mount.gid)
            try:
                os.rename(tmp, host)
            except OSError:
                shutil.rmtree(tmp, ignore_errors=True)
        lock: contextlib.AbstractContextManager[object] = contextlib.nullcontext()
        if mount.sharing == "locked":
            with self._guard:
                lock = self._mount_locks.setdefault(name, threading.Lock())
        with lock:
            yield HostMount(host, mount.target, readonly=mount.readonly)

    @contextlib.contextmanager
    def _bind_mount(self, mount: BindMount, scratch: Path) -> Iterator[HostMount]:
        if mount.from_stage is None and mount.from_image is None:
            source = resolve_in_root(self.context.root, mount.source)
            if not os.path.lexists(source):
                raise ContextError(f"bind mount source {mount.source!r} not found in the context")
            if mount.readwrite:
                copy = scratch / "rwbind"
                _copy_tree(source, copy)
                source = copy
            yield HostMount(source, mount.target, readonly=not mount.readwrite)
            return
        origin: ImageSource | int
        if mount.from_image is not None:
            origin = ImageSource(mount.from_image)
        else:
            assert mount.from_stage is not None
            origin = mount.from_stage
        chain = self._chain_of(origin)
        with self.snapshots.mounted(chain, self.fetch) as src_root:
            source = resolve_in_root(src_root, mount.source)
            if not os.path.lexists(source):
                raise KilnError(f"bind mount source {mount.source!r} not found")
            if mount.readwrite:  # writes are discarded after the step, as in BuildKit
                copy = scratch / "rwbind"
                _copy_tree(source, copy)
                source = copy
            yield HostMount(source, mount.target, readonly=not mount.readwrite)

    def _secret(self, mount: SecretMount, scratch: Path) -> HostMount | None:
        secrets = dict(self.options.secrets)
        path = secrets.get(mount.id)
        if path is None:
            if mount.required:
                raise KilnError(
                    f"secret {mount.id} is required but was not provided",
                    hint=f"pass it with --secret id={mount.id},src=FILE",
                )
            return None
        host = scratch / ("secret-" + hashlib.sha256(mount.id.encode()).hexdigest()[:16])
        shutil.copyfile(path, host)
        os.chown(host, mount.uid, mount.gid)
        os.chmod(host, mount.mode)
        return HostMount(host, mount.target, readonly=True)

    # ------------------------------------------------------------------ COPY / ADD
    def _copy(self, op: CopyOp, rootfs: Path) -> None:
        options = fileops.CopyOptions(
            owner=file_owner(rootfs, op.chown) if op.chown else None,
            chmod=int(op.chmod, 8) if op.chmod else None,
            keep_owner=isinstance(op.source, (StageSource, ImageSource)),
            extract_archives=op.add,
        )
        source = op.source
        if isinstance(source, ContextSource):
            matches = self.context.select(list(op.srcs))
            fileops.copy_sources(rootfs, self.context, matches, op.dest, options)
        elif isinstance(source, (StageSource, ImageSource)):
            with self.snapshots.mounted(self._chain_of(source), self.fetch) as src_root:
                src = BuildContext(src_root, IgnoreMatcher([]))
                matches = src.select(list(op.srcs))
                fileops.copy_sources(rootfs, src, matches, op.dest, options)
        elif isinstance(source, InlineSource):
            fileops.write_inline(rootfs, op.dest, source.files, options, many=len(source.files) > 1)
        else:
            assert isinstance(source, UrlSource)
            download = downloaded(self.root, source.url, source.digest)
            fileops.place_download(
                rootfs, op.dest, download.path, download.filename, download.mtime, options
            )


def file_owner(rootfs: Path, spec: str) -> Identity:
    """The owner BuildKit's file operations give for ``--chown=SPEC`` (and for WORKDIR
    under ``USER SPEC``): a name without a group takes its passwd group, but a numeric
    user without a group takes the same number as group, passwd entry or not (unlike a
    RUN step's user, whose group comes from passwd)."""
    if not spec:
        return Identity(0, 0)
    user, _, group = spec.partition(":")
    if user.isdigit() and not group:
        return Identity(int(user), int(user))
    found = resolve_user(rootfs, spec, what="user")
    return Identity(found.uid, found.gid)


def _copy_tree(source: Path, dest: Path) -> None:
    proc = subprocess.run(["cp", "-a", str(source), str(dest)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise KilnError(f"cannot copy {source}: {proc.stderr.strip()}")


def _no_stages(index: int) -> StageResult:
    raise KilnError(f"stage {index} is not available here")
