"""Running one step that missed the cache: mount its parent layers, run its op
(:mod:`kiln.solver.ops`), turn the overlay upper dir into a layer (:mod:`kiln.differ`)."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from kiln.cache.mounts.store import MountStore
from kiln.content import BlobLocator, BlobStore
from kiln.differ.layer import write_layer
from kiln.errors import KilnError
from kiln.executor.base import Executor, OutputSink
from kiln.executor.emulation import require as require_emulator
from kiln.frontend.base import (
    BindMount,
    CopyOp,
    ExecOp,
    ImageSource,
    MkdirOp,
    StageSource,
    Step,
)
from kiln.oci import Layer, Platform
from kiln.snapshot.snapshots import SnapshotStore
from kiln.solver.keys import digest_of
from kiln.solver.ops import file as fileops
from kiln.solver.ops.copy import run_copy
from kiln.solver.ops.exec import run_exec
from kiln.solver.ops.mounts import RunMounts
from kiln.solver.types import SolveOptions, StageResult
from kiln.source.context import BuildContext
from kiln.source.dockerignore import IgnoreMatcher
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
        cache_mounts: MountStore,
    ) -> None:
        self.root = root
        self.blobs = blobs
        self.locator = locator
        self.snapshots = snapshots
        self.executor = executor
        self.context = context
        self.options = options
        self.stage_result: Callable[[int], StageResult] = _no_stages
        self.mounts = RunMounts(cache_mounts, context, self._mounted_source, dict(options.secrets))

    # ------------------------------------------------------------------ helpers
    def fetch(self, layer: Layer) -> None:
        self.locator.fetch(layer.blob, check=False)  # unpacking verifies the diff ID

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
            if isinstance(step.op, ExecOp):
                _check_emulation(step.op.platform)
                self.mounts.prefetch(step.op)  # beside the parent layers' downloads
            with self.snapshots.mounted(chain, self.fetch, upper=upper) as rootfs:
                op = step.op
                if isinstance(op, ExecOp):
                    run_exec(op, rootfs, output, executor=self.executor, mounts=self.mounts,
                             scratch=self.root.tempdir, description=f"[{step.label}]")  # fmt: skip
                elif isinstance(op, CopyOp):
                    run_copy(op, rootfs, context=self.context, mounted=self._mounted_source,
                             root=self.root)  # fmt: skip
                else:
                    assert isinstance(op, MkdirOp)
                    fileops.mkdir_p(rootfs, op.path, fileops.file_owner(rootfs, op.user))
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

    def input_digest(self, step: Step) -> str:
        """What *step* reads from other stages (built by now), as one digest: the selected
        paths of a ``COPY --from=<stage>``, the bound paths of ``--mount=type=bind,from=``
        (content, modes, owners and link targets; not times: BuildKit's content checksum)."""
        op = step.op
        parts: list[str] = []
        if isinstance(op, CopyOp) and isinstance(op.source, StageSource):
            with self._mounted_source(op.source.stage) as root:
                source = BuildContext(root, IgnoreMatcher([]))
                parts.append(source.digest(list(op.srcs), chown=op.chown, chmod=op.chmod,
                                           owners=True))  # fmt: skip
        elif isinstance(op, ExecOp):
            for mount in op.mounts:
                if isinstance(mount, BindMount) and mount.from_stage is not None:
                    with self._mounted_source(mount.from_stage) as root:
                        source = BuildContext(root, IgnoreMatcher([]))
                        bound = [mount.source.lstrip("/") or "."]
                        parts.append(source.digest(bound, chown=None, chmod=None, owners=True))
        return digest_of({"stage-inputs": parts})

    @contextlib.contextmanager
    def _mounted_source(self, origin: ImageSource | int) -> Iterator[Path]:
        with self.snapshots.mounted(self._chain_of(origin), self.fetch) as src_root:
            yield src_root


def _check_emulation(platform: str) -> None:
    if platform:
        require_emulator(Platform.parse(platform).architecture, platform)


def _no_stages(index: int) -> StageResult:
    raise KilnError(f"stage {index} is not available here")
