"""``kiln cache ...``: the GitHub Actions cache service and its management commands.

- ``serve``: run the cache service (v1 REST + v2 twirp) on one listener;
- ``token``: print a runtime token (``ACTIONS_RUNTIME_TOKEN``) for CI set-up;
- ``ls``, ``rm``, ``stats``: manage a running server through its management API.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kiln.cli import cache_inspect
from kiln.errors import UsageError

DEFAULT_URL_ENV = "KILN_CACHE_URL"
DEFAULT_TOKEN_ENV = "KILN_CACHE_TOKEN"


class _ScopeAction(argparse.Action):
    """``--scope S`` appends a read scope; ``--write`` makes the scope before it writable."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        from kiln.gha.scopes import READ, WRITE

        scopes: list[list[Any]] = list(getattr(namespace, "scopes", None) or [])
        if option_string == "--write":
            if not scopes:
                parser.error("--write must follow the --scope it makes writable")
            scopes[-1] = [scopes[-1][0], scopes[-1][1] | WRITE]
        else:
            if not isinstance(values, str) or not values:
                parser.error("--scope needs a name, e.g. refs/heads/main")
            scopes.append([values, READ])
        namespace.scopes = scopes


def _default_root() -> Path:
    from kiln.state import default_root

    return default_root() / "gha-cache"


def _serve(args: argparse.Namespace) -> int:
    from kiln.gha.server import serve
    from kiln.gha.server.settings import (
        ServerSettings,
        load_or_create_secret,
        parse_duration,
        parse_size,
        read_secret_file,
    )

    root = Path(args.root) if args.root else _default_root()
    secret = (
        read_secret_file(Path(args.secret_file))
        if args.secret_file
        else load_or_create_secret(root / "secret")
    )
    max_size = parse_size(args.max_size, name="--max-size")
    settings = ServerSettings(
        secret=secret,
        max_size=max_size,
        max_entry_size=(
            parse_size(args.max_entry_size, name="--max-entry-size")
            if args.max_entry_size
            else None
        ),
        max_age=parse_duration(args.max_age, name="--max-age"),
        upload_timeout=parse_duration(args.upload_timeout, name="--upload-timeout"),
        reservation_timeout=parse_duration(args.reservation_timeout, name="--reservation-timeout"),
        eviction_interval=parse_duration(args.eviction_interval, name="--eviction-interval"),
        public_url=args.public_url,
        anonymous_scope=args.anonymous_scope,
    )
    serve.configure_logging(args.log_level)
    return serve.run(serve.Listen.parse(args.listen), root, settings, args.database)


def _secret_for(args: argparse.Namespace) -> bytes:
    from kiln.gha.server.settings import read_secret_file

    if args.secret_file:
        return read_secret_file(Path(args.secret_file))
    root = Path(args.root) if getattr(args, "root", None) else _default_root()
    path = root / "secret"
    if not path.exists():
        raise UsageError(
            "no server secret given",
            hint=f"pass --secret-file F (or --root DIR of a server; {path} does not exist)",
        )
    return read_secret_file(path)


def _token(args: argparse.Namespace) -> int:
    from kiln.gha.scopes import Scope
    from kiln.gha.server.settings import Keys, parse_duration
    from kiln.gha.server.tokens import issue_token

    scopes = [Scope(name, perm) for name, perm in (getattr(args, "scopes", None) or [])]
    if not scopes and not args.admin:
        raise UsageError(
            "a token needs at least one --scope (or --admin)",
            hint="kiln cache token --secret-file F --scope refs/heads/main --write",
        )
    key = Keys.derive(_secret_for(args)).jwt
    ttl = parse_duration(args.ttl, name="--ttl")
    print(issue_token(key, scopes, ttl=ttl, admin=args.admin))
    return 0


def _client(args: argparse.Namespace) -> Any:
    from kiln.gha.server.management import ManagementClient
    from kiln.gha.server.settings import Keys
    from kiln.gha.server.tokens import issue_token

    url = args.url or os.environ.get(DEFAULT_URL_ENV)
    if not url:
        raise UsageError("no cache server URL", hint=f"pass --url or set {DEFAULT_URL_ENV}")
    token = args.token or os.environ.get(DEFAULT_TOKEN_ENV)
    if not token:
        if not (args.secret_file or args.root):
            raise UsageError(
                "no token for the cache server",
                hint=f"pass --token (or set {DEFAULT_TOKEN_ENV}), or --secret-file F",
            )
        token = issue_token(Keys.derive(_secret_for(args)).jwt, [], ttl=300, admin=True)
    return ManagementClient(url, token)


def _when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _ls(args: argparse.Namespace) -> int:
    with _client(args) as client:
        entries = client.entries(args.key, args.scope, pending=args.pending)
    if args.json:
        print(json.dumps([_entry_dict(e) for e in entries], indent=2))
        return 0
    print(f"{'ID':>6}  {'SIZE':>12}  {'LAST USED':19}  {'HITS':>5}  {'SCOPE':24}  KEY")
    for e in entries:
        state = "" if e.state == "ready" else f" ({e.state})"
        print(
            f"{e.id:>6}  {e.size:>12}  {_when(e.last_access):19}  {e.hits:>5}  "
            f"{e.scope:24}  {e.key}{state}"
        )
    return 0


