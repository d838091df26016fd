"""``kiln setup-qemu``: register QEMU's binfmt_misc handlers for foreign-platform builds
(what docker/setup-qemu-action does), from Debian's qemu-user-static; idempotent."""

from __future__ import annotations

import argparse
from typing import Any

from kiln.errors import UsageError


def register(sub: Any) -> None:
    p = sub.add_parser("setup-qemu", help="register QEMU emulators for --platform builds")
    p.add_argument("--platforms", default="all",
                   help="platforms to emulate, comma-separated (default: every foreign one "
                   "installed)")  # fmt: skip
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from kiln.executor import emulation
    from kiln.oci import parse_platforms

    if args.platforms == "all":
        arches = emulation.foreign_architectures()
    else:
        try:
            arches = [p.architecture for p in parse_platforms([args.platforms])]
        except ValueError as exc:
            raise UsageError(f"--platforms: {exc}") from exc
    for line in emulation.register(arches):
        print(line)
    return 0
