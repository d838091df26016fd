"""Start-up stays cheap: the commands that need nothing heavy import nothing heavy.

Each case runs in a fresh interpreter and lists the modules loaded after the command, so
an eager import anywhere on the path (a package ``__init__``, a CLI module's top level)
fails here by name.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("rich", "click", "pygments", "httpx", "kiln.build", "kiln.gha.server",
         "kiln.gha.client", "uvicorn", "starlette", "kiln.solver")  # fmt: skip

PROBE = """
import contextlib, io, json, sys
from kiln.cli.main import main
with contextlib.redirect_stdout(io.StringIO()):
    try:
        main(sys.argv[1:])
    except SystemExit:
        pass
print(json.dumps(sorted(sys.modules)))
"""


def loaded_after(*argv: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", PROBE, *argv], check=True,
                         capture_output=True, text=True).stdout  # fmt: skip
    return set(json.loads(out.splitlines()[-1]))


def heavy(modules: set[str]) -> list[str]:
    # kiln registers a stub for httpx's CLI module (kiln/__init__.py): not an import of it
    modules = modules - {"httpx._main"}
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))


@pytest.mark.parametrize(
    "argv",
    [("version",), ("build", "--help"), ("--help",), ("cache", "--help"), ("login", "--help")],
)
def test_light_commands_load_no_heavy_module(argv: tuple[str, ...]) -> None:
    assert heavy(loaded_after(*argv)) == []


def test_a_build_loads_no_server_no_rich_no_gha_client() -> None:
    probe = "import json, sys, kiln.build, kiln.cli.build; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True,
                         text=True).stdout  # fmt: skip
    modules = set(json.loads(out))
    assert "kiln.build" in modules and "httpx" in modules  # the probe did load a build
    for name in ("rich", "click", "pygments", "kiln.gha.server", "kiln.gha.client", "uvicorn"):
        assert name not in modules, name


def test_the_tty_view_loads_rich_when_asked_for() -> None:
    probe = ("import sys; from kiln.cli.progress import make_progress; make_progress('tty'); "
             "print('rich' in sys.modules)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True,
                         text=True).stdout  # fmt: skip
    assert out.strip() == "True"
