"""``--metadata-file``: what a build made, as JSON (buildx's keys plus kiln's own).

buildx's ``containerimage.digest``, ``containerimage.config.digest``,
``containerimage.descriptor`` and ``image.name``; kiln adds the pushed references, every
step (label, whether and where it was cached, why it missed, seconds, layer bytes), the
bytes moved, in total and split into image and cache transfers, and per cache mount what
was imported and exported (bytes, seconds, where from, the exported chain), and the
seconds spent per phase (context, resolve, cache import, pull, unpack, run, diff,
compress, push, cache export; summed over threads, see :mod:`kiln.timing`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kiln.cache.mounts.store import MountReport
from kiln.errors import KilnError
from kiln.exporter.image import BuildImages
from kiln.http.stats import TransferStats
from kiln.solver.types import StepReport
from kiln.state import write_atomic


def metadata(images: BuildImages, oci: bool, pushed: list[str], reports: list[StepReport],
             stats: TransferStats, mounts: Sequence[MountReport] = (),
             phases: Mapping[str, float] | None = None) -> dict[str, Any]:  # fmt: skip
    """A multi-platform build's digest and descriptor are its index's (as buildx), and
    ``platforms`` lists each image. *phases*: seconds per phase (:mod:`kiln.timing`)."""
    _data, top = images.top(oci)
    out: dict[str, Any] = {"containerimage.digest": top.digest}
    if not images.multi:
        out["containerimage.config.digest"] = images.single().get(oci).config_desc.digest
    out["containerimage.descriptor"] = top.to_json()
    if images.multi:
        out["platforms"] = [
            {"platform": str(platform), "digest": art.digest,
             "config.digest": art.config_desc.digest}
            for platform, art in images.per_platform(oci)
        ]  # fmt: skip
    return out | {
        "image.name": ",".join(pushed),
        "pushed": pushed,
        "steps": [step_json(r) for r in reports],
        "bytes_pulled": stats.pulled(),
        "bytes_pushed": stats.pushed(),
        "layer_bytes_pulled": stats.layers_pulled(),
        "bytes": {
            cat: {"pulled": stats.pulled(cat), "pushed": stats.pushed(cat)}
            for cat in ("image", "cache")
        },
        "cache_mounts": [m.to_json() for m in mounts],
        "phases": dict(phases or {}),
    }


def step_json(report: StepReport) -> dict[str, Any]:
    """One step: label, ``cached`` (false, "local" or "remote"), where a remote hit came
    from, the reason a step that ran missed, its seconds and its layer's bytes."""
    out: dict[str, Any] = {"step": report.step.label, "cached": report.cached}
    if report.origin:
        out["source"] = report.origin
    out["miss_reason"] = report.miss.to_json() if report.miss is not None else None
    out["seconds"] = round(report.seconds, 3)
    out["layer_bytes"] = report.layer.blob.size if report.layer is not None else 0
    return out


def write_metadata(path: Path, data: dict[str, Any]) -> None:
    try:
        write_atomic(path, json.dumps(data, indent=2).encode())
    except OSError as exc:
        raise KilnError(f"cannot write --metadata-file {path}: {exc}") from exc
