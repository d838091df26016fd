"""``kiln cache inspect SOURCE``: what a cache holds, wherever it is.

SOURCE is read as ``--cache-from`` reads it: a registry reference (``REF`` or
``type=registry,ref=REF``), a local directory (``type=local,src=DIR``) or a GitHub
Actions cache scope (``type=gha[,scope=…]`` inside a job, or ``type=gha,url=…,token=…``
against ``kiln cache serve``). It prints the steps (stage, position, platform, when the
result was made, its layer, the instruction), the layers' total size and the cache mounts.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from kiln.cli.table import columns
from kiln.units import format_size

if TYPE_CHECKING:
    from kiln.cache.remote.base import ImportedCache


def register(cache_sub: Any) -> None:
    p: argparse.ArgumentParser = cache_sub.add_parser(
        "inspect",
        help="show what a cache holds: stages, steps, platforms, cache mounts, sizes",
        description="Show what a registry, local or gha cache holds.",
    )
    p.add_argument("source", metavar="SOURCE",
                   help="as --cache-from takes it: REF, type=registry,ref=REF, "
                   "type=local,src=DIR, type=gha[,scope=S][,url=U,token=T]")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from kiln.build import inspect_cache

    report = describe(inspect_cache(args.source))
    print(json.dumps(report, indent=2) if args.json else text(report))
    return 0


def describe(cache: ImportedCache) -> dict[str, Any]:
    """The cache's steps (one per step, whichever of its keys), layers and mounts."""
    steps: dict[tuple[str, int, str, str], dict[str, Any]] = {}
    undescribed = 0
    layers: dict[str, int] = {}
    for key, record in sorted(cache.records.items()):
        if record.layer is not None:
            layers[record.layer.digest] = record.layer.blob.size
        about = record.about
        if about is None:
            undescribed += 1
            continue
        digest = record.layer.digest if record.layer is not None else ""
        place = (about.stage, about.step, about.platform, digest)
        entry = steps.setdefault(place, {
            "stage": about.stage, "step": about.step, "platform": about.platform,
            "instruction": about.text, "created": record.created,
            "layer": digest or None,
            "layer_bytes": record.layer.blob.size if record.layer is not None else 0,
            "keys": [],
        })  # fmt: skip
        entry["keys"].append(key)
    mounts = [
        {"id": m.identity.id, "platform": m.identity.platform, "size": m.size,
         "blobs": len(m.layers), "blob_bytes": m.blob_bytes, "updated": m.updated}
        for m in cache.mounts.values()
    ]  # fmt: skip
    ordered = sorted(steps.values(), key=lambda s: (s["platform"], s["stage"], s["step"]))
    return {
        "source": cache.name,
        "records": len(cache.records),
        "steps": ordered,
        "undescribed_records": undescribed,
        "stages": sorted({s["stage"] for s in ordered}),
        "platforms": sorted({s["platform"] for s in ordered if s["platform"]}),
        "layers": len(layers),
        "layer_bytes": sum(layers.values()),
        "cache_mounts": mounts,
    }


def text(report: dict[str, Any]) -> str:
    lines = [
        f"{report['source']}: {report['records']} records, {len(report['steps'])} steps, "
        f"{report['layers']} layers ({format_size(report['layer_bytes'])}), "
        f"{len(report['cache_mounts'])} cache mounts",
        f"stages: {', '.join(report['stages']) or '-'}; "
        f"platforms: {', '.join(report['platforms']) or '-'}",
        "",
    ]
    rows: list[tuple[str, ...]] = [("STAGE", "STEP", "PLATFORM", "CREATED", "LAYER", "INSTRUCTION")]
    for s in report["steps"]:
        rows.append((s["stage"], str(s["step"]), s["platform"] or "-", s["created"] or "-",
                     format_size(s["layer_bytes"]), s["instruction"]))  # fmt: skip
    lines += columns(rows)
    if report["undescribed_records"]:
        lines.append(f"(and {report['undescribed_records']} records without a description: "
                     "written by BuildKit or an older kiln)")  # fmt: skip
    if report["cache_mounts"]:
        lines.append("")
        rows = [("CACHE MOUNT", "PLATFORM", "SIZE", "BLOBS", "UPDATED")]  # fmt: skip
        for m in report["cache_mounts"]:
            rows.append((m["id"], m["platform"] or "-", format_size(m["size"]),
                         f"{m['blobs']} ({format_size(m['blob_bytes'])})",
                         m["updated"] or "-"))  # fmt: skip
        lines += columns(rows)
    return "\n".join(lines)
