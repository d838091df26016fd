"""The one error root of kiln.

Every failure a user can cause or meet is a :class:`KilnError` carrying user-facing
fields: *what* happened, *why* (optional detail) and a *hint* (what to do). The CLI's
single handler prints them and maps the family to an exit code; tracebacks only appear
with ``--debug``. Errors from libraries (httpx, subprocess, the OCI runtime) are
translated at the edge with ``raise ... from exc``. An error gains context (the
Dockerfile line, the build step) through :meth:`KilnError.prefixed`, which returns a new
error; errors are never edited in flight.

Exit codes, one per family, everywhere:

- **2** — the input is wrong, nothing was built: :class:`UsageError` (a flag, an
  attribute, a value), :class:`DockerfileError`, :class:`ContextError`;
- **1** — the build failed: a step (:class:`StepFailedError`), a registry or cache
  (:class:`RegistryError`, :class:`CacheError`), the runtime (:class:`RuntimeFailure`),
  or anything else reported as a plain :class:`KilnError` (a file that cannot be written);
- **70** — an internal error (a bug: the CLI prints no traceback without ``--debug``);
- **130** — interrupted.
"""

from __future__ import annotations

from typing import Self


class KilnError(Exception):
    """Base of every user-facing error; *location* (file, line) when a Dockerfile line is
    to blame (a CI annotation points there)."""

    exit_code = 1
    location: tuple[str, int] | None = None

    def __init__(self, what: str, *, why: str | None = None, hint: str | None = None) -> None:
        super().__init__(what)
        self.what = what
        self.why = why
        self.hint = hint

    def prefixed(self, prefix: str) -> Self:
        """A new error of the same family and fields whose *what* starts with *prefix*
        (where it happened: a Dockerfile line, a build step); this one is left as it was."""
        new = type(self).__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.what = f"{prefix}: {self.what}"
        new.args = (new.what,)
        return new

    def at(self, path: str, line: int) -> Self:
        """A new error like this one, blamed on *path* line *line*."""
        new = type(self).__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.args = self.args
        new.location = (path, line)
        return new

    def __str__(self) -> str:
        parts = [self.what]
        if self.why:
            parts.append(self.why)
        if self.hint:
            parts.append(f"hint: {self.hint}")
        return "\n".join(parts)


class UsageError(KilnError):
    """Bad command-line input: a flag, an attribute, a value."""

    exit_code = 2


class DockerfileError(KilnError):
    """A Dockerfile that cannot be parsed or built; names the file and line."""

    exit_code = 2

    def __init__(
        self,
        what: str,
        *,
        path: str,
        line: int | None = None,
        why: str | None = None,
        hint: str | None = None,
    ) -> None:
        where = f"{path}:{line}" if line else path
        super().__init__(f"{where}: {what}", why=why, hint=hint)
        self.path = path
        self.line = line
        if line:
            self.location = (path, line)


class ContextError(KilnError):
    """A build-context problem: a missing COPY source, a path outside the context."""

    exit_code = 2


class StepFailedError(KilnError):
    """A RUN step exited non-zero."""

    exit_code = 1


class RegistryError(KilnError):
    """A registry could not be reached, refused us, or answered nonsense."""

    exit_code = 1


class AuthError(RegistryError):
    """A registry refused our credentials (401/403)."""


class NotFoundError(RegistryError):
    """A manifest or blob does not exist in a registry."""


class BlobUnavailableError(KilnError):
    """A blob cannot be used: gone from where it was expected, or corrupt. When a cached
    result names it, the result is forgotten and its step runs instead."""

    def __init__(self, what: str, *, digest: str, why: str | None = None) -> None:
        super().__init__(what, why=why)
        self.digest = digest


class CorruptBlobError(RegistryError, BlobUnavailableError):
    """A blob's bytes do not match its digest (in a registry or a cache): never used."""

    def __init__(self, what: str, *, digest: str, why: str | None = None) -> None:
        BlobUnavailableError.__init__(self, what, digest=digest, why=why)


class CacheError(KilnError):
    """A remote cache could not be read or written."""


class MissingBlobError(CacheError, BlobUnavailableError):
    """A cache names a blob that is no longer there (evicted, deleted)."""

    def __init__(self, what: str, *, digest: str, why: str | None = None) -> None:
        BlobUnavailableError.__init__(self, what, digest=digest, why=why)


class RuntimeFailure(KilnError):
    """The OCI runtime, overlayfs or another system component failed."""

    exit_code = 1
