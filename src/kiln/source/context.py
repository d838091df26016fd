"""The build context as COPY/ADD see it: selecting sources, walking them, digesting them.

What a COPY source means follows BuildKit (``dockerfile2llb`` copy options, fsutil's
copy and BuildKit's content hashing):

* a source is relative to the context root; a leading ``/`` is the root itself. A path
  that climbs out of the root with ``..`` is an error here (BuildKit would silently clamp
  it to the root, which hides the mistake);
* a source whose final component is a symlink is followed (``FollowSymlinks``); symlinks
  are resolved *inside* the root, absolute targets included, like a chroot; symlinks
  below a selected directory are copied as symlinks;
* a wildcard (``*``, ``?``, ``[...]`` per Go's ``path.Match``) is split at its first
  wildcard component: the part before is resolved as a path, the rest is matched against
  the entries below it, without descending into a matched directory. A wildcard that
  matches nothing selects nothing and is not an error (``AllowEmptyWildcard``), but a
  missing directory before the wildcard is;
* what ``.dockerignore`` excludes does not exist; an excluded directory exists only when
  an exception re-includes something below it, and then holds only that.

:meth:`BuildContext.digest` is the content key of a COPY: it changes exactly when
something that affects the copied result changes (names, types, permission bits,
contents, symlink targets, ``--chown``/``--chmod``), never with mtimes or source owners.
File hashes come from :class:`~kiln.source.filehash.FileHasher` (remembered in-process
and, with ``memo_dir``, across runs).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from kiln.errors import ContextError, DockerfileError
from kiln.source.dockerignore import (
    IgnoreMatcher,
    MatchState,
    contains_wildcards,
    ignore_file_for,
    load_ignore_patterns,
    translate_glob,
)
from kiln.source.filehash import FileHasher
from kiln.source.tree import FileTree, TreeRow, fingerprint
from kiln.timing import timed

EntryKind = Literal["file", "dir", "symlink"]
_MAX_SYMLINKS = 40  # like Linux's MAXSYMLINKS


@dataclass(frozen=True, slots=True)
class SourceMatch:
    """One selected source.

    ``rel_path`` is the path as the Dockerfile named it (relative to the context root,
    ``.`` for the root; for a wildcard, the matched path), so its base name is the name a
    copied file gets; ``abs_path`` is where the content really is, symlinks resolved.
    """

    rel_path: str
    abs_path: Path
    is_dir: bool


@dataclass(frozen=True, slots=True)
class ContextEntry:
    """One entry below a selected source (``rel`` is ``""`` for the source itself)."""

    rel: str
    abs_path: Path
    kind: EntryKind
    mode: int  # permission bits, setuid/setgid/sticky included
    size: int
    link_target: str | None = None


def _kind(mode: int) -> EntryKind | None:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    return None  # sockets, fifos, devices: never part of a copy here


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def _shown(rel: str) -> str:
    return "/" + rel


class BuildContext:
    """A directory used as a build context (or a stage's root filesystem for COPY --from)."""

    def __init__(
        self, root: Path, ignore: IgnoreMatcher | None = None, *, memo_dir: Path | None = None
    ) -> None:
        self.root = Path(os.path.realpath(root))
        if not self.root.is_dir():
            raise ContextError(f"build context {root} is not a directory")
        self.ignore = ignore if ignore is not None else IgnoreMatcher([])
        self._hasher = FileHasher(self.root, memo_dir)
        self._rows: dict[str, list[TreeRow]] = {}
        self._trees: dict[str, FileTree] = {}
        self._encoded: dict[str, str | None] = {}
        self._lock = threading.Lock()

    @classmethod
    def open(
        cls, root: Path, dockerfile: Path | None = None, *, memo_dir: Path | None = None
    ) -> BuildContext:
        """A context with the ``.dockerignore`` that applies to *dockerfile* loaded."""
        source = ignore_file_for(root, dockerfile)
        patterns = load_ignore_patterns(root, dockerfile)
        shown = source.name if source is not None else ".dockerignore"
        return cls(root, IgnoreMatcher(patterns, source=shown), memo_dir=memo_dir)

    # ------------------------------------------------------------------ selecting

    def select(self, sources: Sequence[str]) -> list[SourceMatch]:
        """The matches of every source, in order (a wildcard can give none or many)."""
        out: list[SourceMatch] = []
        for source in sources:
            out.extend(self._select_one(source))
        return out

    def _select_one(self, source: str) -> list[SourceMatch]:
        rel = self._normalize(source)
        if not contains_wildcards(rel):
            return [self._single(rel)]
        return self._glob(rel)

    def _normalize(self, source: str) -> str:
        parts: list[str] = []
        for part in source.split("/"):
            if part in ("", "."):
                continue
            if part == "..":
                if not parts:
                    raise ContextError(
                        f'source "{source}" is outside the build context',
                        hint="sources are relative to the build context; "
                        "move the file into it or use a larger context",
                    )
                parts.pop()
                continue
            parts.append(part)
        return "/".join(parts)

    def _not_found(self, rel: str) -> ContextError:
        hint = None
        if os.path.lexists(self.root / rel) and self.ignore.matches(rel):
            hint = f"it is excluded by {self.ignore.source}"
        return ContextError(f'"{_shown(rel)}": not found', hint=hint)

    def _single(self, rel: str) -> SourceMatch:
        resolved = self._resolve(rel)
        if resolved is None:
            raise self._not_found(rel)
        real, st = resolved
        if not self._present(real, st):
            raise self._not_found(rel)
        return self._match(rel or ".", real, st)

    def _match(self, named: str, real: str, st: os.stat_result) -> SourceMatch:
        kind = _kind(st.st_mode)
        if kind not in ("file", "dir"):
            raise ContextError(f'"{_shown(named)}": not a regular file or directory')
        return SourceMatch(named, self.root / real if real else self.root, kind == "dir")

    def _resolve(self, rel: str) -> tuple[str, os.stat_result] | None:
        """Follow *rel* inside the root, symlinks included; None when it does not exist.

        A symlink that is itself excluded by .dockerignore is not in the context, so it
        cannot be followed either.
        """
        todo = [p for p in reversed(rel.split("/")) if p]
        current: list[str] = []
        hops = 0
        st = os.lstat(self.root)
        while todo:
            name = todo.pop()
            if name in ("", "."):
                continue
            if name == "..":
                if current:
                    current.pop()
                st = os.lstat(self.root.joinpath(*current))
                continue
            candidate = _join("/".join(current), name)
            try:
                st = os.lstat(self.root / candidate)
            except (FileNotFoundError, NotADirectoryError):
                return None
            except OSError as exc:
                raise ContextError(f'cannot read "{_shown(candidate)}"', why=exc.strerror) from exc
            if stat.S_ISLNK(st.st_mode):
                if self.ignore and self.ignore.matches(candidate):
                    return None
                hops += 1
                if hops > _MAX_SYMLINKS:
                    raise ContextError(f'"{_shown(rel)}": too many levels of symbolic links')
                target = os.readlink(self.root / candidate)
                if target.startswith("/"):
                    current = []
                todo.extend(p for p in reversed(target.split("/")) if p)
                st = os.lstat(self.root.joinpath(*current))
                continue
            if todo and not stat.S_ISDIR(st.st_mode):
                return None
            current.append(name)
        return "/".join(current), st

    def _present(self, real: str, st: os.stat_result) -> bool:
        """Whether an existing path survives .dockerignore."""
        if not real or not self.ignore:
            return True
        state = self._state_of(real)
        if not self.ignore.is_excluded(state):
            return True
        if not stat.S_ISDIR(st.st_mode) or not self.ignore.could_reinclude(real):
            return False
        return next(self._walk_dir(real, "", state, []), None) is not None

    def _state_of(self, real: str) -> MatchState:
        state: MatchState | None = None
        parts = real.split("/")
        for depth in range(1, len(parts) + 1):
            state = self.ignore.match_state("/".join(parts[:depth]), state)
        assert state is not None
        return state

    def _glob(self, rel: str) -> list[SourceMatch]:
        parts = rel.split("/")
        cut = next(i for i, p in enumerate(parts) if contains_wildcards(p))
        named_base = "/".join(parts[:cut])
        pattern = "/".join(parts[cut:])
        try:
            regex = re.compile(translate_glob(pattern), re.DOTALL)
        except (ValueError, re.error) as exc:
            raise ContextError(f'invalid wildcard in COPY source "{rel}"') from exc
        resolved = self._resolve(named_base)
        if resolved is None or not self._present(*resolved):
            raise self._not_found(named_base)
        base, base_st = resolved
        if not stat.S_ISDIR(base_st.st_mode):
            return []
        max_depth = None if "[" in pattern else len(parts) - cut
        state = self._state_of(base) if base and self.ignore else None
        out: list[SourceMatch] = []
        self._glob_dir(base, "", state, regex, max_depth, named_base, out)
        return out

    def _glob_dir(
        self,
        real_dir: str,
        rel_dir: str,
        state: MatchState | None,
        regex: re.Pattern[str],
        max_depth: int | None,
        named_base: str,
        out: list[SourceMatch],
    ) -> None:
        depth = rel_dir.count("/") + 2 if rel_dir else 1
        for name, st in self._listdir(real_dir):
            real = _join(real_dir, name)
            rel = _join(rel_dir, name)
            child_state = self.ignore.match_state(real, state) if self.ignore else None
            excluded = child_state is not None and self.ignore.is_excluded(child_state)
            is_dir = stat.S_ISDIR(st.st_mode)
            if regex.fullmatch(rel):
                if excluded and not (is_dir and self._present(real, st)):
                    continue
                named = _join(named_base, rel)
                if stat.S_ISLNK(st.st_mode):
                    target = self._resolve(named)
                    if target is None or not self._present(*target):
                        raise self._not_found(named)
                    out.append(self._match(named, *target))
                elif _kind(st.st_mode) is not None:
                    out.append(self._match(named, real, st))
                continue
            if not is_dir or (max_depth is not None and depth >= max_depth):
                continue
            if excluded and not self.ignore.could_reinclude(real):
                continue
            self._glob_dir(real, rel, child_state, regex, max_depth, named_base, out)

    # ------------------------------------------------------------------ walking

    def _listdir(self, real_dir: str) -> list[tuple[str, os.stat_result]]:
        path = self.root / real_dir if real_dir else self.root
        try:
            with os.scandir(path) as it:
                found = [(e.name, e.stat(follow_symlinks=False)) for e in it]
        except OSError as exc:
            raise ContextError(f'cannot read "{_shown(real_dir)}"', why=exc.strerror) from exc
        found.sort(key=lambda item: item[0])
        return found

    def walk(self, match: SourceMatch) -> Iterator[ContextEntry]:
        """The selected file, or the directory and everything in it that .dockerignore
        keeps, parents before children, names sorted."""
        for entry, _ in self._walk_with_stat(match):
            yield entry

    def _walk_with_stat(self, match: SourceMatch) -> Iterator[tuple[ContextEntry, os.stat_result]]:
        try:
            st = os.lstat(match.abs_path)
        except OSError as exc:
            raise ContextError(f'cannot read "{match.abs_path}"', why=exc.strerror) from exc
        yield self._entry("", match.abs_path, st), st
        if not match.is_dir:
            return
        real = self._real_rel(match.abs_path)
        state = self._state_of(real) if real and self.ignore else None
        yield from self._walk_dir(real, "", state, [])

    def _real_rel(self, abs_path: Path) -> str:
        rel = os.path.relpath(abs_path, self.root)
        return "" if rel == "." else rel

    def _entry(self, rel: str, path: Path, st: os.stat_result) -> ContextEntry:
        kind = _kind(st.st_mode)
        if kind is None:
            raise ContextError(f'"{path}": not a regular file, directory or symlink')
        link = os.readlink(path) if kind == "symlink" else None
        size = st.st_size if kind != "dir" else 0
        return ContextEntry(rel, path, kind, stat.S_IMODE(st.st_mode), size, link)

    def _walk_dir(
        self,
        real_dir: str,
        rel_dir: str,
        state: MatchState | None,
        pending: list[tuple[ContextEntry, os.stat_result]],
    ) -> Iterator[tuple[ContextEntry, os.stat_result]]:
        """Entries below *real_dir*. An excluded directory that is walked because an
        exception may re-include something waits in *pending* and is only yielded
        (before its first kept descendant) if something below it is kept."""
        base = self.root / real_dir if real_dir else self.root
        for name, st in self._listdir(real_dir):
            kind = _kind(st.st_mode)
            if kind is None:
                continue
            real = _join(real_dir, name)
            child_state = self.ignore.match_state(real, state) if self.ignore else None
            excluded = child_state is not None and self.ignore.is_excluded(child_state)
            if excluded and (kind != "dir" or not self.ignore.could_reinclude(real)):
                continue
            item = (self._entry(_join(rel_dir, name), base / name, st), st)
            if excluded:
                pending.append(item)
                yield from self._walk_dir(real, item[0].rel, child_state, pending)
                if pending and pending[-1] is item:
                    pending.pop()
                continue
            if pending:
                yield from pending
                pending.clear()
            yield item
            if kind == "dir":
                yield from self._walk_dir(real, item[0].rel, child_state, pending)

    # ------------------------------------------------------------------ digesting

    @timed("context")
    def digest(self, sources: Sequence[str], *, chown: str | None, chmod: str | None,
               owners: bool = False) -> str:  # fmt: skip
        """``sha256:…`` over everything the sources select and how it will be copied; with
        *owners* (a stage's filesystem, whose owners a copy keeps) uid and gid too."""
        h = hashlib.sha256()

        def record(*fields: object) -> None:
            h.update(json.dumps(fields, separators=(",", ":")).encode() + b"\n")

        record("kiln.context.v1", chown, chmod, *(["owners"] if owners else []))
        rows: list[TreeRow] = []  # a tree is made of them only if one is asked for
        try:
            for source in sources:
                matches = self._select_one(source)
                record("source", source, len(matches))
                for match in matches:
                    record("match", match.rel_path, match.is_dir)
                    for e, st in self._walk_with_stat(match):
                        owner = [st.st_uid, st.st_gid] if owners else []
                        path = _tree_path(match.rel_path, e.rel)
                        if e.kind == "file":
                            sha = self._hasher.sha256(e.abs_path, st)
                            record("f", e.rel, e.mode, e.size, sha, *owner)
                            rows.append((path, "f", e.mode, sha[:6]))
                        elif e.kind == "symlink":
                            record("l", e.rel, e.mode, e.link_target, *owner)
                            rows.append((path, "l", e.mode, fingerprint(e.link_target or "")))
                        else:
                            record("d", e.rel, e.mode, *owner)
                            rows.append((path, "d", e.mode, ""))
        finally:
            self._hasher.flush()
        digest = "sha256:" + h.hexdigest()
        if not owners:
            self._rows[digest] = rows
        return digest

    def tree(self, digest: str) -> FileTree | None:
        """The files behind a :meth:`digest` this context computed (None: not one)."""
        with self._lock:
            if digest not in self._trees and digest in self._rows:
                self._trees[digest] = FileTree.of_rows(self._rows.pop(digest))
            return self._trees.get(digest)

    def encoded_tree(self, digest: str) -> str | None:
        """:meth:`tree` encoded (once) for a cache record, None when there is none."""
        if digest not in self._encoded:
            tree = self.tree(digest)
            self._encoded[digest] = tree.encode() if tree is not None else None
        return self._encoded[digest]


def _tree_path(source: str, rel: str) -> str:
    """Where an entry is named in a tree: below its source as the Dockerfile named it."""
    source = source.strip("/") or "."
    if not rel:
        return source
    return rel if source == "." else f"{source}/{rel}"


def open_context(
    directory: Path, dockerfile: Path | None, state: Path
) -> tuple[BuildContext, Path]:
    """The build context *directory* and its Dockerfile (default ``<directory>/Dockerfile``),
    both checked before anything runs; file hashes are remembered under *state*."""
    ctx = directory.absolute()
    if not ctx.is_dir():
        raise ContextError(
            f"build context {directory} is not a directory",
            hint="pass the directory that holds your sources (often .)",
        )
    path = (dockerfile or ctx / "Dockerfile").absolute()
    if not path.is_file():
        raise DockerfileError("Dockerfile not found", path=str(path),
                              hint="pass the right file with -f FILE")  # fmt: skip
    return BuildContext.open(ctx, path, memo_dir=state / "context"), path
