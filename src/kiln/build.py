"""The composition root of ``kiln build``: wires the pipeline stages together.

Everything is validated before the build starts (Dockerfile, outputs, build context);
then the plan is solved, the image assembled and each output exported, a registry push
finalising with the manifest once every blob is present.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kiln.cache.remote.base import Backend, CacheContext
from kiln.cache.remote.gha import GhaBackend, default_scope
from kiln.cache.remote.inline import InlineBackend
from kiln.cache.remote.local import LocalBackend
from kiln.cache.remote.registry import RegistryBackend
from kiln.cache.remote.session import CacheSpec, RemoteCaches
from kiln.cache.store import LocalCache
from kiln.content import BlobLocator, BlobStore
from kiln.errors import BlobUnavailableError, KilnError
from kiln.executor.runc import RuncExecutor
from kiln.exporter.archive import write_image_tar
from kiln.exporter.base import LocalOutput, Output, RegistryOutput, TarOutput
from kiln.exporter.image import ImageArtifacts, assemble
from kiln.exporter.local import write_rootfs
from kiln.exporter.registry import push_image
from kiln.frontend.base import ImageBase
from kiln.frontend.context import BuildContext
from kiln.frontend.dockerfile import parse_file
from kiln.frontend.planner import Planner, PlanOptions
from kiln.image import ImageConfig
from kiln.oci import Layer, Platform, host_platform
from kiln.registry.blobsource import RegistryBlobSource
from kiln.registry.client import RegistryClient
from kiln.registry.dockerconfig import DockerConfig
from kiln.registry.reference import Reference
from kiln.registry.stats import TransferStats
from kiln.snapshot.snapshots import SnapshotStore
from kiln.solver.solver import Solver
from kiln.solver.types import BuildResult, Progress, SolveOptions
from kiln.solver.urls import UrlFetcher
from kiln.state import KilnRoot, default_root, sweep_stale_sessions, write_atomic


@dataclass(frozen=True, slots=True)
class BuildOptions:
    context: Path
    dockerfile: Path | None = None
    tags: tuple[str, ...] = ()
    build_args: Mapping[str, str] = field(default_factory=dict)
    target: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    no_cache: bool = False
    outputs: tuple[Output, ...] = ()
    network: str = "default"
    metadata_file: Path | None = None
    platform: Platform | None = None
    source_date_epoch: int | None = None
    secrets: tuple[tuple[str, str], ...] = ()
    compression: str = "gzip"
    compression_level: int | None = None
    root: Path | None = None
    cache_from: tuple[CacheSpec, ...] = ()
    cache_to: tuple[CacheSpec, ...] = ()


@dataclass
class BuildOutcome:
    result: BuildResult
    artifacts: ImageArtifacts
    pushed: list[str]
    stats: TransferStats


class RegistryResolver:
    """Resolves FROM / --from images through the registry (manifest and config only)."""

    def __init__(self, client: RegistryClient, locator: BlobLocator) -> None:
        self.client = client
        self.locator = locator

    def resolve(self, ref: str, platform: Platform) -> ImageBase:
        parsed = Reference.parse(ref)
        resolved = self.client.resolve_image(parsed, platform)
        try:
            config = ImageConfig.from_bytes(resolved.config)
        except (ValueError, TypeError, KeyError) as exc:
            raise KilnError(f"image {ref} has an invalid config: {exc}") from exc
        source = RegistryBlobSource(self.client, parsed.repo_ref, "image")
        for layer in resolved.layers:
            self.locator.add(layer.digest, source)
        return ImageBase(
            ref=str(resolved.pinned),
            repository=parsed.name,
            manifest_digest=resolved.digest,
            config=config,
            layers=tuple(resolved.layers),
        )


def _context(options: BuildOptions, root: KilnRoot) -> tuple[BuildContext, Path]:
    ctx = options.context.absolute()
    if not ctx.is_dir():
        raise KilnError(
            f"build context {options.context} is not a directory",
            hint="pass the directory that holds your sources (often .)",
        )
    dockerfile = (options.dockerfile or ctx / "Dockerfile").absolute()
    if not dockerfile.is_file():
        raise KilnError(
            f"Dockerfile not found: {dockerfile}", hint="pass the right file with -f FILE"
        )
    return BuildContext.open(ctx, dockerfile, memo_dir=root.path / "context"), dockerfile


def cache_backends(gha_scope: str = "buildkit") -> dict[str, Backend]:
    """The remote cache backends, by ``type=`` name (*gha_scope*: gha's default scope)."""
    backends: list[Backend] = [
        RegistryBackend(),
        InlineBackend(),
        LocalBackend(),
        GhaBackend(gha_scope),
    ]
    return {b.name: b for b in backends}


def _gha_scope(options: BuildOptions, context: Path, dockerfile: Path, platform: str) -> str:
    """gha's default scope: this build's context, Dockerfile, target and platform."""
    cwd = Path.cwd()
    ctx = context.relative_to(cwd) if context.is_relative_to(cwd) else Path(context.name)
    return default_scope(str(ctx), str(dockerfile.relative_to(context))
                         if dockerfile.is_relative_to(context) else dockerfile.name,
                         options.target, platform)  # fmt: skip


def _insecure_hosts(options: BuildOptions) -> set[str]:
    hosts = {
        Reference.parse(n).registry
        for o in options.outputs
        if isinstance(o, RegistryOutput) and o.insecure
        for n in o.names
    }
    for item in (*options.cache_from, *options.cache_to):
        if getattr(item.spec, "insecure", False):
            hosts.add(item.spec.ref.registry)
    return hosts


def _validate_names(options: BuildOptions) -> None:
    """Every image name is checked before anything runs (not after a long build)."""
    for output in options.outputs:
        for name in getattr(output, "names", ()):
            Reference.parse(name)


def run_build(options: BuildOptions, progress: Progress) -> BuildOutcome:
    _validate_names(options)
    root = KilnRoot(options.root or default_root()).ensure()
    sweep_stale_sessions(root.tmp)
    blobs = BlobStore(root.blobs)
    locator = BlobLocator(blobs)
    stats = TransferStats()
    with (
        contextlib.ExitStack() as stack,
        RegistryClient(DockerConfig(), stats=stats, insecure=_insecure_hosts(options)) as client,
    ):
        context, dockerfile = _context(options, root)
        plan_options = PlanOptions(
            platform=options.platform or host_platform(),
            build_args=options.build_args,
            target=options.target,
            labels=options.labels,
            network=options.network,
        )
        resolver = RegistryResolver(client, locator)
        planner = Planner(parse_file(dockerfile), context, resolver, plan_options, UrlFetcher(root))
        plan = planner.plan()
        for warning in plan.warnings:
            progress.message(f"WARNING: {warning}")
        platform = plan_options.platform
        scope = _gha_scope(options, context.root, dockerfile, str(platform))
        caches = RemoteCaches(
            cache_backends(scope),
            CacheContext(
                client,
                blobs,
                locator,
                lambda m: progress.message(f"WARNING: {m}"),
                stats,
                platform,
            ),
            options.cache_from,
            options.cache_to,
        )
        stack.callback(caches.close)
        remote = caches.load()
        snapshots = SnapshotStore(root, blobs)
        local = LocalCache(root.cache_keys, blobs)
        solve_options = SolveOptions(
            no_cache=options.no_cache,
            compression=options.compression,
            compression_level=options.compression_level,
            source_date_epoch=options.source_date_epoch,
            secrets=options.secrets,
        )
        while True:  # each pass forgets at least one corrupt cached blob, so this ends
            solver = Solver(root, blobs, locator, local, snapshots, RuncExecutor(root), context,
                            progress, solve_options, remote)  # fmt: skip
            try:
                result = solver.solve(plan)
                config = result.target.config.clone()
                caches.annotate_image(result, solver.lookup, config, result.target.layers)
                images = Images(config, result.target.layers)
                art = images.get(_oci_default(options))
                pushed = _export(options, images, client, locator, progress, root)
                caches.export(result, solver.lookup)
                break
            except BlobUnavailableError as exc:
                # a cached result whose blob is corrupt or gone is never used: forget it
                # and solve again (the step runs)
                if not caches.invalidate(exc.digest):
                    raise
                blobs.remove(exc.digest)
                progress.message(f"WARNING: {exc.what}; running its step instead")
    outcome = BuildOutcome(result, art, pushed, stats)
    if options.metadata_file is not None:
        try:
            write_atomic(options.metadata_file, json.dumps(metadata(outcome), indent=2).encode())
        except OSError as exc:
            raise KilnError(f"cannot write --metadata-file {options.metadata_file}: {exc}") from exc
    return outcome


def _oci_default(options: BuildOptions) -> bool:
    """OCI media types unless every output asks for Docker's."""
    flags = [o.oci_mediatypes for o in options.outputs if not isinstance(o, LocalOutput)]
    return any(flags) if flags else True


class Images:
    """The final image, assembled once per media-type flavour the outputs ask for."""

    def __init__(self, config: ImageConfig, layers: list[Layer]) -> None:
        self.config = config
        self.layers = layers
        self._made: dict[bool, ImageArtifacts] = {}

    def get(self, oci: bool) -> ImageArtifacts:
        if oci not in self._made:
            self._made[oci] = assemble(self.config, self.layers, oci=oci)
        return self._made[oci]


def _export(
    options: BuildOptions,
    images: Images,
    client: RegistryClient,
    locator: BlobLocator,
    progress: Progress,
    root: KilnRoot,
) -> list[str]:
    pushed: list[str] = []
    for output in options.outputs:
        if isinstance(output, LocalOutput):
            progress.message(f"writing root filesystem to {output.dest}")
            write_rootfs(images.layers, Path(output.dest), locator, root.tempdir("rootfs-"))
            continue
        art = images.get(output.oci_mediatypes)
        if isinstance(output, RegistryOutput):
            if not output.push:
                continue
            progress.message(f"pushing {', '.join(output.names)}")
            names = [Reference.parse(n) for n in output.names]
            push_image(client, art, names, locator)
            pushed += [f"{n.name}:{n.tag or 'latest'}@{art.digest}" for n in names]
        elif isinstance(output, TarOutput):
            progress.message(f"writing {output.kind} archive {output.dest}")
            write_image_tar(art, Path(output.dest), kind=output.kind, names=output.names,
                            locator=locator)  # fmt: skip
    return pushed


def metadata(outcome: BuildOutcome) -> dict[str, Any]:
    stats = outcome.stats
    art = outcome.artifacts
    return {
        "containerimage.digest": art.digest,
        "containerimage.config.digest": art.config_desc.digest,
        "containerimage.descriptor": art.manifest_desc.to_json(),
        "image.name": ",".join(outcome.pushed),
        "pushed": outcome.pushed,
        "steps": [
            {"step": r.step.label, "cached": r.cached, "seconds": round(r.seconds, 3)}
            for r in outcome.result.reports
        ],
        "bytes_pulled": stats.pulled(),
        "bytes_pushed": stats.pushed(),
        "layer_bytes_pulled": stats.layers_pulled(),
        "bytes": {
            cat: {"pulled": stats.pulled(cat), "pushed": stats.pushed(cat)}
            for cat in ("image", "cache")
        },
    }
