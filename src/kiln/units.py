"""Human-written sizes and durations, parsed the same way everywhere in kiln.

Sizes: a number with an optional unit — SI (``kB``, ``MB``, ``GB``, ``TB``, powers of
1000, also ``k``/``m``/``g``/``t``) or IEC (``KiB``, ``MiB``, ``GiB``, ``TiB``, powers of
1024). Durations: Go's syntax (``10m``, ``1m30s``, ``250ms``) plus ``d`` and ``w``, or
plain seconds. Both raise ``ValueError``; callers turn it into their own error.
"""

from __future__ import annotations

import re

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
_SIZE_UNITS = {"": 1, "b": 1}
for _i, _p in enumerate("kmgt", start=1):
    _SIZE_UNITS[_p] = _SIZE_UNITS[_p + "b"] = 1000**_i
    _SIZE_UNITS[_p + "ib"] = 1024**_i

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h|d|w)")
_DURATION_SECONDS = {
    "ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0,
    "d": 86400.0, "w": 7 * 86400.0,
}  # fmt: skip


def parse_size(text: str) -> int:
    """``10GB`` → 10_000_000_000; ``2GiB`` → 2_147_483_648; ``512`` → 512."""
    m = _SIZE.match(text)
    unit = m.group(2).lower() if m else ""
    if not m or unit not in _SIZE_UNITS:
        raise ValueError(f"invalid size {text!r}: use a number with a unit like 500MB or 2GiB")
    return int(float(m.group(1)) * _SIZE_UNITS[unit])


def parse_duration(text: str) -> float:
    """``10m`` → 600.0; ``1m30s`` → 90.0; ``7d`` → 604800.0; ``45`` → 45.0 (seconds)."""
    stripped = text.strip()
    if re.fullmatch(r"\d+(?:\.\d+)?", stripped):
        return float(stripped)
    pos, total = 0, 0.0
    for m in _DURATION_PART.finditer(stripped):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _DURATION_SECONDS[m.group(2)]
        pos = m.end()
    if not stripped or pos != len(stripped):
        raise ValueError(f"invalid duration {text!r}: use values like 45s, 10m, 1m30s or 7d")
    return total


def format_size(n: int) -> str:
    """``1234567`` → ``1.2 MB`` (SI, as the sizes users write)."""
    value = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")
