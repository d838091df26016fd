"""``--cache-to ...,cache-mounts=...,cache-mount-max-size=...``: parsed for every backend
that can carry cache mounts, refused with a reason by type=inline."""

from __future__ import annotations

import pytest

from kiln.build import cache_backends
from kiln.cache.remote.base import DEFAULT_MOUNT_MAX_SIZE, ExportOptions
from kiln.cache.remote.flags import parse_cache_from, parse_cache_to
from kiln.errors import UsageError

BACKENDS = cache_backends()
TARGETS = {
    "registry": "type=registry,ref=127.0.0.1:5000/cache/app:buildcache",
    "local": "type=local,dest=/tmp/kiln-cache",
    "gha": "type=gha,url=http://127.0.0.1:1/,token=t",
}


def options(extra: str, backend: str = "registry") -> ExportOptions:
    return parse_cache_to(f"{TARGETS[backend]}{extra}", BACKENDS).options


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("true", True),
        ("TRUE", True),
        ("yes", True),
        ("on", True),
        ("1", True),
        ("false", False),
        ("Off", False),
        ("0", False),
        ("pip", frozenset({"pip"})),
        ("/root/.cache/go-build;pip", frozenset({"/root/.cache/go-build", "pip"})),
        (" go ; pip ;; ", frozenset({"go", "pip"})),
    ],
)
@pytest.mark.parametrize("backend", sorted(TARGETS))
def test_cache_mounts_is_a_boolean_or_ids(backend: str, value: str, expected: object) -> None:
    assert options(f",cache-mounts={value}", backend).cache_mounts == expected


@pytest.mark.parametrize("value", ["", ";", " ; ;"])
def test_cache_mounts_without_any_id_is_an_error_naming_it(value: str) -> None:
    with pytest.raises(UsageError, match="cache-mounts must be true, false or mount ids") as err:
        options(f",cache-mounts={value}")
    assert "--cache-to" in str(err.value) and err.value.hint and "cache-mounts=" in err.value.hint


@pytest.mark.parametrize(
    ("extra", "go_build", "pip"),
    [
        ("", False, False),  # mode=min: steps of the final stage only, no mounts
        (",mode=max", True, True),
        (",mode=min,cache-mounts=true", True, True),
        (",mode=max,cache-mounts=false", False, False),
        (",mode=max,cache-mounts=pip", False, True),
        (",cache-mounts=/root/.cache/go-build;pip", True, True),
    ],
)
def test_which_mounts_an_export_carries(extra: str, go_build: bool, pip: bool) -> None:
    opts = options(extra)
    assert opts.exports_mount("/root/.cache/go-build") is go_build
    assert opts.exports_mount("pip") is pip


@pytest.mark.parametrize(
    ("value", "expected"),
    [("500MB", 500_000_000), ("2GiB", 2 << 30), ("4096", 4096), ("1.5k", 1500)],
)
def test_cache_mount_max_size_is_a_size(value: str, expected: int) -> None:
    assert options(f",cache-mount-max-size={value}").cache_mount_max_size == expected
    assert options(f",cache-mount-max-size={value}", "gha").cache_mount_max_size == expected


def test_cache_mount_max_size_defaults_to_one_gibibyte() -> None:
    assert options("").cache_mount_max_size == DEFAULT_MOUNT_MAX_SIZE == 1 << 30


@pytest.mark.parametrize("value", ["0", "0MB", "0.0001"])
def test_a_cache_mount_max_size_of_nothing_is_an_error(value: str) -> None:
    with pytest.raises(UsageError, match="cache-mount-max-size must be more than 0 bytes"):
        options(f",cache-mount-max-size={value}")


@pytest.mark.parametrize("value", ["-1", "lots", "", "10 parsecs"])
def test_a_cache_mount_max_size_that_is_no_size_is_an_error_naming_it(value: str) -> None:
    with pytest.raises(UsageError, match="cache-mount-max-size must be a size"):
        options(f",cache-mount-max-size={value}")


@pytest.mark.parametrize("value", ["true", "yes", "pip", "go;pip"])
def test_inline_cannot_carry_cache_mounts(value: str) -> None:
    with pytest.raises(UsageError, match="type=inline cannot carry cache mounts") as err:
        parse_cache_to(f"type=inline,cache-mounts={value}", BACKENDS)
    assert err.value.hint and "type=registry" in err.value.hint


def test_inline_without_cache_mounts_or_with_false_carries_none() -> None:
    for text in ("type=inline", "type=inline,cache-mounts=false"):
        opts = parse_cache_to(text, BACKENDS).options
        assert opts.cache_mounts is False
        assert not opts.exports_mount("pip")


def test_cache_mount_attributes_are_unknown_on_import() -> None:
    with pytest.raises(UsageError, match="unknown attribute 'cache-mounts'"):
        parse_cache_from(f"{TARGETS['registry']},cache-mounts=true", BACKENDS)
