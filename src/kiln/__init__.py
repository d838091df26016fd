"""kiln: daemonless Dockerfile builds with BuildKit-compatible caches for fast CI."""

from kiln.errors import KilnError

__version__ = "0.1.0"

__all__ = ["KilnError", "__version__"]
