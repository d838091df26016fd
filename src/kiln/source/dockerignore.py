""".dockerignore with Docker's semantics (moby/patternmatcher, BuildKit's context transfer).

* The ignore file is ``<Dockerfile>.dockerignore`` next to the Dockerfile when that exists,
  else ``<context>/.dockerignore``; never both.
* Lines starting with ``#`` are comments; patterns are trimmed, cleaned like Go's
  ``filepath.Clean`` and lose a leading ``/``; ``!`` makes an exception.
* The last pattern that matches a path *or one of its parent directories* decides:
  ``docs`` excludes ``docs/a/b``, a later ``!docs/a`` re-includes it.
* ``*``, ``?`` and ``[...]`` follow Go's ``filepath.Match`` and never cross a ``/``
  (except inside a class); ``**`` matches any number of directories, also none.

An excluded path is absent from the context as COPY sees it; an excluded directory still
exists when an exception re-includes something below it, holding only that.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from kiln.errors import ContextError

DOCKERIGNORE = ".dockerignore"
_BOM = "\ufeff"
# characters that make fsutil give up pruning excluded directories (see could_reinclude)
_PATTERN_CHARS = frozenset("*[]?^\\")


def go_clean(path: str) -> str:
    """Go's ``path.Clean``: like ``posixpath.normpath`` but ``//x`` becomes ``/x``."""
    out = posixpath.normpath(path)
    if out.startswith("//"):
        out = "/" + out.lstrip("/")
    return out


# ---------------------------------------------------------------------------- reading


def parse_ignore_text(text: str) -> list[str]:
    """The patterns of an ignore file's text (``ignorefile.ReadAll``)."""
    out: list[str] = []
    for index, line in enumerate(text.split("\n")):
        if line.endswith("\r"):
            line = line[:-1]
        if index == 0 and line.startswith(_BOM):
            line = line[1:]
        if line.startswith("#"):
            continue
        pattern = line.strip()
        if not pattern:
            continue
        invert = pattern.startswith("!")
        if invert:
            pattern = pattern[1:].strip()
        if pattern:
            pattern = go_clean(pattern)
            if len(pattern) > 1 and pattern.startswith("/"):
                pattern = pattern[1:]
        out.append("!" + pattern if invert else pattern)
    return out


def ignore_file_for(context_dir: Path, dockerfile: Path | None) -> Path | None:
    """Which ignore file applies, if any."""
    if dockerfile is not None:
        specific = dockerfile.parent / (dockerfile.name + DOCKERIGNORE)
        if specific.is_file():
            return specific
    general = context_dir / DOCKERIGNORE
    return general if general.is_file() else None


def load_ignore_patterns(context_dir: Path, dockerfile: Path | None) -> list[str]:
    """The patterns that apply to *context_dir* built with *dockerfile*."""
    path = ignore_file_for(context_dir, dockerfile)
    if path is None:
        return []
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ContextError(f"cannot read {path}", why=exc.strerror) from exc
    # undecodable bytes survive as the same surrogates os.fsdecode gives file names
    return parse_ignore_text(data.decode("utf-8", "surrogateescape"))


# ---------------------------------------------------------------------------- globbing


class PatternSyntaxError(ValueError):
    """A pattern Go's ``filepath.Match`` would reject (``ErrBadPattern``)."""


def _class_char(pattern: str, i: int) -> tuple[str, int]:
    """One (possibly escaped) character inside ``[...]``."""
    if i >= len(pattern) or pattern[i] in "-]":
        raise PatternSyntaxError(f"syntax error in pattern {pattern!r}")
    if pattern[i] == "\\":
        i += 1
        if i >= len(pattern):
            raise PatternSyntaxError(f"syntax error in pattern {pattern!r}")
    return pattern[i], i + 1


