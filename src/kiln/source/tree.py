"""A compact tree of the files a COPY selected, to tell which path differs between builds.

A cache record carries the tree of the context files its step copied (or bound), so a
later build on another machine can name the first file that changed, was added or
removed, or changed mode — without the cached files. Per entry it keeps the path
(front-coded: only the part that differs from the path before it), the kind, the
permission bits and a 24-bit fingerprint of the content (a file's digest, a symlink's
target), zlib-compressed: about 13 bytes an entry for a typical source tree.

A tree that would outgrow its budget summarises its deepest directories: one entry per
such directory, fingerprinting everything below it, so a change is still located (to that
directory) and the size stays bounded whatever the context holds.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

EntryKind = Literal["f", "l", "d", "s"]  # file, symlink, directory, summarised directory
ChangeKind = Literal["changed", "added", "removed", "mode"]

#: the largest encoded tree; bigger ones summarise their deepest directories
TREE_BUDGET = 256 << 10
_VERSION = "t1"


@dataclass(frozen=True, slots=True)
class TreeEntry:
    path: str  # "/"-separated, relative to the copy's sources
    kind: EntryKind
    mode: int  # permission bits
    print: str = ""  # 6 hex digits of the content ("" for a directory)


@dataclass(frozen=True, slots=True)
class TreeChange:
    """The first difference between two trees, in path order, and how many others."""

    kind: ChangeKind
    path: str
    more: int = 0
    summarised: bool = False  # the path is a directory the cached tree only summarised
    modes: tuple[int, int] = (0, 0)  # for "mode": (cached, now)


def fingerprint(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:6]


def _order(path: str) -> tuple[str, ...]:
    """Parents before children, names sorted (the order the context walks in)."""
    return tuple(path.split("/"))


TreeRow = tuple[str, EntryKind, int, str]  # a TreeEntry's fields, as the context collects them


class FileTree:
    @classmethod
    def of_rows(cls, rows: Iterable[TreeRow]) -> FileTree:
        return cls(TreeEntry(*row) for row in rows)

    def __init__(self, entries: Iterable[TreeEntry]) -> None:
        unique: dict[str, TreeEntry] = {}
        for entry in entries:
            unique.setdefault(entry.path, entry)  # an overlapping source: the first wins
        self.entries = sorted(unique.values(), key=lambda e: _order(e.path))

    def __len__(self) -> int:
        return len(self.entries)

    # ------------------------------------------------------------------ encoding
    def encode(self, budget: int = TREE_BUDGET) -> str | None:
        """The tree as text within *budget* bytes, its deepest directories summarised
        as far as needed (None: not even the top level fits)."""
        text = _encode(self.entries)
        depth = max((e.path.count("/") for e in self.entries), default=0) - 1
        while len(text) > budget and depth >= 0:
            text = _encode(self.summarised_below(depth).entries)
            depth -= 1
        return text if len(text) <= budget else None

    @classmethod
    def decode(cls, text: str) -> FileTree:
        """Raises ValueError on anything this module did not write."""
        try:
            raw = zlib.decompress(base64.b64decode(text, validate=True)).decode(_UTF8, _RAW)
        except (binascii.Error, zlib.error) as exc:
            raise ValueError(f"not an encoded tree: {exc}") from exc
        lines = raw.split("\n")
        if lines[0] != _VERSION:
            raise ValueError("unknown tree version")
        entries: list[TreeEntry] = []
        previous = ""
        for line in lines[1:]:
            shared, rest = line.split(" ", 1)
            suffix, kind, mode, mark = rest.rsplit("\t", 3)
            path = previous[: int(shared)] + _unescape(suffix)
            if kind not in ("f", "l", "d", "s"):
                raise ValueError(f"unknown entry kind {kind!r}")
            entries.append(TreeEntry(path, kind, int(mode, 8), mark))  # type: ignore[arg-type]
            previous = path
        return cls(entries)

    # ------------------------------------------------------------------ summaries
    def summarised_below(self, depth: int) -> FileTree:
        """Directories at *depth* (0: top level) stand for everything below them."""
        dirs = {e.path for e in self.entries if e.kind == "d" and e.path.count("/") == depth}
        return self.summarised(dirs)

    def summarised(self, dirs: set[str]) -> FileTree:
        """Each directory of *dirs* one summary entry (what a budget made a cached tree)."""
        if not dirs:
            return self
        kept: list[TreeEntry] = []
        below: dict[str, list[TreeEntry]] = {d: [] for d in dirs}
        heads: dict[str, TreeEntry] = {}
        for entry in self.entries:
            owner = _summary_owner(entry.path, dirs)
            if owner is None:
                kept.append(entry)
            elif owner == entry.path:
                heads[owner] = entry
            else:
                below[owner].append(entry)
        for path, head in heads.items():
            content = "\n".join(f"{e.path}\t{e.kind}\t{e.mode:o}\t{e.print}" for e in below[path])
            kept.append(TreeEntry(path, "s", head.mode, fingerprint(content)))
        return FileTree(kept)

    # ------------------------------------------------------------------ comparing
    def changes(self, cached: FileTree) -> TreeChange | None:
        """The first way this tree differs from *cached* (None: the same files)."""
        summarised = {e.path for e in cached.entries if e.kind == "s"}
        now = {e.path: e for e in self.summarised(summarised & self._dirs()).entries}
        before = {e.path: e for e in cached.entries}
        found: list[TreeChange] = []
        for path in sorted(now.keys() | before.keys(), key=_order):
            new, old = now.get(path), before.get(path)
            if new is None:
                found.append(TreeChange("removed", path))
            elif old is None:
                found.append(TreeChange("added", path))
            elif (new.kind, new.print) != (old.kind, old.print):
                found.append(TreeChange("changed", path, summarised=old.kind == "s"))
            elif new.mode != old.mode:
                found.append(TreeChange("mode", path, modes=(old.mode, new.mode)))
        if not found:
            return None
        first = found[0]
        return TreeChange(first.kind, first.path, len(found) - 1, first.summarised, first.modes)

    def _dirs(self) -> set[str]:
        return {e.path for e in self.entries if e.kind == "d"}


def _summary_owner(path: str, dirs: set[str]) -> str | None:
    """The summarised directory *path* is or lies below (the outermost), if any."""
    parts = path.split("/")
    for n in range(1, len(parts) + 1):
        prefix = "/".join(parts[:n])
        if prefix in dirs:
            return prefix
    return None


def _encode(entries: Sequence[TreeEntry]) -> str:
    lines = [_VERSION]
    previous = ""
    for entry in entries:
        shared = _shared_prefix(previous, entry.path)
        suffix = _escape(entry.path[shared:])
        lines.append(f"{shared} {suffix}\t{entry.kind}\t{entry.mode:o}\t{entry.print}")
        previous = entry.path
    return base64.b64encode(zlib.compress("\n".join(lines).encode(_UTF8, _RAW), 9)).decode()


# file names are any bytes but "/" and NUL: the separators are escaped, undecodable bytes
# kept as Python keeps them (surrogates)
_UTF8, _RAW = "utf-8", "surrogateescape"
_ESCAPES = {"%": "%25", "\n": "%0A", "\t": "%09"}
_ESCAPED = re.compile("%(25|0A|09)")
_UNESCAPES = {"25": "%", "0A": "\n", "09": "\t"}


def _escape(text: str) -> str:
    if "%" in text or "\n" in text or "\t" in text:
        return "".join(_ESCAPES.get(c, c) for c in text)
    return text


def _unescape(text: str) -> str:
    return _ESCAPED.sub(lambda m: _UNESCAPES[m.group(1)], text) if "%" in text else text


def _shared_prefix(a: str, b: str) -> int:
    """The length of the longest common prefix (a binary search of slice compares)."""
    low, high = 0, min(len(a), len(b))
    while low < high:
        mid = (low + high + 1) // 2
        if a[:mid] == b[:mid]:
            low = mid
        else:
            high = mid - 1
    return low
