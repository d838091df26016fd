"""The isolation of tests/conftest.py: every test has its own KILN_ROOT and DOCKER_CONFIG,
and a write to the real ones is noticed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.fixtures.isolation import REAL_DOCKER_DIR, REAL_STATE_ROOT, changes, fingerprint

from kiln.registry.dockerconfig import config_path
from kiln.state import KilnRoot, default_root


def test_each_test_has_its_own_empty_root_and_docker_config(
    kiln_root: Path, docker_config: Path, tmp_path: Path
) -> None:
    assert os.environ["KILN_ROOT"] == str(kiln_root)
    assert os.environ["DOCKER_CONFIG"] == str(docker_config)
    assert default_root() == kiln_root != REAL_STATE_ROOT
    assert config_path() == docker_config / "config.json"
    assert config_path().parent != REAL_DOCKER_DIR
    assert list(kiln_root.iterdir()) == [] and list(docker_config.iterdir()) == []
    assert tmp_path not in kiln_root.parents  # a build context in tmp_path never holds it


def test_subprocesses_inherit_the_isolation(kiln_root: Path, docker_config: Path) -> None:
    code = (
        "from kiln.state import default_root; from kiln.registry.dockerconfig import "
        "config_path; print(default_root()); print(config_path())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.splitlines() == [str(kiln_root), str(docker_config / "config.json")]


def test_a_write_anywhere_in_the_layout_is_noticed(tmp_path: Path) -> None:
    root = KilnRoot(tmp_path / "state").ensure()
    (root.blobs / ("a" * 64)).write_bytes(b"blob")
    before = fingerprint(root.path)
    assert fingerprint(root.path) == before  # reading changes nothing
    (root.blobs / ("b" * 64)).write_bytes(b"another blob")
    (root.tmp / "session-1.lock").write_text("")
    (root.cache_keys / "k.json").unlink(missing_ok=True)
    assert changes(before, fingerprint(root.path)) == [
        f"created {root.tmp / 'session-1.lock'}",
        f"modified {root.blobs}",
        f"modified {root.tmp}",
    ]


def test_a_missing_directory_being_created_is_noticed(tmp_path: Path) -> None:
    before = fingerprint(tmp_path / "never")
    assert before == ()
    KilnRoot(tmp_path / "never").ensure()
    assert changes(before, fingerprint(tmp_path / "never"))[0] == f"created {tmp_path / 'never'}"
