"""The one attribute grammar of kiln's flags: ``key=value,key="a,b",...``.

Used by ``--output``, ``--cache-from``/``--cache-to``, ``--secret`` and a Dockerfile's
``RUN --mount=...``. Fields are CSV, as buildx reads them (a value holding a comma is
quoted, ``""`` is a literal quote); keys are case-insensitive. A repeated key, a field
that is not ``key=value`` (unless the caller allows that key bare, as BuildKit allows
``readonly`` in a mount) and a bad value are errors naming the attribute; every getter
checks its value as it reads it, so no caller can ignore a bad one.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import TypeVar

from kiln import units
from kiln.errors import KilnError, UsageError

Fail = Callable[[str, "str | None"], KilnError]
"""Makes the error for a bad attribute: ``fail(what, hint)``, naming where it was given."""

C = TypeVar("C", bound=str)
V = TypeVar("V")
P = TypeVar("P")

# Go's strconv.ParseBool (what buildx and BuildKit accept), any case, plus yes/no
TRUE = frozenset({"true", "t", "1", "yes"})
FALSE = frozenset({"false", "f", "0", "no"})


# attributes whose values are credentials: never shown (type=gha's token=, ghtoken=, ...)
_SECRET_KEY = re.compile(r"token|secret|password|passwd|credential", re.IGNORECASE)


def redact(text: str) -> str:
    """*text* (a flag value) fit to show: the value of every credential attribute is
    replaced by ``***`` (the rest as given, re-quoted where a field holds a comma)."""
    if not _SECRET_KEY.search(text):
        return text
    fields = next(csv.reader([text], skipinitialspace=True), [])
    shown = []
    in_secret = False
    for item in fields:
        key, eq, _ = item.partition("=")
        if eq and _SECRET_KEY.search(key):
            item, in_secret = f"{key}=***", True
        elif in_secret and not eq:
            continue  # a piece of the secret, split at a comma by a stray quote
        else:
            in_secret = False
        shown.append(f'"{item}"' if "," in item else item)
    return ",".join(shown)


def flag_error(flag: str, text: str) -> Fail:
    """Errors for a command-line flag: ``--flag 'text': what`` (exit code of usage errors),
    credentials in *text* redacted."""
    shown = redact(text)

    def fail(what: str, hint: str | None = None) -> KilnError:
        return UsageError(f"{flag} {shown!r}: {what}", hint=hint)

    return fail


class Attrs:
    """The attributes of one flag value, each read (and checked) at most once per key."""

    def __init__(self, values: Mapping[str, str], fail: Fail) -> None:
        self.values = dict(values)
        self.fail = fail

    @classmethod
    def parse(
        cls,
        text: str,
        fail: Fail,
        *,
        bare: Collection[str] = (),
        aliases: Mapping[str, str] | None = None,
    ) -> Attrs:
        """Split *text*; keys in *bare* may be given without a value (meaning ``true``);
        *aliases* maps alternative spellings to the key they stand for."""
        aliases = aliases or {}
        try:
            fields = (
                next(csv.reader([text], skipinitialspace=True, strict=True), []) if text else []
            )
        except csv.Error as exc:
            raise fail(f"cannot be read as key=value fields: {exc}", None) from exc
        values: dict[str, str] = {}
        for item in fields:
            key, eq, value = item.partition("=")
            key = key.strip().lower()
            key = aliases.get(key, key)
            if not key or (not eq and key not in bare):
                # a stray piece of a credential must not be shown either
                shown = repr(item) if redact(text) == text else "a field"
                raise fail(f"{shown} is not key=value", "write key=value,key=value,...")
            if key in values:
                raise fail(f"{key} is given twice", None)
            values[key] = value if eq else "true"
        return cls(values, fail)

    # ------------------------------------------------------------------ errors and checks
    def error(self, what: str, hint: str | None = None) -> KilnError:
        return self.fail(what, hint)

    def check(self, allowed: Iterable[str], kind: str) -> None:
        """Every key is one of *allowed* (known for ``type=kind``)."""
        known = set(allowed)
        unknown = sorted(set(self.values) - known)
        if unknown:
            raise self.fail(
                f"unknown attribute {unknown[0]!r} for type={kind}",
                "known: " + ", ".join(sorted(known)) if known else "it takes no attributes",
            )

    def __contains__(self, key: str) -> bool:
        return key in self.values

    def pop(self, key: str, default: str = "") -> str:
        return self.values.pop(key, default)

    # ------------------------------------------------------------------ typed getters
    def get(self, key: str, default: str = "") -> str:
        return self.values.get(key, default)

    def optional(self, key: str) -> str | None:
        return self.values.get(key)

    def required(self, key: str, kind: str) -> str:
        value = self.values.get(key, "")
        if not value:
            raise self.fail(f"{key} is required for type={kind}", None)
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self.values.get(key)
        if value is None:
            return default
        lowered = value.strip().lower()
        if lowered in TRUE:
            return True
        if lowered in FALSE:
            return False
        raise self.fail(f"{key} must be true or false, not {value!r}", None)

    def choice(self, key: str, choices: Collection[C], default: C) -> C:
        value = self.values.get(key)
        if value is None:
            return default
        for option in choices:
            if value == option:
                return option
        raise self.fail(f"{key} must be {_one_of(choices)}, not {value!r}", None)

    def integer(self, key: str, default: int, *, base: int = 10, maximum: int | None = None) -> int:
        value = self.values.get(key)
        if value is None:
            return default
        digits = "01234567" if base == 8 else "0123456789"
        number = int(value, base) if value and all(c in digits for c in value) else -1
        if number < 0 or (maximum is not None and number > maximum):
            kind = "an octal number" if base == 8 else "a whole number"
            limit = f" from 0 to {maximum}" if maximum is not None else ""
            raise self.fail(f"{key} must be {kind}{limit}, not {value!r}", None)
        return number

    def size(self, key: str) -> int | None:
        if key not in self.values:
            return None
        return self._parsed(key, units.parse_size, "a size like 500MB or 2GB")

    def duration(self, key: str, default: float) -> float:
        if key not in self.values:
            return default
        return self._parsed(key, units.parse_duration, "a duration like 10m or 90s")

    def _parsed(self, key: str, parse: Callable[[str], V], what: str) -> V:
        value = self.values[key]
        try:
            return parse(value)
        except ValueError as exc:
            raise self.fail(f"{key} must be {what}, not {value!r}", None) from exc

    def plugin(self, types: Mapping[str, P], what: str) -> P:
        """Pop ``type`` and return the plug-in registered under it (unknown: an error
        listing the known ones)."""
        kind = self.values.pop("type", "")
        found = types.get(kind)
        if found is None:
            raise self.fail(f"unknown {what} {kind!r}", "known types: " + ", ".join(sorted(types)))
        return found


def _one_of(choices: Collection[str]) -> str:
    items = list(choices)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]
