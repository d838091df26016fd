"""kiln explain: the table of a build's steps, and one clear error for a wrong file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kiln.cli.explain import read_steps, table
from kiln.cli.main import main

STEPS = [
    {"step": "app 2/3 COPY src/ /src/", "cached": "remote", "source": "registry r/c:cache",
     "miss_reason": None, "seconds": 0.0, "layer_bytes": 2048},
    {"step": "app 3/3 RUN make", "cached": False, "seconds": 1.25, "layer_bytes": 0,
     "miss_reason": {"kind": "build-arg", "subject": "V",
                     "detail": "build arg V changed: now V=2"}},
]  # fmt: skip


def test_table_rows():
    lines = table(STEPS).splitlines()
    assert lines[0].split() == ["STEP", "RESULT", "TIME", "BYTES", "WHY"]
    assert lines[1].split("  ")[0] == "app 2/3 COPY src/ /src/"
    assert "cached (registry r/c:cache)" in lines[1] and "2.0 kB" in lines[1]
    assert lines[2].endswith("build arg V changed: now V=2") and " ran " in lines[2]
    assert lines[3] == "1/2 steps cached, 1 ran"


def test_explain_command(tmp_path: Path, capsys):
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"steps": STEPS}))
    assert main(["explain", str(path)]) == 0
    assert "build arg V changed" in capsys.readouterr().out


@pytest.mark.parametrize(("content", "message"), [
    (None, "cannot read"), ("{", "is not JSON"), ('{"steps": 3}', "not a kiln metadata file"),
])  # fmt: skip
def test_wrong_files_are_one_clear_error(tmp_path: Path, capsys, content, message):
    path = tmp_path / "m.json"
    if content is not None:
        path.write_text(content)
    assert main(["explain", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    with pytest.raises(Exception, match=message):
        read_steps(path)