def _entry_dict(e: Any) -> dict[str, Any]:
    return {name: getattr(e, name) for name in e.__slots__}


def _rm(args: argparse.Namespace) -> int:
    if not args.ids and args.key is None:
        raise UsageError("nothing to remove", hint="give entry ids, or --key KEY [--prefix]")
    removed = 0
    with _client(args) as client:
        ids = [int(i) for i in args.ids]
        if args.key is not None:
            matches = client.entries(args.key, args.scope, pending=True)
            ids += [e.id for e in matches if args.prefix or e.key == args.key]
        for entry_id in ids:
            gone = client.remove(entry_id)
            print(f"removed {gone.id} {gone.scope} {gone.key} ({gone.size} bytes)")
            removed += 1
    if removed == 0:
        print("no matching entries", file=sys.stderr)
    return 0


def _stats(args: argparse.Namespace) -> int:
    with _client(args) as client:
        stats = client.stats()
    if args.json:
        print(json.dumps(stats, indent=2))
    else:
        for name, value in stats.items():
            print(f"{name}: {value}")
    return 0


def _add_client_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", help=f"the cache server (default: ${DEFAULT_URL_ENV})")
    p.add_argument("--token", help=f"a token of the server (default: ${DEFAULT_TOKEN_ENV})")
    p.add_argument("--secret-file", help="mint a short-lived admin token from the server secret")
    p.add_argument("--root", help="use the secret of the server rooted here")


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "cache", help="self-hosted GitHub Actions cache service and cache management"
    )
    cache_sub = parser.add_subparsers(dest="cache_command", metavar="SUBCOMMAND")
    cache_sub.required = True

    serve = cache_sub.add_parser("serve", help="run the GitHub Actions cache service")
    serve.add_argument("--listen", default="127.0.0.1:8585", help="HOST:PORT (127.0.0.1:8585)")
    serve.add_argument(
        "--root", help="where entries and metadata live (default: $KILN_ROOT/gha-cache)"
    )
    serve.add_argument("--max-size", default="10GB", help="total size cap, LRU beyond (10GB)")
    serve.add_argument("--max-entry-size", help="one entry's cap (default: --max-size)")
    serve.add_argument("--max-age", default="7d", help="evict entries unused this long (7d)")
    serve.add_argument("--upload-timeout", default="1h", help="abandon idle uploads after (1h)")
    serve.add_argument(
        "--reservation-timeout",
        default="2m",
        help="a new save of a key takes over its upload once idle this long (2m)",
    )
    serve.add_argument("--eviction-interval", default="5m", help="background sweep period (5m)")
    serve.add_argument("--secret-file", help="token/URL signing secret (default: ROOT/secret)")
    serve.add_argument("--public-url", help="base URL clients reach the server at")
    serve.add_argument(
        "--database", help="postgresql://… to share metadata between instances (default: SQLite)"
    )
    serve.add_argument(
        "--anonymous-scope",
        metavar="SCOPE",
        help="trusted networks only: requests without a valid token read and write SCOPE",
    )
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    serve.set_defaults(handler=_serve)

    token = cache_sub.add_parser("token", help="print a runtime token for ACTIONS_RUNTIME_TOKEN")
    token.add_argument("--secret-file", help="the server's secret file")
    token.add_argument("--root", help="use the secret of the server rooted here")
    token.add_argument("--scope", action=_ScopeAction, help="a scope, in lookup order (repeatable)")
    token.add_argument(
        "--write", action=_ScopeAction, nargs=0, help="make the preceding --scope writable"
    )
    token.add_argument("--admin", action="store_true", help="allow the management API")
    token.add_argument("--ttl", default="24h", help="lifetime (24h)")
    token.set_defaults(handler=_token, scopes=None)

    ls = cache_sub.add_parser("ls", help="list the entries of a running server")
    _add_client_options(ls)
    ls.add_argument("--key", default="", help="only keys starting with this")
    ls.add_argument("--scope", help="only this scope")
    ls.add_argument("--pending", action="store_true", help="include uploads in progress")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(handler=_ls)

    rm = cache_sub.add_parser("rm", help="remove entries from a running server")
    _add_client_options(rm)
    rm.add_argument("ids", nargs="*", type=int, help="entry ids (see kiln cache ls)")
    rm.add_argument("--key", help="remove the entries with this key (every version)")
    rm.add_argument("--prefix", action="store_true", help="--key is a prefix")
    rm.add_argument("--scope", help="only in this scope")
    rm.set_defaults(handler=_rm)

    cache_inspect.register(cache_sub)

    stats = cache_sub.add_parser("stats", help="entries, bytes, hits, misses, evictions")
    _add_client_options(stats)
    stats.add_argument("--json", action="store_true")
    stats.set_defaults(handler=_stats)