def _translate_class(pattern: str, i: int) -> tuple[str, int]:
    """``[...]`` starting after the ``[`` at ``i``: the regex and the index after ``]``."""
    negate = i < len(pattern) and pattern[i] == "^"
    if negate:
        i += 1
    items: list[str] = []
    count = 0
    while True:
        if i < len(pattern) and pattern[i] == "]" and count > 0:
            i += 1
            break
        lo, i = _class_char(pattern, i)
        hi = lo
        if i < len(pattern) and pattern[i] == "-":
            hi, i = _class_char(pattern, i + 1)
        count += 1
        if lo <= hi:  # Go accepts an inverted range; it matches nothing
            items.append(re.escape(lo) if lo == hi else f"{re.escape(lo)}-{re.escape(hi)}")
    if not items:
        return ("(?s:.)" if negate else "(?!)"), i
    return ("[^" if negate else "[") + "".join(items) + "]", i


def translate_glob(pattern: str) -> str:
    """A Go ``path.Match`` pattern as a regex body (for ``re.fullmatch``).

    ``*`` is any run of non-``/`` characters, ``?`` one non-``/`` character, ``[...]`` a
    class (``^`` negates, ``\\`` escapes), ``\\x`` a literal ``x``.
    """
    out: list[str] = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        i += 1
        if ch == "*":
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "[":
            text, i = _translate_class(pattern, i)
            out.append(text)
        elif ch == "\\":
            if i >= len(pattern):
                raise PatternSyntaxError(f"syntax error in pattern {pattern!r}")
            out.append(re.escape(pattern[i]))
            i += 1
        else:
            out.append(re.escape(ch))
    return "".join(out)


def contains_wildcards(name: str) -> bool:
    """Whether a COPY source is a glob (``*``, ``?`` or ``[`` not escaped by ``\\``)."""
    i = 0
    while i < len(name):
        ch = name[i]
        if ch == "\\":
            i += 2
            continue
        if ch in "*?[":
            return True
        i += 1
    return False


# ---------------------------------------------------------------------------- matching


class _Kind(Enum):
    EXACT = 1
    PREFIX = 2
    SUFFIX = 3
    REGEX = 4


@dataclass(frozen=True, slots=True)
class _Pattern:
    text: str  # cleaned, without the '!'
    exclusion: bool
    kind: _Kind
    regex: re.Pattern[str] | None

    def match(self, path: str) -> bool:
        if self.kind is _Kind.EXACT:
            return path == self.text
        if self.kind is _Kind.PREFIX:
            return path.startswith(self.text[:-2])
        if self.kind is _Kind.SUFFIX:
            suffix = self.text[2:]
            if path.endswith(suffix):
                return True
            # "**/foo" also matches "foo" itself
            return suffix.startswith("/") and path == suffix[1:]
        assert self.regex is not None
        return self.regex.fullmatch(path) is not None


def _compile(text: str, exclusion: bool) -> _Pattern:
    """patternmatcher's classification: exact, ``dir/**`` prefix, ``**/x`` suffix, else regex."""
    out: list[str] = []
    kind = _Kind.EXACT
    i = 0
    first = True
    while i < len(text):
        ch = text[i]
        i += 1
        if ch == "*":
            if i < len(text) and text[i] == "*":
                i += 1
                if i < len(text) and text[i] == "/":
                    i += 1  # "**/" is "**"
                if i >= len(text):
                    if kind is _Kind.EXACT:
                        kind = _Kind.PREFIX
                    else:
                        out.append(".*")
                        kind = _Kind.REGEX
                else:
                    out.append("(?:.*/)?")
                    kind = _Kind.REGEX
                if first:
                    kind = _Kind.SUFFIX
            else:
                out.append("[^/]*")
                kind = _Kind.REGEX
        elif ch == "?":
            out.append("[^/]")
            kind = _Kind.REGEX
        elif ch == "\\":
            if i < len(text):
                out.append(re.escape(text[i]))
                i += 1
                kind = _Kind.REGEX
            else:
                out.append(re.escape("\\"))
        elif ch == "[":
            part, i = _translate_class(text, i)
            out.append(part)
            kind = _Kind.REGEX
        elif ch == "]":
            out.append(re.escape(ch))
            kind = _Kind.REGEX
        else:
            out.append(re.escape(ch))
        first = False
    regex = re.compile("".join(out)) if kind is _Kind.REGEX else None
    return _Pattern(text, exclusion, kind, regex)


