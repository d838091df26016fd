"""kiln.registry: the OCI distribution client.

Auth (anonymous, basic, bearer token), pull, push, cross-repository mount,
HEAD-before-upload, retries and parallel transfers. The public API::

    from kiln.registry import Reference, RegistryClient, DockerConfig

    with RegistryClient(DockerConfig()) as client:
        image = client.resolve_image(Reference.parse("busybox"), host_platform())
"""

from kiln.http.retry import RetryPolicy
from kiln.http.stats import TransferStats, TransferTotals
from kiln.registry.client import RegistryClient
from kiln.registry.dockerconfig import (
    Anonymous,
    Credentials,
    CredentialSource,
    DockerConfig,
    StaticCredentials,
)
from kiln.registry.manifest import MANIFEST_ACCEPT, Manifest, ResolvedImage
from kiln.registry.reference import Reference
from kiln.registry.upload import BlobPush

__all__ = [
    "MANIFEST_ACCEPT",
    "Anonymous",
    "BlobPush",
    "CredentialSource",
    "Credentials",
    "DockerConfig",
    "Manifest",
    "Reference",
    "RegistryClient",
    "ResolvedImage",
    "RetryPolicy",
    "StaticCredentials",
    "TransferStats",
    "TransferTotals",
]
