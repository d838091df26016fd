"""``kiln du`` and ``kiln prune`` from the command line: output, confirmation, errors."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from tests.fixtures.kiln_state import StateMaker, du_bytes

from kiln.cli.main import main


@pytest.fixture
def maker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> StateMaker:
    monkeypatch.setenv("KILN_ROOT", str(tmp_path / "root"))
    made = StateMaker(tmp_path / "root")
    made.record(age=3600)
    made.snapshot(age=7200)  # dangling: no record or blob has its layer
    made.mount(age=60)
    return made


def test_du_adds_up(maker: StateMaker, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["du", "--format", "json", "--verbose"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["total"] == sum(k["size"] for k in doc["kinds"]) == du_bytes(maker.root.path)
    kinds = {k["kind"]: k for k in doc["kinds"]}
    assert kinds["step cache"]["count"] == 1 and kinds["snapshots"]["count"] == 1
    assert doc["reclaimable"] == sum(k["reclaimable"] for k in doc["kinds"]) > 0
    assert {e["kind"] for e in doc["entries"]} >= {"step cache", "snapshots", "cache mounts"}
    assert main(["du"]) == 0
    table = capsys.readouterr().out
    assert "cache mounts" in table and "Total:" in table and "Reclaimable:" in table


def test_prune_asks_first(maker: StateMaker, monkeypatch: pytest.MonkeyPatch,
                          capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    before = du_bytes(maker.root.path)
    monkeypatch.setattr("sys.stdin", io.StringIO("n\n"))
    assert main(["prune", "--all"]) == 0
    assert "Are you sure" in capsys.readouterr().err
    assert du_bytes(maker.root.path) == before
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))
    assert main(["prune"]) == 0  # dangling only: the orphan snapshot
    out = capsys.readouterr().out
    assert "snapshots" in out and "Total:" in out and "step cache" not in out


def test_prune_all_force(maker: StateMaker, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prune", "-a", "-f", "--filter", "until=30m", "--verbose"]) == 0
    out = capsys.readouterr().out
    assert "step cache" in out and "snapshots" in out and "cache mounts" not in out  # 60 s old
    assert out.strip().splitlines()[-1].startswith("Total:\t")
    assert main(["prune", "-af", "--keep-storage", "1GB"]) == 0  # already under: nothing
    assert capsys.readouterr().out.strip() == "Total:\t0 B"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["prune", "-f", "--keep-storage", "lots"], "--keep-storage: invalid size 'lots'"),
        (["prune", "-f", "--filter", "until=soon"], "--filter 'until=soon': invalid duration"),
        (["prune", "-f", "--filter", "type=regular"], "--filter 'type=regular': unknown filter"),
    ],
)
def test_bad_values_are_usage_errors(maker: StateMaker, capsys: pytest.CaptureFixture[str],
                                     argv: list[str], message: str) -> None:  # fmt: skip
    before = du_bytes(maker.root.path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ERROR: {message}") and "Traceback" not in err
    assert du_bytes(maker.root.path) == before


def test_a_missing_root_is_empty(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    monkeypatch.setenv("KILN_ROOT", str(tmp_path / "none"))
    assert main(["du"]) == 0
    assert main(["prune", "-af"]) == 0
    assert "Total:\t0 B" in capsys.readouterr().out
    assert not (tmp_path / "none").exists()
