"""kiln's entry point: sub-command dispatch and the one top-level error handler."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence

from kiln import __version__
from kiln.errors import KilnError

Handler = Callable[[argparse.Namespace], int]


def _version(_: argparse.Namespace) -> int:
    print(f"kiln {__version__}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from kiln.cli import build as build_cmd
    from kiln.cli import cache as cache_cmd
    from kiln.cli import explain as explain_cmd
    from kiln.cli import imagetools as imagetools_cmd
    from kiln.cli import login as login_cmd
    from kiln.cli import prune as prune_cmd
    from kiln.cli import qemu as qemu_cmd

    parser = argparse.ArgumentParser(
        prog="kiln", description="Daemonless container builds with fast CI caches."
    )
    parser.add_argument("--debug", action="store_true", help="print tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    build_cmd.register(sub)
    login_cmd.register(sub)
    cache_cmd.register(sub)
    qemu_cmd.register(sub)
    imagetools_cmd.register(sub)
    prune_cmd.register(sub)
    explain_cmd.register(sub)
    version = sub.add_parser("version", help="print kiln's version")
    version.set_defaults(handler=_version)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    # --debug is accepted anywhere on the line, like buildx's global flag.
    debug = "--debug" in args_list
    parser = build_parser()
    args = parser.parse_args(args_list)
    debug = debug or bool(getattr(args, "debug", False))
    import logging  # after parsing: `--help` needs none of it

    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    handler: Handler = args.handler
    # a cancelled CI job sends SIGTERM: stop as on Ctrl-C, so every cleanup runs (running
    # steps killed, mounts undone, secret copies removed)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if main_thread else None
    try:
        return _run(handler, args, debug)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


def annotation(exc: KilnError) -> str:
    """The error as a GitHub workflow command (``::error file=…,line=…::``), its file
    relative to the workspace, so the run's page shows it on the Dockerfile line."""

    def escape(text: str, *, prop: bool = False) -> str:
        text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
        return text.replace(":", "%3A").replace(",", "%2C") if prop else text

    props = []
    if exc.location is not None:
        path, line = exc.location
        workspace = os.environ.get("GITHUB_WORKSPACE", "")
        if workspace and os.path.isabs(path) and path.startswith(workspace.rstrip("/") + "/"):
            path = os.path.relpath(path, workspace)
        props += [f"file={escape(path, prop=True)}", f"line={line}"]
    props.append("title=kiln build failed")
    return f"::error {','.join(props)}::{escape(str(exc))}"


def _run(handler: Handler, args: argparse.Namespace, debug: bool) -> int:
    try:
        return handler(args)
    except KilnError as exc:
        if debug:
            import traceback

            traceback.print_exc()
        print(f"ERROR: {exc}", file=sys.stderr)
        if os.environ.get("GITHUB_ACTIONS") == "true":
            print(annotation(exc), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("ERROR: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # the last line of defence: never a bare traceback
        if debug:
            import traceback

            traceback.print_exc()
        print(
            f"ERROR: internal error: {type(exc).__name__}: {exc}\n"
            "hint: run again with --debug for a traceback, and report it",
            file=sys.stderr,
        )
        return 70


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
