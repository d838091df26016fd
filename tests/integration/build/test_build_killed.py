"""kiln killed with SIGKILL during a RUN (as CI timeouts do): its step dies with it, and
the next kiln leaves no container, mount or scratch directory of the dead one.

Only processes carrying the test's unique marker are ever signalled (never ``pkill``):
the step's shell has it on its command line."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from tests.fixtures.build import make_context

pytestmark = pytest.mark.integration

RUNTIME_ROOT = Path("/run/kiln/runtime")


def _pids_with(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
    return found


def _kill_container_of(marker: str) -> None:
    """The test's own cleanup, should kiln have failed at it: SIGKILL the processes
    carrying *marker* and every process of their PID namespace (the container's)."""
    own_ns = os.readlink("/proc/self/ns/pid")
    namespaces = set()
    for pid in _pids_with(marker):
        with contextlib.suppress(OSError):
            namespaces.add(os.readlink(f"/proc/{pid}/ns/pid"))
    namespaces.discard(own_ns)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(entry / "ns" / "pid") in namespaces:
                    os.kill(int(entry.name), signal.SIGKILL)


def _wait_for(condition: Callable[[], object], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return bool(condition())


def _children(pid: int) -> list[tuple[int, bytes]]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    found.append((int(entry.name), (entry / "cmdline").read_bytes()))
    return found


def _slirp_of(pid: int) -> list[int]:
    """slirp4netns processes serving a network namespace of kiln process *pid*."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                argv = (entry / "cmdline").read_bytes().split(b"\0")
                if argv[0].endswith(b"slirp4netns") and f"/proc/{pid}/fd/".encode() in b" ".join(
                    argv
                ):
                    found.append(int(entry.name))
    return found


def _start_killable_build(root: Path, ctx: Path, marker: str) -> subprocess.Popen[bytes]:
    """``kiln build`` of a step that sleeps, once the step's process runs."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "kiln.cli.main", "build", "--progress", "plain", str(ctx)],
        env={**os.environ, "KILN_ROOT": str(root)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    if not _wait_for(lambda: _pids_with(marker) or proc.poll() is not None, 60):
        proc.kill()
    assert _pids_with(marker), f"the step never started (kiln exited {proc.poll()})"
    return proc


def _leftovers(root: Path, pid: int) -> tuple[list[str], list[str], list[Path]]:
    """Mounts, runtime containers and scratch directories of the sessions of kiln *pid*."""
    sessions = list((root / "tmp").glob(f"session-{pid}-*"))
    names = {s.name.removesuffix(".lock") for s in sessions}
    prefixes = tuple("kiln-" + n.removeprefix("session-") + "-" for n in names)
    mounts = [
        line.split()[4]
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if any(line.split()[4].startswith(str(root / "tmp" / n) + "/") for n in names)
    ]
    containers = sorted(
        e.name for e in (RUNTIME_ROOT.iterdir() if RUNTIME_ROOT.is_dir() else [])
        if prefixes and e.name.startswith(prefixes)
    )  # fmt: skip
    return mounts, containers, sessions


@pytest.fixture
def marker() -> str:
    mark = f"kiln-sigkill-{secrets.token_hex(4)}"
    yield mark
    _kill_container_of(mark)


def test_sigkill_of_kiln_kills_its_step(busybox_image, tmp_path: Path, marker: str, need_root):
    ctx = make_context(tmp_path / "ctx", f"FROM {busybox_image}\nRUN sleep 300 && echo {marker}\n")
    root = tmp_path / "root"
    proc = _start_killable_build(root, ctx, marker)
    mounts, containers, _ = _leftovers(root, proc.pid)
    assert mounts and containers and _slirp_of(proc.pid)  # what must go
    os.kill(proc.pid, signal.SIGKILL)  # kiln alone, not its process group
    proc.wait()
    assert _wait_for(lambda: not _pids_with(marker), 5), "the step outlived kiln"
    assert _wait_for(lambda: not _slirp_of(proc.pid), 5), "its network process stayed"
    assert _wait_for(lambda: not _leftovers(root, proc.pid)[1], 5), "its container stayed"
    # the next kiln (any build) sweeps the dead one's mounts and scratch directories
    ctx2 = make_context(tmp_path / "ctx2", "FROM scratch\nCOPY a /a\n", {"a": "a"})
    run = subprocess.run(
        [sys.executable, "-m", "kiln.cli.main", "build", "--progress", "plain", str(ctx2)],
        env={**os.environ, "KILN_ROOT": str(root)}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert _leftovers(root, proc.pid) == ([], [], [])


def test_the_next_kiln_kills_a_step_its_watchdog_could_not(
    busybox_image, tmp_path: Path, marker: str, need_root
):
    """kiln and its watchdog both killed (say the CI job's whole cgroup): the runtime dies
    with kiln but its container runs on, until the next kiln's sweep takes it down."""
    ctx = make_context(tmp_path / "ctx", f"FROM {busybox_image}\nRUN sleep 300 && echo {marker}\n")
    root = tmp_path / "root"
    proc = _start_killable_build(root, ctx, marker)
    watchdogs = [pid for pid, argv in _children(proc.pid) if b"watchdog.py" in argv]
    assert len(watchdogs) == 1, _children(proc.pid)
    os.kill(watchdogs[0], signal.SIGKILL)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(1)
    assert _pids_with(marker), "nothing left for the sweep to do: the test proves nothing"
    assert _leftovers(root, proc.pid)[1]
    run = subprocess.run(
        [sys.executable, "-m", "kiln.cli.main", "build", "--progress", "plain",
         str(make_context(tmp_path / "ctx2", f"FROM {busybox_image}\nRUN true\n"))],
        env={**os.environ, "KILN_ROOT": str(root)}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert _wait_for(lambda: not _pids_with(marker), 5), "the sweep left the step running"
    assert _leftovers(root, proc.pid) == ([], [], [])
