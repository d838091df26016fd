"""``kiln cache serve``: a self-hosted GitHub Actions cache service (v1 REST + v2 twirp)."""

from kiln.gha.server.app import create_app
from kiln.gha.server.settings import ServerSettings

__all__ = ["ServerSettings", "create_app"]
