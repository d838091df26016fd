"""``kiln login`` and ``kiln logout``: credentials in Docker's ``config.json``.

Like ``docker login``, the credentials are checked against the registry (``GET /v2/``
with the full authentication flow) before they are stored, so a typo fails here rather
than in the middle of a build. ``$DOCKER_CONFIG`` is respected.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any

from kiln.errors import AuthError, UsageError


def register(sub: Any) -> None:
    login = sub.add_parser(
        "login",
        help="log in to a registry",
        description="Verify credentials against a registry and store them in Docker's "
        "config.json ($DOCKER_CONFIG/config.json or ~/.docker/config.json).",
    )
    login.add_argument(
        "registry", nargs="?", default=None, help="registry host[:port] (default docker.io)"
    )
    login.add_argument("-u", "--username", help="user name")
    login.add_argument(
        "-p", "--password", help="password (insecure: visible to other users; prefer stdin)"
    )
    login.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    login.add_argument(
        "--insecure",
        action="store_true",
        help="allow plain HTTP or an unverified certificate for this registry",
    )
    login.set_defaults(handler=run_login)

    logout = sub.add_parser(
        "logout", help="log out of a registry", description="Remove stored credentials."
    )
    logout.add_argument(
        "registry", nargs="?", default=None, help="registry host[:port] (default docker.io)"
    )
    logout.set_defaults(handler=run_logout)


def _registry_host(text: str | None) -> str:
    from kiln.registry.reference import DOCKER_HUB, Reference, normalise_registry

    text = text or DOCKER_HUB
    host = normalise_registry(text)
    try:
        parsed = Reference.parse(f"{host}/kiln-login-check")
    except UsageError:
        parsed = None
    if not host or parsed is None or parsed.registry != host:
        raise UsageError(f"invalid registry {text!r}", hint="expected host[:port], e.g. ghcr.io")
    return host


def _read_secret(args: argparse.Namespace) -> str:
    if args.password is not None and args.password_stdin:
        raise UsageError("--password and --password-stdin are mutually exclusive")
    if args.password_stdin:
        if not args.username:
            raise UsageError("--password-stdin needs --username")
        secret = sys.stdin.read()
        return secret.rstrip("\r\n") if secret.endswith("\n") else secret
    if args.password is not None:
        print(
            "WARNING! Using --password via the CLI is insecure. Use --password-stdin.",
            file=sys.stderr,
        )
        return str(args.password)
    if sys.stdin.isatty():
        return getpass.getpass("Password: ")
    raise UsageError("no password given", hint="pass it on standard input with --password-stdin")


def run_login(args: argparse.Namespace) -> int:
    host = _registry_host(args.registry)
    username = args.username
    if not username:
        if args.password_stdin or not sys.stdin.isatty():
            raise UsageError("no username given", hint="pass one with --username")
        username = input("Username: ").strip()
    password = _read_secret(args)
    if not username or not password:
        raise UsageError("the username and the password must not be empty")
    from kiln.registry.client import RegistryClient
    from kiln.registry.dockerconfig import Credentials, StaticCredentials

    creds = Credentials(username, password)
    with RegistryClient(
        StaticCredentials({host: creds}), insecure={host} if args.insecure else ()
    ) as client:
        try:
            client.ping(host)
        except AuthError as exc:
            raise AuthError(
                f"login to {host} failed: the registry refused the credentials for {username}",
                why=exc.why,
            ) from exc
    from kiln.registry.dockerconfig import DockerConfig

    config = DockerConfig()
    config.store(host, creds)
    print(f"Login Succeeded (credentials stored in {config.path})")
    return 0


def run_logout(args: argparse.Namespace) -> int:
    host = _registry_host(args.registry)
    from kiln.registry.dockerconfig import DockerConfig

    config = DockerConfig()
    if config.remove(host):
        print(f"Removed login credentials for {host} from {config.path}")
    else:
        print(f"Not logged in to {host}")
    return 0
