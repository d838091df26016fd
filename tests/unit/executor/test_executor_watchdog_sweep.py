"""The watchdog and the start-up sweep against a fake OCI runtime (a script that logs its
arguments and forgets a container on ``delete``): no root, no runc."""

from __future__ import annotations

import fcntl
import os
import stat
from pathlib import Path

import pytest

from kiln import state
from kiln.executor.watchdog import Watchdog, watch

FAKE_RUNTIME = """#!/bin/sh
# fake runc: --root ROOT VERB [--force] ID [SIGNAL]. It knows a container by its state
# file (state.json or status); "delete" forgets it, "state" answers whether it knows it.
root=$2 verb=$3
shift 3
[ "$1" = --force ] && shift
known=false
[ -e "$root/$1/state.json" ] || [ -e "$root/$1/status" ] && known=true
[ "$verb" = state ] && { $known; exit; }
echo "$verb $1" >> "{log}"
[ "$verb" = delete ] && $known && rm -rf "$root/$1"
exit 0
"""


def _fake_runtime(tmp_path: Path, name: str = "runc") -> tuple[Path, Path]:
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    log = tmp_path / f"{name}.log"
    script = bindir / name
    script.write_text(FAKE_RUNTIME.replace("{log}", str(log)))
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script, log


def _calls(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def test_watch_kills_what_is_still_listed_when_the_pipe_ends(tmp_path: Path):
    runtime, log = _fake_runtime(tmp_path)
    root = tmp_path / "state"
    for cid in ("a", "b", "c"):
        (root / cid).mkdir(parents=True)
        (root / cid / "state.json").write_text("{}")
    (root / "cut").mkdir()
    (root / "cut" / "exec.fifo").write_text("")  # kiln died while runc created it
    watch([b"+a\n", b"+b\n", b"-a\n", b"+gone\n", b"+cut\n"], str(runtime), str(root))
    # b: still running; a: released; gone: the runtime does not know it (never created)
    assert _calls(log) == ["kill b", "delete b", "kill cut", "delete cut"]
    assert sorted(p.name for p in root.iterdir()) == ["a", "c"]


def test_watch_of_a_normal_exit_does_nothing(tmp_path: Path):
    runtime, log = _fake_runtime(tmp_path)
    watch([b"+a\n", b"-a\n"], str(runtime), str(tmp_path))
    assert _calls(log) == []


def test_the_watchdog_process_acts_once_kiln_closes_the_pipe(tmp_path: Path):
    runtime, log = _fake_runtime(tmp_path)
    root = tmp_path / "state"
    for cid in ("kiln-x", "kiln-y"):
        (root / cid).mkdir(parents=True)
        (root / cid / "state.json").write_text("{}")
    dog = Watchdog(str(runtime), root)
    dog.watch("kiln-x")
    dog.watch("kiln-y")
    dog.release("kiln-y")
    assert _calls(log) == []  # nothing while kiln lives
    dog.close()
    assert _calls(log) == ["kill kiln-x", "delete kiln-x"]


def _stale_session(tmp: Path, name: str) -> Path:
    (tmp / name).mkdir(parents=True)
    (tmp / f"{name}.lock").write_text("")
    return tmp / name


def test_sweep_deletes_the_containers_of_dead_sessions_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    runc, runc_log = _fake_runtime(tmp_path, "runc")
    _, crun_log = _fake_runtime(tmp_path, "crun")
    monkeypatch.setenv("PATH", f"{runc.parent}:{os.environ['PATH']}")
    runtime_root = tmp_path / "runtime"
    monkeypatch.setattr(state, "RUNTIME_ROOT", runtime_root)
    tmp = tmp_path / "tmp"
    _stale_session(tmp, "session-4242-aaaaaaaaaaaa")
    live = _stale_session(tmp, "session-4343-bbbbbbbbbbbb")
    lock = open(tmp / f"{live.name}.lock", "a")  # noqa: SIM115 - another live kiln
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        for name, kind in [("kiln-4242-aaaaaaaaaaaa-01", "state.json"),
                           ("kiln-4242-aaaaaaaaaaaa-02", "status"),
                           ("kiln-4242-aaaaaaaaaaaa-03", "exec.fifo"),  # creation cut short
                           ("kiln-4343-bbbbbbbbbbbb-01", "state.json"),
                           ("kiln-4242-aaaaaaaaaaaab-01", "state.json")]:  # fmt: skip
            (runtime_root / name).mkdir(parents=True)
            (runtime_root / name / kind).write_text("{}")
        assert state.sweep_stale_sessions(tmp) == 1
    finally:
        lock.close()
    assert _calls(runc_log) == ["delete kiln-4242-aaaaaaaaaaaa-01"]  # runc's state
    assert _calls(crun_log) == [  # crun's, and what no runtime knows (left to remove)
        "delete kiln-4242-aaaaaaaaaaaa-02",
        "delete kiln-4242-aaaaaaaaaaaa-03",
    ]
    assert sorted(p.name for p in runtime_root.iterdir()) == [
        "kiln-4242-aaaaaaaaaaaab-01",  # not that session's (another prefix)
        "kiln-4343-bbbbbbbbbbbb-01",  # a live kiln's
    ]
    assert not (tmp / "session-4242-aaaaaaaaaaaa").exists() and live.exists()


def test_container_prefix_names_this_process_session(tmp_path: Path):
    prefix = state.container_prefix(tmp_path)
    sessions = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert len(sessions) == 1
    assert prefix == "kiln-" + sessions[0].name.removeprefix("session-") + "-"
    assert prefix.startswith(f"kiln-{os.getpid()}-")
