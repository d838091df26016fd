"""The composition root of ``kiln build``: wires the pipeline stages together.

This module holds no logic of its own: it builds the registries of plug-ins (cache
backends, exporters), opens what a build shares (state root, blob store, registry
client), and runs frontend → solver → exporters → cache exports. Everything was validated
before (flags by their parsers, the Dockerfile and context here, before any step runs).
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from kiln import timing
from kiln.archive.compress import diff_id_of
from kiln.cache.backends.gha import GhaBackend, default_scope
from kiln.cache.backends.inline import InlineBackend
from kiln.cache.backends.local import LocalBackend
from kiln.cache.backends.registry import RegistryBackend
from kiln.cache.mounts.store import MountStore
from kiln.cache.remote.base import (
    CacheContext,
    CacheType,
    ExportFlag,
    ImportedCache,
    ImportFlag,
)
from kiln.cache.remote.flags import parse_cache_from
from kiln.cache.remote.session import RemoteCaches
from kiln.cache.store import LocalCache, now_rfc3339
from kiln.content import BlobLocator, BlobStore
from kiln.errors import BlobUnavailableError, CacheError, UsageError
from kiln.executor.runc import RuncExecutor
from kiln.exporter.base import ExportContext, OutputFlag, OutputType, default_oci_mediatypes
from kiln.exporter.image import BuildImages, ImageSet
from kiln.exporter.metadata import metadata, write_metadata
from kiln.exporter.outputs.archive import DockerArchiveExporter, OciArchiveExporter
from kiln.exporter.outputs.local import LocalExporter
from kiln.exporter.outputs.registry import ImageExporter, RegistryExporter
from kiln.frontend.dockerfile import parse_file
from kiln.frontend.planner import Planner
from kiln.frontend.stage import PlanOptions
from kiln.gc.auto import capped
from kiln.http.stats import TransferStats
from kiln.oci import Platform, host_platform
from kiln.registry.client import RegistryClient
from kiln.registry.dockerconfig import DockerConfig
from kiln.snapshot.snapshots import SnapshotStore
from kiln.solver.cache_export import ExportSelection, MountSelection, combined
from kiln.solver.explain import Explainer
from kiln.solver.gate import StepGate
from kiln.solver.platforms import solve_all
from kiln.solver.solver import Solver
from kiln.solver.types import BuildResult, Progress, SolveOptions, StepReport
from kiln.source.context import open_context
from kiln.source.http import UrlFetcher
from kiln.source.image import RegistryResolver
from kiln.state import KilnRoot, default_root, sweep_stale_sessions


def cache_backends() -> dict[str, CacheType]:
    """The remote cache backends, by ``type=`` name."""
    backends: list[CacheType] = [RegistryBackend(), InlineBackend(), LocalBackend(), GhaBackend()]
    return {b.name: b for b in backends}


def exporters() -> dict[str, OutputType]:
    """The output types of ``--output``, by ``type=`` name."""
    types: list[OutputType] = [RegistryExporter(), ImageExporter(), OciArchiveExporter(),
                               DockerArchiveExporter(), LocalExporter()]  # fmt: skip
    return {e.name: e for e in types}


@dataclass(frozen=True, slots=True)
class BuildOptions:
    context: Path
    dockerfile: Path | None = None
    tags: tuple[str, ...] = ()
    build_args: Mapping[str, str] = field(default_factory=dict)
    target: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    no_cache: bool = False
    outputs: tuple[OutputFlag, ...] = ()
    network: str = "default"
    metadata_file: Path | None = None
    platforms: tuple[Platform, ...] = ()  # empty: the host's
    source_date_epoch: int | None = None
    secrets: tuple[tuple[str, str], ...] = ()
    compression: str = "gzip"
    compression_level: int | None = None
    root: Path | None = None
    cache_from: tuple[ImportFlag, ...] = ()
    cache_to: tuple[ExportFlag, ...] = ()


@dataclass
class BuildOutcome:
    results: list[BuildResult]  # one per platform, in --platform order
    images: BuildImages
    oci: bool  # the media types of the outputs' manifests
    pushed: list[str]
    stats: TransferStats

    @property
    def digest(self) -> str:
        """The image's manifest digest, or the index's for a multi-platform build."""
        return self.images.top(self.oci)[1].digest

    @property
    def image_id(self) -> str:
        """What ``buildx --quiet`` prints: the config digest (the index's digest when
        there are several images)."""
        if self.images.multi:
            return self.digest
        return self.images.single().get(self.oci).config_desc.digest

    @property
    def reports(self) -> list[StepReport]:
        return [r for result in self.results for r in result.reports]


def _insecure_hosts(options: BuildOptions) -> set[str]:
    hosts = {host for flag in options.outputs for host in flag.insecure_hosts}
    hosts.update(host for flag in options.cache_from for host in flag.insecure_hosts)
    hosts.update(host for flag in options.cache_to for host in flag.insecure_hosts)
    return hosts


def run_build(options: BuildOptions, progress: Progress) -> BuildOutcome:
    started = timing.totals()
    platforms = list(options.platforms) or [host_platform()]
    multi = len(platforms) > 1
    if multi:
        check_multi_platform(options.outputs, platforms)
    root = KilnRoot(options.root or default_root()).ensure()
    sweep_stale_sessions(root.tmp)
    blobs = BlobStore(root.blobs)
    locator = BlobLocator(blobs, diff_id_of)  # every claimed diff ID is checked when used
    stats = TransferStats()
    with (
        contextlib.ExitStack() as stack,
        RegistryClient(DockerConfig(), stats=stats, insecure=_insecure_hosts(options)) as client,
    ):
        stack.enter_context(capped(root, progress.message))  # the lease; then KILN_ROOT_MAX
        context, dockerfile = open_context(options.context, options.dockerfile, root.path)
        resolver = RegistryResolver(client, locator)
        plans = []
        for platform in platforms:  # one plan per target platform (bases resolved per platform)
            plan_options = PlanOptions(platform=platform, build_args=options.build_args,
                                       target=options.target, labels=options.labels,
                                       network=options.network, platform_labels=multi)  # fmt: skip
            planner = Planner(parse_file(dockerfile), context, resolver, plan_options,
                              UrlFetcher(root))  # fmt: skip
            plans.append(planner.plan())
        for warning in dict.fromkeys(w for plan in plans for w in plan.warnings):
            progress.message(f"WARNING: {warning}")
        scope = default_scope(context.root, dockerfile, options.target, platforms)
        warn = lambda m: progress.message(f"WARNING: {m}")  # noqa: E731
        cache_ctx = CacheContext(client, blobs, locator, warn, stats, platforms[0], scope)
        caches = RemoteCaches(cache_ctx, options.cache_from, options.cache_to)
        stack.callback(caches.close)
        remote = caches.load()
        snapshots = SnapshotStore(root, blobs)
        local = LocalCache(root.cache_keys, blobs)
        cache_mounts = MountStore(
            root,
            blobs,
            locator,
            now=lambda: now_rfc3339(options.source_date_epoch),
            source=caches,
            message=progress.message,
            warn=warn,
            secrets=[Path(path) for _id, path in options.secrets],
        )
        stack.callback(cache_mounts.close)
        solve_options = SolveOptions(
            no_cache=options.no_cache,
            compression=options.compression,
            compression_level=options.compression_level,
            source_date_epoch=options.source_date_epoch,
            secrets=options.secrets,
        )
        oci = default_oci_mediatypes(options.outputs)
        gate = StepGate()
        explainer = Explainer([local, *remote], caches.statuses, context,
                              no_cache=options.no_cache)  # fmt: skip
        ran: dict[str, StepReport] = {}  # steps run by earlier passes, reported as run
        while True:  # each pass forgets at least one corrupt cached blob, so this ends
            solvers = [Solver(root, blobs, locator, local, snapshots, RuncExecutor(root), context,
                              progress, solve_options, cache_mounts, remote, ran, gate,
                              explainer)
                       for _ in plans]  # fmt: skip
            try:
                results = solve_all(solvers, plans)
                selections = [
                    ExportSelection(r, s.lookup) for r, s in zip(results, solvers, strict=True)
                ]
                images = []
                for platform, result, selection in zip(platforms, results, selections, strict=True):
                    config = result.target.config.clone()
                    caches.annotate_image(selection, config, result.target.layers)
                    images.append((platform, ImageSet(config, result.target.layers)))
                built = BuildImages(images)
                export_ctx = ExportContext(built, client, locator, progress.message, root.tempdir)
                pushed = [ref for output in options.outputs for ref in output.export(export_ctx)]
                caches.export(combined(selections), MountSelection(plans, cache_mounts))
                break
            except BlobUnavailableError as exc:
                # a cached result whose blob is corrupt or gone is never used: forget it
                # and solve again (the step runs)
                if not caches.invalidate(exc.digest):
                    raise
                for solver in solvers:
                    ran.update(solver.ran())
                blobs.remove(exc.digest)
                progress.message(f"WARNING: {exc.what}; running its step instead")
    outcome = BuildOutcome(results, built, oci, pushed, stats)
    if options.metadata_file is not None:
        data = metadata(built, oci, pushed, outcome.reports, stats, cache_mounts.reports(),
                        timing.since(started))  # fmt: skip
        write_metadata(options.metadata_file, data)
    return outcome


def inspect_cache(text: str, platform: Platform | None = None) -> ImportedCache:
    """What one cache source holds (``SOURCE`` as ``--cache-from`` reads it), loaded as a
    build would load it, into a scratch store; an unusable source is a ``CacheError``."""
    flag = parse_cache_from(text, cache_backends())
    notes: list[str] = []
    stats = TransferStats()
    with (
        tempfile.TemporaryDirectory(prefix="kiln-inspect-") as scratch,
        RegistryClient(DockerConfig(), stats=stats, insecure=set(flag.insecure_hosts)) as client,
    ):
        blobs = BlobStore(Path(scratch) / "blobs")
        ctx = CacheContext(client, blobs, BlobLocator(blobs, diff_id_of), notes.append, stats,
                           platform or host_platform())  # fmt: skip
        caches = RemoteCaches(ctx, [flag], [])
        try:
            loaded = caches.load()
        finally:
            caches.close()
    if not loaded:
        raise CacheError(f"cannot inspect {flag.text}: " + ("; ".join(notes) or "nothing there"))
    return loaded[0]


def check_multi_platform(outputs: tuple[OutputFlag, ...], platforms: list[Platform]) -> None:
    """Every output can hold an image index, or the build stops before it starts."""
    for output in outputs:
        problem = output.multi_platform_problem
        if problem is not None:
            shown = ",".join(map(str, platforms))
            raise UsageError(
                f"--output {output.text}: {problem}",
                hint=f"build one platform at a time (--platform {platforms[0]}) or use "
                f"type=oci or type=registry for --platform {shown}",
            )
