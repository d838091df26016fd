"""``kiln explain METADATA.json`` and ``kiln build --explain``: a build's steps as a table.

One row per step: where its result came from (the local store, which imported cache, or
that it ran), its time, its layer's bytes, and for a step that ran, why it missed.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kiln.cli.table import columns
from kiln.errors import UsageError
from kiln.units import format_size

_STEP_WIDTH = 56


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "explain",
        help="show a build's steps: hit source, miss reason, time, bytes",
        description="Print the steps of a build from its --metadata-file: where each "
        "result came from, why each step that ran missed, its time and bytes.",
    )
    p.add_argument("metadata", metavar="METADATA.json", type=Path,
                   help="a file written by kiln build --metadata-file")  # fmt: skip
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    print(table(read_steps(args.metadata)))
    return 0


def read_steps(path: Path) -> list[dict[str, Any]]:
    hint = "pass the file kiln build --metadata-file wrote"
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}", hint=hint) from exc
    except ValueError as exc:
        raise UsageError(f"{path} is not JSON: {exc}", hint=hint) from exc
    steps = data.get("steps") if isinstance(data, dict) else None
    if not isinstance(steps, list) or not all(isinstance(s, dict) for s in steps):
        raise UsageError(f"{path} has no list of steps: it is not a kiln metadata file",
                         hint=hint)  # fmt: skip
    return steps


def table(steps: Sequence[dict[str, Any]]) -> str:
    rows = [("STEP", "RESULT", "TIME", "BYTES", "WHY")]
    for step in steps:
        rows.append((
            _cut(str(step.get("step", "")), _STEP_WIDTH),
            _result(step),
            f"{float(step.get('seconds') or 0):.1f}s",
            format_size(int(step.get("layer_bytes") or 0)),
            _why(step),
        ))  # fmt: skip
    lines = columns(rows)
    ran = sum(1 for s in steps if s.get("cached") is False)
    lines.append(f"{len(steps) - ran}/{len(steps)} steps cached, {ran} ran")
    return "\n".join(lines)


def _result(step: dict[str, Any]) -> str:
    cached = step.get("cached")
    if cached is False:
        return "ran"
    if cached == "local":
        return "cached (local)"
    return f"cached ({step.get('source') or cached})"


def _why(step: dict[str, Any]) -> str:
    reason = step.get("miss_reason")
    if isinstance(reason, dict):
        return str(reason.get("detail") or reason.get("kind") or "")
    return ""


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def print_table(steps: Sequence[dict[str, Any]]) -> None:
    print(table(steps), file=sys.stderr)
