"""Errors as GitHub workflow annotations (``::error file=…,line=…::``) when kiln runs in a
GitHub Actions job: a Dockerfile error and a failing RUN step point at their line."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.cli.main import annotation, main
from kiln.errors import DockerfileError, KilnError


def test_a_dockerfile_error_points_at_its_line_relative_to_the_workspace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("GITHUB_WORKSPACE", str(tmp_path))
    exc = DockerfileError("unknown instruction: FORM", path=str(tmp_path / "app" / "Dockerfile"),
                          line=3, hint="did you mean FROM?")  # fmt: skip
    line = annotation(exc)
    assert line.startswith("::error file=app/Dockerfile,line=3,title=kiln build failed::")
    # the message on one line: newlines, percent signs escaped as GitHub wants
    assert "%0Ahint: did you mean FROM?" in line and "\n" not in line


def test_a_step_failure_blamed_on_a_line_and_escapes_in_properties():
    exc = (
        KilnError("exit code 1: 100% broken")
        .prefixed("[build 2/3] RUN false")
        .at("dir,with:odd/Dockerfile", 7)
    )
    line = annotation(exc)
    assert line.startswith("::error file=dir%2Cwith%3Aodd/Dockerfile,line=7,")
    assert line.endswith("::[build 2/3] RUN false: exit code 1: 100%25 broken")
    assert annotation(KilnError("no line")) == "::error title=kiln build failed::no line"


def test_the_cli_prints_the_annotation_only_in_a_github_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    (tmp_path / "Dockerfile").write_text("FROM scratch\nFORM x\n")
    monkeypatch.setenv("GITHUB_WORKSPACE", str(tmp_path))
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    assert main(["build", str(tmp_path)]) == 2
    assert "::error file=Dockerfile,line=2," in capsys.readouterr().err
    monkeypatch.delenv("GITHUB_ACTIONS")
    assert main(["build", str(tmp_path)]) == 2
    assert "::error" not in capsys.readouterr().err
