"""The GitHub Actions cache client (v1 REST and v2 twirp) behind ``type=gha``."""

from kiln.gha.client.client import GhaClient
from kiln.gha.client.model import GO_VERSION, READ, WRITE, GhaEntry, Scope

__all__ = ["GO_VERSION", "READ", "WRITE", "GhaClient", "GhaEntry", "Scope"]
