"""Sizes and durations, one syntax everywhere."""

from __future__ import annotations

import pytest

from kiln.units import parse_duration, parse_size


@pytest.mark.parametrize(
    ("text", "value"),
    [("512", 512), ("1kB", 1000), ("2GB", 2 * 10**9), ("10g", 10**10), ("2GiB", 2 << 30),
     ("1.5MiB", 3 << 19), (" 7 mb ", 7 * 10**6)],
)  # fmt: skip
def test_sizes(text: str, value: int):
    assert parse_size(text) == value


@pytest.mark.parametrize(
    ("text", "value"),
    [("45", 45.0), ("10m", 600.0), ("1m30s", 90.0), ("250ms", 0.25), ("7d", 604800.0),
     ("1h2m3s", 3723.0)],
)  # fmt: skip
def test_durations(text: str, value: float):
    assert parse_duration(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["", "ten", "5 parsecs", "1m-3s", "1.2.3"])
def test_bad_values(text: str):
    with pytest.raises(ValueError):
        parse_size(text)
    with pytest.raises(ValueError):
        parse_duration(text)
