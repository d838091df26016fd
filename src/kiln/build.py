"""The composition root of ``kiln build``: wires the pipeline stages together.

Everything is validated before the build starts (Dockerfile, outputs, build context);
then the plan is solved, the image assembled and each output exported, a registry push
finalising with the manifest once every blob is present.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kiln.cache.store import LocalCache
from kiln.content import BlobLocator, BlobStore
from kiln.errors import KilnError
from kiln.executor.runc import RuncExecutor
from kiln.exporter.archive import write_image_tar
from kiln.exporter.base import LocalOutput, Output, RegistryOutput, TarOutput
from kiln.exporter.image import ImageArtifacts, assemble
from kiln.exporter.local import write_rootfs
from kiln.exporter.registry import push_image
from kiln.frontend.base import ImageBase
from kiln.frontend.context import BuildContext
from kiln.frontend.dockerfile import parse_file
from kiln.frontend.dockerignore import IgnoreMatcher, load_ignore_patterns
from kiln.frontend.planner import Planner, PlanOptions
from kiln.image import ImageConfig
from kiln.oci import Descriptor, Platform, host_platform
from kiln.registry.client import RegistryClient
from kiln.registry.dockerconfig import DockerConfig
from kiln.registry.reference import Reference
from kiln.registry.stats import TransferStats
from kiln.snapshot.snapshots import SnapshotStore
from kiln.solver.solver import Solver
from kiln.solver.types import BuildResult, Progress, SolveOptions
from kiln.solver.urls import UrlFetcher
from kiln.state import KilnRoot, default_root, write_atomic


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


@dataclass
class BuildOutcome:
    result: BuildResult
    artifacts: ImageArtifacts
    pushed: list[str]
    stats: TransferStats


class RegistryBlobSource:
    """A blob provider backed by a registry repository."""

    def __init__(self, client: RegistryClient, repo: Reference, category: str) -> None:
        self.client = client
        self.repo = repo
        self.category = category
        self.location = repo.name

    def fetch(self, desc: Descriptor, store: BlobStore) -> None:
        self.client.fetch_blob(self.repo, desc, store, category=self.category)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RegistryBlobSource) and other.location == self.location

    def __hash__(self) -> int:
        return hash(self.location)


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
    patterns = load_ignore_patterns(ctx, dockerfile)
    return BuildContext(ctx, IgnoreMatcher(patterns), memo_dir=root.path / "context"), dockerfile


def run_build(options: BuildOptions, progress: Progress) -> BuildOutcome:
    root = KilnRoot(options.root or default_root()).ensure()
    blobs = BlobStore(root.blobs)
    locator = BlobLocator(blobs)
    stats = TransferStats()
    insecure = {
        Reference.parse(n).registry
        for o in options.outputs
        if isinstance(o, RegistryOutput) and o.insecure
        for n in o.names
    }
    with RegistryClient(DockerConfig(), stats=stats, insecure=insecure) as client:
        context, dockerfile = _context(options, root)
        parsed = parse_file(dockerfile)
        plan_options = PlanOptions(
            platform=options.platform or host_platform(),
            build_args=options.build_args,
            target=options.target,
            labels=options.labels,
            network=options.network,
        )
        planner = Planner(
            parsed, context, RegistryResolver(client, locator), plan_options, UrlFetcher(root)
        )
        plan = planner.plan()
        for warning in plan.warnings:
            progress.message(f"WARNING: {warning}")
        snapshots = SnapshotStore(root, blobs)
        solver = Solver(
            root,
            blobs,
            locator,
            LocalCache(root.cache_keys, blobs, snapshots.exists),
            snapshots,
            RuncExecutor(root),
            context,
            progress,
            SolveOptions(
                no_cache=options.no_cache,
                compression=options.compression,
                compression_level=options.compression_level,
                source_date_epoch=options.source_date_epoch,
                secrets=options.secrets,
            ),
        )
        result = solver.solve(plan)
        target = result.target
        oci = all(getattr(o, "oci_mediatypes", True) for o in options.outputs)
        art = assemble(target.config, target.layers, oci=oci)
        pushed: list[str] = []
        for output in options.outputs:
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
            else:
                assert isinstance(output, LocalOutput)
                progress.message(f"writing root filesystem to {output.dest}")
                write_rootfs(target.layers, Path(output.dest), locator)
    outcome = BuildOutcome(result, art, pushed, stats)
    if options.metadata_file is not None:
        write_atomic(options.metadata_file, json.dumps(metadata(outcome), indent=2).encode())
    return outcome


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
