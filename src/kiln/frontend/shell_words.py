"""Docker's word processing: quote removal and ``$VAR`` expansion in Dockerfile values.

The ``dockerfile`` parser keeps quotes and escapes in instruction values
(``ENV B="2 3"`` gives the value ``"2 3"``); what a value *means* is decided later, by
BuildKit's shell lexer (``frontend/dockerfile/shell``). :class:`WordExpander` follows its
rules:

* single quotes keep everything literal; double quotes keep everything literal except
  ``$`` expansion and escapes of ``"``, ``$`` and the escape character;
* outside quotes the escape character (``\\`` or, with ``# escape=`````, a backtick)
  makes the next character literal, and a trailing one is dropped;
* ``$name``, ``${name}``, ``${name:-word}``, ``${name-word}``, ``${name:+word}``,
  ``${name+word}``, ``${name:?msg}``, ``${name?msg}``, ``${name#pat}``, ``${name##pat}``,
  ``${name%pat}``, ``${name%%pat}``, ``${name/pat/repl}`` and ``${name//pat/repl}``;
  unset names expand to nothing, ``$`` before a character that cannot start a name stays.

:meth:`WordExpander.expand` is BuildKit's ``ProcessWord`` (one word, inner whitespace
kept; used for nearly every instruction) and :meth:`WordExpander.expand_words` is
``ProcessWords`` (split into fields on unquoted whitespace, including whitespace that
came from a variable; BuildKit uses it for ``EXPOSE``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

#: Build args every Dockerfile may use without declaring them (BuildKit passes them to
#: RUN as proxy settings, and they are kept out of the image config and history).
PREDEFINED_ARGS = frozenset(
    {
        "HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "FTP_PROXY", "ftp_proxy",
        "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy",
    }
)  # fmt: skip

_EOF = ""
# characters that are a parameter name on their own ($@, $*, $#, ...): never set here
_SPECIAL_PARAMS = frozenset("@*#?-$!0")
_HEREDOC_SPACE = frozenset(" \t\r")


class WordError(ValueError):
    """A word that cannot be expanded; the message says why."""


class _Words:
    """Field splitting as ``ProcessWords`` does it."""

    __slots__ = ("buf", "in_word", "words")

    def __init__(self) -> None:
        self.buf: list[str] = []
        self.words: list[str] = []
        self.in_word = False

    def add_char(self, ch: str) -> None:
        if ch.isspace():
            if self.in_word and self.buf:
                self.words.append("".join(self.buf))
                self.buf.clear()
                self.in_word = False
        else:
            self.add_raw(ch)

    def add_raw(self, text: str) -> None:
        if text:  # an empty quoted string starts a word but adds nothing to it
            self.buf.append(text)
        self.in_word = True

    def add_expanded(self, text: str) -> None:
        for ch in text:
            self.add_char(ch)

    def finish(self) -> list[str]:
        if self.buf:
            self.words.append("".join(self.buf))
            self.buf.clear()
            self.in_word = False
        return self.words


class _Lexer:
    """One pass over one word."""

    def __init__(self, word: str, env: Mapping[str, str], escape: str) -> None:
        self.src = word
        self.pos = 0
        self.env = env
        self.escape = escape

    # -- scanning
    def peek(self) -> str:
        return self.src[self.pos] if self.pos < len(self.src) else _EOF

    def next(self) -> str:
        if self.pos >= len(self.src):
            return _EOF
        ch = self.src[self.pos]
        self.pos += 1
        return ch

    # -- the word up to *stop* (EOF for the whole word)
    def until(self, stop: str, raw_escapes: bool) -> tuple[str, list[str]]:
        result: list[str] = []
        words = _Words()
        while self.peek() != _EOF:
            ch = self.peek()
            if stop and ch == stop:
                self.next()
                return "".join(result), words.finish()
            if ch == "$":
                text = self.dollar()
                result.append(text)
                words.add_expanded(text)
            elif ch == "'":
                text = self.single_quoted()
                result.append(text)
                words.add_raw(text)
            elif ch == '"':
                text = self.double_quoted(raw_escapes)
                result.append(text)
                words.add_raw(text)
            elif ch == "<":
                text = self.maybe_heredoc()
                result.append(text)
                words.add_raw(text)
            else:
                ch = self.next()
                if ch == self.escape:
                    if raw_escapes:
                        words.add_raw(ch)
                        result.append(ch)
                    ch = self.next()
                    if ch == _EOF:
                        break  # a trailing escape character is dropped
                    words.add_raw(ch)
                else:
                    words.add_char(ch)
                result.append(ch)
        if stop:
            raise WordError(f"unexpected end of statement while looking for matching {stop}")
        return "".join(result), words.finish()

    def single_quoted(self) -> str:
        self.next()
        out: list[str] = []
        while True:
            ch = self.next()
            if ch == _EOF:
                raise WordError(
                    "unexpected end of statement while looking for matching single-quote"
                )
            if ch == "'":
                return "".join(out)
            out.append(ch)

    def double_quoted(self, raw_escapes: bool) -> str:
        self.next()
        out: list[str] = []
        while True:
            ch = self.peek()
            if ch == _EOF:
                raise WordError(
                    "unexpected end of statement while looking for matching double-quote"
                )
            if ch == '"':
                self.next()
                return "".join(out)
            if ch == "$":
                out.append(self.dollar())
                continue
            ch = self.next()
            if ch == self.escape:
                if raw_escapes:
                    out.append(ch)
                following = self.peek()
                if following == _EOF:
                    continue  # the missing closing quote is reported next round
                if following in ('"', "$", self.escape):
                    ch = self.next()
            out.append(ch)

    def maybe_heredoc(self) -> str:
        self.next()
        if self.peek() != "<":
            return "<"
        self.next()
        space: list[str] = []
        while self.peek() and self.peek() in _HEREDOC_SPACE:
            space.append(self.next())
        return "<<" + "".join(space)

    def name(self) -> str:
        out: list[str] = []
        while self.peek() != _EOF:
            ch = self.peek()
            if not out and ch.isdecimal():
                while self.peek() != _EOF and self.peek().isdecimal():
                    out.append(self.next())
                return "".join(out)
            if not out and ch in _SPECIAL_PARAMS:
                return self.next()
            if not (ch.isalpha() or ch.isdecimal() or ch == "_"):
                break
            out.append(self.next())
        return "".join(out)

    def dollar(self) -> str:
        self.next()  # the '$'
        if self.peek() != "{":
            name = self.name()
            if not name:
                return "$"
            return self.env.get(name, "")
        self.next()  # the '{'
        first = self.peek()
        if first == _EOF:
            raise WordError("syntax error: missing '}'")
        if first in ("{", "}", ":"):
            raise WordError("syntax error: bad substitution")
        name = self.name()
        ch = self.next()
        if ch == "}":
            return self.env.get(name, "")
        if ch == "/":
            return self.replace(name)
        modifier = ch
        null_is_unset = False
        if ch == ":":
            null_is_unset = True
            ch = self.next()
            modifier += ch
        elif ch not in ("+", "-", "?", "#", "%"):
            if ch == _EOF:
                raise WordError("syntax error: missing '}'")
            raise WordError(f"unsupported modifier ({modifier}) in substitution")
        pattern_op = ch in ("#", "%")
        if null_is_unset and pattern_op:
            raise WordError(f"unsupported modifier ({modifier}) in substitution")
        word = self.closing("}", raw_escapes=pattern_op)
        value = self.env.get(name)
        unset = value is None or (null_is_unset and value == "")
        if ch == "-":
            return word if unset else (value or "")
        if ch == "+":
            return "" if unset else word
        if ch == "?":
            if value is None:
                raise WordError(f"{name}: {word or 'is not allowed to be unset'}")
            if null_is_unset and value == "":
                raise WordError(f"{name}: {word or 'is not allowed to be empty'}")
            return value
        if pattern_op:
            greedy = word.startswith(ch)
            if greedy:
                word = word[1:]
            if ch == "%":
                return _trim_suffix(word, value or "", greedy)
            return _trim_prefix(word, value or "", greedy)
        raise WordError(f"unsupported modifier ({modifier}) in substitution")

    def closing(self, stop: str, *, raw_escapes: bool) -> str:
        try:
            text, _ = self.until(stop, raw_escapes)
        except WordError:
            if self.peek() == _EOF:
                raise WordError(f"syntax error: missing '{stop}'") from None
            raise
        return text

    def replace(self, name: str) -> str:
        replace_all = self.peek() == "/"
        if replace_all:
            self.next()
        try:
            pattern, _ = self.until("/", True)
        except WordError:
            if self.peek() == _EOF:
                raise WordError("syntax error: missing '/' in ${}") from None
            raise
        replacement = self.closing("}", raw_escapes=True)
        value = self.env.get(name, "")
        regex = _shell_pattern_regex(pattern, greedy=True)
        if replace_all:
            return regex.sub(lambda _m: replacement, value)
        return regex.sub(lambda _m: replacement, value, count=1)


# ---------------------------------------------------------------------------- patterns


def _shell_pattern_regex(pattern: str, *, greedy: bool, anchored: bool = False) -> re.Pattern[str]:
    """A ``${var#pattern}`` pattern as a regex: ``*`` any string, ``?`` one character,
    ``\\`` escapes ``*``, ``?`` and ``\\`` (and is dropped before ``}`` and ``/``)."""
    out = ["^"] if anchored else []
    star = ".*" if greedy else ".*?"
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        i += 1
        if ch == "*":
            out.append(star)
        elif ch == "?":
            out.append(".")
        elif ch == "\\":
            following = pattern[i] if i < len(pattern) else ""
            if following in ("}", "/"):
                continue
            if following not in ("*", "?", "\\"):
                raise WordError(f"invalid pattern ({pattern}) in substitution: invalid escape")
            out.append(re.escape(following))
            i += 1
        else:
            out.append(re.escape(ch))
    return re.compile("".join(out), re.DOTALL)


def _trim_prefix(pattern: str, value: str, greedy: bool) -> str:
    m = _shell_pattern_regex(pattern, greedy=greedy, anchored=True).match(value)
    return value[m.end() :] if m else value


def _reverse_pattern(pattern: str) -> str:
    """Reverse a pattern, keeping each escape in front of the character it escapes."""
    tokens: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern[i] == "\\" and i + 1 < len(pattern):
            tokens.append(pattern[i : i + 2])
            i += 2
        else:
            tokens.append(pattern[i])
            i += 1
    return "".join(reversed(tokens))


def _trim_suffix(pattern: str, value: str, greedy: bool) -> str:
    # the shortest/longest match at the end is the same match at the start, reversed
    return _trim_prefix(_reverse_pattern(pattern), value[::-1], greedy)[::-1]


# ---------------------------------------------------------------------------- public API


def _quote(word: str) -> str:
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


class WordExpander:
    """BuildKit's shell lexer for one Dockerfile (its ``# escape=`` character)."""

    __slots__ = ("escape",)

    def __init__(self, escape: str = "\\") -> None:
        if len(escape) != 1:
            raise ValueError(f"escape must be one character, got {escape!r}")
        self.escape = escape

    def expand(self, word: str, env: Mapping[str, str]) -> str:
        """One word: quotes removed, variables expanded, whitespace kept."""
        return self._run(word, env)[0]

    def expand_words(self, word: str, env: Mapping[str, str]) -> list[str]:
        """Like :meth:`expand`, then split on unquoted whitespace (also whitespace that
        came from a variable)."""
        return self._run(word, env)[1]

    def _run(self, word: str, env: Mapping[str, str]) -> tuple[str, list[str]]:
        try:
            return _Lexer(word, env, self.escape).until(_EOF, False)
        except WordError as exc:
            raise WordError(f"failed to process {_quote(word)}: {exc}") from None


