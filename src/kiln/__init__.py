"""kiln: daemonless Dockerfile builds with BuildKit-compatible caches for fast CI."""

import sys
import types


def _without_httpx_cli() -> None:
    """``import httpx`` also imports httpx's own command-line client, which loads click,
    rich and pygments (about 80 ms, a tenth of a fully cached build). kiln never runs that
    client, so unless httpx is already loaded its module is registered as a stub whose
    ``main`` says what happened."""
    if "httpx" in sys.modules or "httpx._main" in sys.modules:
        return
    stub = types.ModuleType("httpx._main", "httpx's CLI, not loaded inside kiln")

    def main() -> None:
        raise SystemExit("httpx's command-line client is not available inside kiln")

    stub.main = main  # type: ignore[attr-defined]
    sys.modules["httpx._main"] = stub


_without_httpx_cli()

from kiln.errors import KilnError  # noqa: E402

__version__ = "0.1.0"

__all__ = ["KilnError", "__version__"]
