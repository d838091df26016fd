"""Progress output (plain, rawjson), ``kiln version`` and argparse's usage errors (kiln's
own usage errors: test_cli_usage.py)."""

from __future__ import annotations

import io
import json

import pytest

from kiln import __version__
from kiln.cli.main import main
from kiln.cli.progress import JsonProgress, PlainProgress, make_progress
from kiln.frontend.base import MkdirOp, Step


def step(n: int = 2) -> Step:
    return Step(0, "build", n, 3, MkdirOp("/app", ""), "WORKDIR /app", 4, 0)


def test_plain_progress_looks_like_buildx():
    out = io.StringIO()
    progress = PlainProgress(out)
    progress.step_started(step())
    progress.step_log(step(), "hello")
    progress.step_done(step(), 1.25)
    progress.step_cached(step(3), "remote")
    lines = out.getvalue().splitlines()
    assert lines[0] == "#1 [build 2/3] WORKDIR /app"
    assert lines[1].startswith("#1 ") and lines[1].endswith(" hello")
    assert lines[2] == "#1 DONE 1.2s"
    assert lines[3:] == ["#2 [build 3/3] WORKDIR /app", "#2 CACHED (remote)"]


def test_rawjson_progress_is_one_object_per_event():
    out = io.StringIO()
    progress = JsonProgress(out)
    progress.step_started(step())
    progress.step_failed(step(), 0.5, "boom\nmore")
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [e["event"] for e in events] == ["started", "error"]
    assert events[1]["step"] == "build 2/3 WORKDIR /app" and events[1]["error"] == "boom\nmore"


def test_auto_progress_is_plain_without_a_terminal():
    assert isinstance(make_progress("auto"), PlainProgress)


def test_version_and_usage_errors(capsys: pytest.CaptureFixture[str]):
    assert main(["version"]) == 0
    assert capsys.readouterr().out == f"kiln {__version__}\n"
    with pytest.raises(SystemExit) as exit_info:
        main(["build"])  # CONTEXT is missing: argparse's usage error
    assert exit_info.value.code == 2
