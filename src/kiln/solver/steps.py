"""Running one step that missed the cache: mount, run the op, turn the upper dir into a layer."""

from __future__ import annotations

import contextlib
import hashlib
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from kiln.content import BlobLocator, BlobStore
from kiln.differ.layer import write_layer
from kiln.errors import ContextError, KilnError
from kiln.executor.base import Executor, OutputSink
from kiln.executor.paths import resolve_in_root
from kiln.executor.spec import HostMount, RunSpec, host_files
from kiln.executor.users import Identity, resolve_user
from kiln.frontend.base import (
    ContextSource,
    CopyOp,
    ExecOp,
    ImageSource,
    InlineSource,
    MkdirOp,
    StageSource,
    Step,
    UrlSource,
)
from kiln.image import env_with
from kiln.oci import Layer
from kiln.snapshot.snapshots import SnapshotStore
from kiln.solver.ops import file as fileops
from kiln.solver.ops.mounts import RunMounts
from kiln.solver.types import SolveOptions, StageResult
from kiln.source.context import BuildContext
from kiln.source.dockerignore import IgnoreMatcher
from kiln.source.http import downloaded
from kiln.source.image import ImageBase
from kiln.state import KilnRoot


class StepRunner:
    def __init__(
        self,
        root: KilnRoot,
        blobs: BlobStore,
        locator: BlobLocator,
        snapshots: SnapshotStore,
        executor: Executor,
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
        self.mounts = RunMounts(root, context, self._mounted_source, dict(options.secrets))

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
            raise KilnError(str(exc)) from exc
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    # ------------------------------------------------------------------ RUN
    def _exec(self, op: ExecOp, rootfs: Path, output: OutputSink, step: Step) -> None:
        identity = resolve_user(rootfs, op.user)
        if not resolve_in_root(rootfs, op.workdir).is_dir():
            fileops.mkdir_p(rootfs, op.workdir, Identity(0, 0))
        env = env_with(op.env, op.proxy_env, replace=False)
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
            self.mounts.prepare(op, spec, stack, scratch)
            self.executor.run(spec, output, description=f"[{step.label}]")

    @contextlib.contextmanager
    def _mounted_source(self, origin: ImageSource | int) -> Iterator[Path]:
        with self.snapshots.mounted(self._chain_of(origin), self.fetch) as src_root:
            yield src_root

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
            # what was copied must be what the key was computed from (never a wrong hit)
            if self.context.digest(list(op.srcs), chown=op.chown, chmod=op.chmod) != source.digest:
                raise ContextError(
                    "the build context changed while the build was running",
                    hint="run the build again once the files stop changing",
                )
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


def _no_stages(index: int) -> StageResult:
    raise KilnError(f"stage {index} is not available here")