def parse_key_values(
    values: Sequence[str],
    expander: WordExpander,
    env: Mapping[str, str],
    *,
    instruction: str,
) -> list[tuple[str, str]]:
    """``ENV``/``LABEL`` pairs as the ``dockerfile`` parser returns them, expanded.

    The parser gives a flat ``(key, value, key, value, ...)`` tuple for both the
    ``k=v ...`` form and the legacy ``ENV k the rest`` form. Keys and values are expanded
    with the environment from *before* the instruction (``ENV a=1 b=$a`` gives ``b`` the
    old ``a``, as Docker documents). ``ARG`` goes through :func:`split_arg_definitions`.
    """
    name = instruction.upper()
    if name == "ARG":
        raise ValueError("ARG definitions are split with split_arg_definitions()")
    if not values or len(values) % 2:
        raise WordError(f"{name} must have two arguments")
    out: list[tuple[str, str]] = []
    for i in range(0, len(values), 2):
        raw_key, raw_value = values[i], values[i + 1]
        if not raw_key:
            raise WordError(f"{name} names can not be blank")
        key = expander.expand(raw_key, env)
        if not key:
            raise WordError(f"{name} name {raw_key!r} expands to nothing")
        out.append((key, expander.expand(raw_value, env)))
    return out


def split_arg_definitions(values: Sequence[str]) -> list[tuple[str, str | None]]:
    """``ARG a b=1`` as ``[("a", None), ("b", "1")]``, unexpanded.

    BuildKit never expands ARG names, and expands each default only when no build arg
    overrides it, with the earlier ARGs of the same line already defined; so defaults are
    returned raw for the caller to expand in order (``WordExpander.expand``).
    """
    if not values:
        raise WordError("ARG requires at least one argument")
    out: list[tuple[str, str | None]] = []
    for item in values:
        key, eq, default = item.partition("=")
        if not key:
            raise WordError("ARG names can not be blank")
        out.append((key, default if eq else None))
    return out
