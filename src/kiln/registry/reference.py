"""Image references (``[registry/]repository[:tag][@digest]``) with Docker's normalisation.

``busybox`` means ``docker.io/library/busybox:latest``; the first path component is a
registry host only when it looks like one (contains ``.`` or ``:``, or is ``localhost``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from kiln.errors import UsageError

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
DEFAULT_TAG = "latest"

# Aliases Docker accepts for Docker Hub.
_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})

_DOMAIN_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_RE = re.compile(rf"^(?:{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?$")
_PATH_PART_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_MAX_NAME = 255


@dataclass(frozen=True, slots=True)
class Reference:
    """A normalised image reference. ``tag`` and ``digest`` may both be set."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, text: str) -> Reference:
        """Parse *text* with Docker's rules; raise :class:`UsageError` naming it if invalid."""
        try:
            return _parse(text)
        except ValueError as exc:
            raise UsageError(
                f"invalid image reference {text!r}",
                why=str(exc),
                hint="expected [registry/]repository[:tag][@sha256:<hex>], e.g. "
                "docker.io/library/busybox:latest",
            ) from exc

    def __str__(self) -> str:
        out = f"{self.registry}/{self.repository}"
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out

    @property
    def name(self) -> str:
        """``registry/repository`` without tag or digest."""
        return f"{self.registry}/{self.repository}"

    @property
    def tag_or_default(self) -> str:
        """The tag, or ``latest`` for a reference pinned by digest alone."""
        return self.tag or DEFAULT_TAG

    @property
    def repo_ref(self) -> Reference:
        """The repository alone (no tag, no digest)."""
        return Reference(self.registry, self.repository)

    @property
    def api_host(self) -> str:
        """The host (and port) the registry API is served on."""
        return api_host(self.registry)

    @property
    def reference(self) -> str:
        """What goes after ``/manifests/``: the digest if pinned, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    def with_tag(self, tag: str) -> Reference:
        """The same repository at *tag* (any digest is dropped)."""
        if not _TAG_RE.match(tag):
            raise UsageError(f"invalid tag {tag!r} for {self.name}")
        return Reference(self.registry, self.repository, tag, None)

    def with_digest(self, digest: str) -> Reference:
        """The same reference pinned to *digest* (the tag is kept for display)."""
        if not _DIGEST_RE.match(digest):
            raise UsageError(f"invalid digest {digest!r} for {self.name}")
        return replace(self, digest=digest)


def api_host(registry: str) -> str:
    """Where *registry*'s API lives (Docker Hub's is not at ``docker.io``)."""
    return DOCKER_HUB_API if registry == DOCKER_HUB else registry


def normalise_registry(host: str) -> str:
    """Map Docker Hub's aliases (and URLs like ``https://index.docker.io/v1/``) to a host."""
    value = host.strip()
    for prefix in ("https://", "http://"):
        if value.startswith(prefix):
            value = value[len(prefix) :]
    value = value.split("/", 1)[0].lower()
    return DOCKER_HUB if value in _HUB_ALIASES else value


def _parse(text: str) -> Reference:
    if not text or text != text.strip():
        raise ValueError("empty or padded with whitespace")
    remainder = text
    digest: str | None = None
    if "@" in remainder:
        remainder, digest = remainder.split("@", 1)
        if not _DIGEST_RE.match(digest):
            raise ValueError(f"digest {digest!r} is not sha256:<64 lowercase hex digits>")
    tag: str | None = None
    last = remainder.rfind(":")
    if last > remainder.rfind("/"):
        remainder, tag = remainder[:last], remainder[last + 1 :]
        if not _TAG_RE.match(tag):
            raise ValueError(f"tag {tag!r} is not valid")
    if not remainder:
        raise ValueError("repository name is empty")
    registry, path = _split_domain(remainder)
    if len(registry) + 1 + len(path) > _MAX_NAME:
        raise ValueError(f"name longer than {_MAX_NAME} characters")
    for part in path.split("/"):
        if not _PATH_PART_RE.match(part):
            if part.lower() != part and _PATH_PART_RE.match(part.lower()):
                raise ValueError("repository name must be lowercase")
            raise ValueError(f"repository path component {part!r} is not valid")
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return Reference(registry, path, tag, digest)


def _split_domain(name: str) -> tuple[str, str]:
    first, sep, rest = name.partition("/")
    looks_like_host = sep and (
        ("." in first or ":" in first) or first == "localhost" or first != first.lower()
    )
    if not looks_like_host:
        registry, path = DOCKER_HUB, name
    else:
        if not _DOMAIN_RE.match(first):
            raise ValueError(f"registry host {first!r} is not valid")
        registry, path = first, rest
        if registry.lower() in _HUB_ALIASES:
            registry = DOCKER_HUB
    if registry == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"
    return registry, path
