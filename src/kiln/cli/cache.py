"""``kiln cache ...``: the GitHub Actions cache service and its management commands."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "cache", help="self-hosted GitHub Actions cache service and cache management"
    )
    cache_sub = parser.add_subparsers(dest="cache_command", metavar="SUBCOMMAND")
    cache_sub.required = True
