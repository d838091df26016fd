"""``kiln build``: flags as ``docker buildx build``."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiln.errors import UsageError

if TYPE_CHECKING:
    from kiln.build import BuildOptions

# The build machinery is imported when a build runs, not when the parser is made: `kiln
# version` and `kiln build --help` stay fast.


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "build", help="build an image from a Dockerfile", description="Build an image."
    )
    p.add_argument("context", metavar="CONTEXT", help="build context directory")
    p.add_argument("-f", "--file", dest="file", help="Dockerfile (default: CONTEXT/Dockerfile)")
    p.add_argument("-t", "--tag", dest="tags", action="append", default=[], help="image name")
    p.add_argument("--build-arg", dest="build_args", action="append", default=[], metavar="K=V")
    p.add_argument("--target", help="build this stage")
    p.add_argument("--label", dest="labels", action="append", default=[], metavar="K=V")
    p.add_argument("--no-cache", action="store_true", help="run every step")
    p.add_argument("--push", action="store_true", help="shorthand for --output type=registry")
    p.add_argument("-o", "--output", dest="outputs", action="append", default=[], metavar="SPEC")
    p.add_argument(
        "--progress", default="auto", choices=["auto", "plain", "tty", "rawjson", "quiet"]
    )
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no build output; print the image ID when done (as buildx)")  # fmt: skip
    p.add_argument("--network", default="default", choices=["default", "host", "none"])
    p.add_argument("--metadata-file", type=Path, help="write build metadata (JSON) here")
    p.add_argument(
        "--explain",
        action="store_true",
        help="print each step at the end: hit source, why it ran, time, bytes",
    )
    p.add_argument("--platform", action="append", default=[],
                   help="target platforms, comma-separated (default: the host's); foreign "
                   "ones run under QEMU (kiln setup-qemu)")  # fmt: skip
    p.add_argument("--secret", dest="secrets", action="append", default=[],
                   metavar="id=ID,src=FILE")  # fmt: skip
    p.add_argument(
        "--cache-from", dest="cache_from", action="append", default=[], metavar="SPEC",
        help="import a build cache: type=registry|local|gha,...",
    )  # fmt: skip
    p.add_argument(
        "--cache-to", dest="cache_to", action="append", default=[], metavar="SPEC",
        help="export the build cache: type=registry|inline|local|gha,...",
    )  # fmt: skip
    p.add_argument("--compression", default="gzip", choices=["gzip", "zstd", "uncompressed"])
    p.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(handler=run)


def _pairs(values: list[str], flag: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values:
        key, eq, value = item.partition("=")
        if not key:
            raise UsageError(f"{flag} {item!r}: expected KEY=VALUE")
        if not eq:
            env = os.environ.get(key)
            if env is None:
                continue  # as docker: a bare name takes its value from the environment
            value = env
        out[key] = value
    return out


def _secret_file(value: str) -> Path:
    """A secret from the environment, in a private file that lives as long as kiln."""
    import atexit
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="kiln-secret-"))
    atexit.register(shutil.rmtree, folder, True)
    path = folder / "value"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value)
    return path


def _secrets(values: list[str]) -> tuple[tuple[str, str], ...]:
    """``--secret id=ID,src=FILE`` or ``id=ID,env=VAR`` → (id, host file) pairs."""
    from kiln.attrs import Attrs, flag_error

    out = []
    for text in values:
        attrs = Attrs.parse(text, flag_error("--secret", text), aliases={"source": "src"})
        attrs.check({"id", "src", "env", "type"}, attrs.get("type", "file"))
        sid, src, env = attrs.get("id"), attrs.get("src"), attrs.get("env")
        if not sid or not (src or env) or (src and env):
            raise attrs.error("expected id=ID,src=FILE or id=ID,env=VAR")
        if attrs.get("type", "env" if env else "file") != ("env" if env else "file"):
            raise attrs.error("type must be file (with src=) or env (with env=)")
        if env:
            value = os.environ.get(env)
            if value is None:
                raise attrs.error(f"environment variable {env} is not set")
            out.append((sid, str(_secret_file(value))))
            continue
        if not Path(src).is_file():
            raise attrs.error(f"{src} is not a file")
        out.append((sid, str(Path(src).absolute())))
    return tuple(out)


def options_from_args(args: argparse.Namespace) -> BuildOptions:
    from kiln.build import BuildOptions, cache_backends, exporters
    from kiln.cache.remote.flags import parse_cache_from, parse_cache_to
    from kiln.exporter.base import parse_outputs
    from kiln.oci import parse_platforms
    from kiln.registry.reference import Reference

    tags = tuple(args.tags)
    for tag in tags:  # checked before anything runs, whatever the outputs
        try:
            Reference.parse(tag)
        except UsageError as exc:
            raise exc.prefixed("-t") from exc
    backends = cache_backends()
    outputs = exporters()
    try:
        platforms = tuple(parse_platforms(args.platform))
    except ValueError as exc:
        hint = "e.g. --platform linux/amd64,linux/arm64"
        raise UsageError(f"--platform: {exc}", hint=hint) from exc
    epoch_text = os.environ.get("SOURCE_DATE_EPOCH")
    epoch = None
    if epoch_text:
        if not epoch_text.isdigit():
            raise UsageError(f"SOURCE_DATE_EPOCH={epoch_text!r} is not a whole number of seconds")
        epoch = int(epoch_text)
    build_args = _pairs(args.build_args, "--build-arg")
    if epoch is not None:
        build_args.setdefault("SOURCE_DATE_EPOCH", str(epoch))
    return BuildOptions(
        context=Path(args.context),
        dockerfile=Path(args.file) if args.file else None,
        tags=tags,
        build_args=build_args,
        target=args.target,
        labels=_pairs(args.labels, "--label"),
        no_cache=args.no_cache,
        outputs=tuple(parse_outputs(args.outputs, tags, args.push, outputs)),
        network=args.network,
        metadata_file=args.metadata_file,
        platforms=platforms,
        source_date_epoch=epoch,
        secrets=_secrets(args.secrets),
        compression=args.compression,
        cache_from=tuple(parse_cache_from(v, backends) for v in args.cache_from),
        cache_to=tuple(parse_cache_to(v, backends) for v in args.cache_to),
    )


def run(args: argparse.Namespace) -> int:
    from kiln.build import run_build
    from kiln.cli.progress import make_progress

    options = options_from_args(args)
    if args.quiet:
        args.progress = "quiet"
    progress = make_progress(args.progress)
    # the tty view is a context manager (its live display); other modes are not
    live = (
        progress
        if isinstance(progress, contextlib.AbstractContextManager)
        else contextlib.nullcontext()
    )
    with live:
        outcome = run_build(options, progress)
    if args.quiet:  # buildx --quiet: the image ID (its config digest)
        print(outcome.image_id)
    elif args.progress == "quiet":
        print(outcome.digest)
    else:
        ran = sum(1 for r in outcome.reports if r.cached is False)
        total = len(outcome.reports)
        print(
            f"built {outcome.digest} ({total - ran}/{total} steps cached)",
            file=sys.stderr,
        )
    if args.explain:
        from kiln.cli.explain import print_table
        from kiln.exporter.metadata import step_json

        print_table([step_json(r) for r in outcome.reports])
    return 0
