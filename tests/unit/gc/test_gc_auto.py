"""kiln.gc.auto: KILN_ROOT_MAX, and the check after a build (cheap under the cap; over it,
least recently used entries go, never what the build itself used)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from tests.fixtures.kiln_state import StateMaker

from kiln.errors import UsageError
from kiln.gc.auto import DEFAULT_MAX, capped, configured_cap, enforce
from kiln.gc.collect import usage
from kiln.state import build_lease


def test_kiln_root_max(tmp_path: Path) -> None:
    assert configured_cap(tmp_path, {"KILN_ROOT_MAX": "20GB"}) == 20 * 10**9
    assert configured_cap(tmp_path, {"KILN_ROOT_MAX": "512MiB"}) == 512 * 2**20
    assert configured_cap(tmp_path, {"KILN_ROOT_MAX": "0"}) is None
    assert configured_cap(tmp_path, {"KILN_ROOT_MAX": "off"}) is None
    st = os.statvfs(tmp_path)
    assert configured_cap(tmp_path, {}) == min(DEFAULT_MAX, st.f_blocks * st.f_frsize // 10)
    with pytest.raises(UsageError, match="KILN_ROOT_MAX=lots") as caught:
        configured_cap(tmp_path, {"KILN_ROOT_MAX": "lots"})
    assert caught.value.hint and "20GB" in caught.value.hint


def test_a_bad_kiln_root_max_stops_the_build_before_it_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    maker = StateMaker(tmp_path / "root")
    monkeypatch.setenv("KILN_ROOT_MAX", "10 parsecs")
    with pytest.raises(UsageError), capped(maker.root, print):
        raise AssertionError("the build must not start")


def test_over_the_cap_the_oldest_go_and_the_build_keeps_its_own(tmp_path: Path) -> None:
    maker = StateMaker(tmp_path / "root")
    old = [maker.record(age=1000 - n, size=100_000)[0] for n in range(5)]
    messages: list[str] = []
    with build_lease(maker.root.tmp) as lease:
        time.sleep(0.02)
        mine = [maker.record(size=100_000)[0] for _ in range(3)]  # this build's steps
        for key in mine:
            os.utime(maker.record_path(key))
            assert maker.blobs.touch(maker.cache.get(key).layer.digest)  # type: ignore[union-attr]
        found = usage(maker.root)
        assert found is not None
        cap = found[0].kept - 250_000  # about three old records too many
        enforce(maker.root, cap, lease, messages.append)
        assert [k for k in old if maker.cache.get(k) is not None] == old[3:]
        assert all(maker.cache.get(k) is not None for k in mine)
        assert len(messages) == 1 and "removed the 3 least recently used entries" in messages[0]
        found = usage(maker.root)
        assert found is not None and found[0].kept <= cap
        messages.clear()
        enforce(maker.root, 1, lease, messages.append)  # what is left is this build's
        assert all(maker.cache.get(k) is not None for k in mine)
        assert "still holds" in messages[-1]


def test_under_the_cap_nothing_happens(tmp_path: Path) -> None:
    maker = StateMaker(tmp_path / "root")
    key, _ = maker.record(age=1000)
    messages: list[str] = []
    with build_lease(maker.root.tmp) as lease:
        enforce(maker.root, 10**12, lease, messages.append)
    assert messages == [] and maker.record_path(key).exists()


def test_the_check_is_cheap_with_thousands_of_records(tmp_path: Path) -> None:
    """The after-build check under the cap on a root with 3,000 records (each its own
    blob) and 200 snapshots: it stats entries, reads no record, walks no snapshot twice."""
    maker = StateMaker(tmp_path / "root")
    maker.many_records(3000)
    for n in range(200):
        maker.snapshot(age=n, files=20)
    with build_lease(maker.root.tmp) as lease:
        enforce(maker.root, 10**12, lease, print)  # the first check remembers the trees
        started = time.perf_counter()
        enforce(maker.root, 10**12, lease, print)
        took = time.perf_counter() - started
    print(f"after-build check, 3000 records + 200 snapshots: {took * 1000:.1f} ms")
    assert took < 0.5
