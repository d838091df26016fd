"""``kiln imagetools create|inspect``: as ``docker buildx imagetools``."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("imagetools", help="merge images into an index, or inspect one")
    tools = p.add_subparsers(dest="imagetools_command", metavar="COMMAND")
    tools.required = True
    create = tools.add_parser("create", help="push one index of the given images under tags")
    create.add_argument("sources", nargs="*", metavar="SOURCE",
                        help="image references, or digests in the first tag's repo")  # fmt: skip
    create.add_argument("-t", "--tag", action="append", default=[], dest="tags")
    create.add_argument("--append", action="store_true",
                        help="keep the images the first tag names now")  # fmt: skip
    create.add_argument("--dry-run", action="store_true", help="print the index, push nothing")
    create.set_defaults(handler=run_create)
    inspect = tools.add_parser("inspect", help="show an image or index")
    inspect.add_argument("name", metavar="NAME")
    inspect.add_argument("--raw", action="store_true", help="the manifest exactly as served")
    inspect.set_defaults(handler=run_inspect)


def run_create(args: argparse.Namespace) -> int:
    from kiln.content import BlobLocator, BlobStore
    from kiln.registry import imagetools
    from kiln.registry.client import RegistryClient
    from kiln.registry.dockerconfig import DockerConfig
    from kiln.registry.reference import Reference
    from kiln.state import KilnRoot, default_root

    tags = [Reference.parse(t) for t in args.tags]
    root = KilnRoot(default_root()).ensure()
    with RegistryClient(DockerConfig()) as client:
        locator = BlobLocator(BlobStore(root.blobs))
        data, _media = imagetools.create(client, locator, tags, args.sources,
                                         append=args.append, dry_run=args.dry_run)  # fmt: skip
    if args.dry_run:
        sys.stdout.write(data.decode() + "\n")
    else:
        from kiln.oci import sha256_digest

        print(f"pushed {', '.join(map(str, tags))} ({sha256_digest(data)})", file=sys.stderr)
    return 0


def run_inspect(args: argparse.Namespace) -> int:
    from kiln.registry import imagetools
    from kiln.registry.client import RegistryClient
    from kiln.registry.dockerconfig import DockerConfig
    from kiln.registry.reference import Reference

    ref = Reference.parse(args.name)
    with RegistryClient(DockerConfig()) as client:
        manifest = client.get_manifest(ref)
    if args.raw:
        sys.stdout.write(manifest.raw.decode())
    else:
        sys.stdout.write(imagetools.describe(ref, manifest))
    return 0