def _strip_trailing_glob(text: str) -> str:
    for tail in ("/**", "/*"):
        if text.endswith(tail):
            return text[: -len(tail)]
    return text


MatchState = tuple[bool, ...]
"""For one path, whether each pattern matched the path or one of its parents."""


class IgnoreMatcher:
    """Decides which context paths a set of ``.dockerignore`` patterns excludes."""

    __slots__ = ("_exceptions", "_patterns", "_prefix_only_exceptions", "source")

    def __init__(self, patterns: Sequence[str], *, source: str = DOCKERIGNORE) -> None:
        self.source = source
        compiled: list[_Pattern] = []
        for raw in patterns:
            text = raw.strip()
            if not text:
                continue
            text = go_clean(text)
            exclusion = text.startswith("!")
            if exclusion:
                if len(text) == 1:
                    raise ContextError(f'{source}: illegal exclusion pattern: "!"')
                text = text[1:]
            try:
                translate_glob(text)  # Go's filepath.Match syntax check, as patternmatcher does
                compiled.append(_compile(text, exclusion))
            except (PatternSyntaxError, re.error) as exc:
                raise ContextError(f"{source}: invalid pattern {raw.strip()!r}") from exc
        self._patterns = tuple(compiled)
        self._exceptions = tuple(p for p in compiled if p.exclusion)
        self._prefix_only_exceptions = not any(
            _PATTERN_CHARS.intersection(_strip_trailing_glob(p.text)) for p in self._exceptions
        )

    @property
    def patterns(self) -> list[str]:
        """The cleaned patterns, exceptions with their ``!``."""
        return [("!" if p.exclusion else "") + p.text for p in self._patterns]

    @property
    def has_exceptions(self) -> bool:
        return bool(self._exceptions)

    def __bool__(self) -> bool:
        return bool(self._patterns)

    def matches(self, rel_path: str) -> bool:
        """Whether *rel_path* (``/``-separated, relative to the context) is excluded."""
        path = go_clean(rel_path).lstrip("/")
        if not self._patterns or path in ("", "."):
            return False
        state: MatchState | None = None
        parts = path.split("/")
        for depth in range(1, len(parts) + 1):
            state = self.match_state("/".join(parts[:depth]), state)
        assert state is not None
        return self.is_excluded(state)

    def match_state(self, rel_path: str, parent: MatchState | None) -> MatchState:
        """The state of *rel_path* given its parent directory's state (``None`` at the top).

        Walking a tree this way costs one test per pattern per path, and gives the same
        answers as patternmatcher's ``MatchesOrParentMatches``.
        """
        if parent is None:
            return tuple(p.match(rel_path) for p in self._patterns)
        return tuple(
            hit or p.match(rel_path) for hit, p in zip(parent, self._patterns, strict=True)
        )

    def is_excluded(self, state: MatchState) -> bool:
        """The last pattern that matched decides; nothing matched means included."""
        for hit, pattern in zip(reversed(state), reversed(self._patterns), strict=True):
            if hit:
                return not pattern.exclusion
        return False

    def could_reinclude(self, dir_rel_path: str) -> bool:
        """Whether an exception might re-include something below an excluded directory.

        False means the directory can be skipped without looking inside. Like BuildKit's
        fsutil, exceptions with wildcards (before a trailing ``/*`` or ``/**``) make every
        excluded directory worth walking.
        """
        if not self._exceptions:
            return False
        if not self._prefix_only_exceptions:
            return True
        prefix = go_clean(dir_rel_path).lstrip("/") + "/"
        return any(
            (_strip_trailing_glob(p.text) + "/").startswith(prefix) for p in self._exceptions
        )
