"""Shared pytest configuration: fixture modules every test folder may use, and isolation.

No test may touch the machine's real kiln state or Docker credentials:

- every test runs with ``KILN_ROOT`` and ``DOCKER_CONFIG`` pointing at fresh temporary
  directories of its own (fixtures ``kiln_root`` and ``docker_config``), and the whole
  session (session- and module-scoped fixtures included) with temporary ones as well.
  A test that wants a root of its own passes it explicitly (``kiln(..., root=...)``,
  ``run_kiln(..., root=...)``, ``env={"KILN_ROOT": ...}``) or sets the variable with
  ``monkeypatch``: those always win over the defaults set here, so builds that pass the
  same root keep sharing it;
- after every test, the real default state directory (``/var/lib/kiln`` for root, else
  ``$XDG_DATA_HOME/kiln``) and the real ``~/.docker`` are compared with how they were
  before it: a test (or a subprocess it started with an environment of its own) that
  created or changed anything there fails; so does the session, for what its session-
  and module-scoped fixtures did outside any one test.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.isolation import (
    REAL_DOCKER_DIR,
    REAL_STATE_ROOT,
    Fingerprint,
    changes,
    fingerprint,
)

WATCHED = (REAL_STATE_ROOT, REAL_DOCKER_DIR)

pytest_plugins = [
    "tests.fixtures.registry",
    "tests.fixtures.gha",
    "tests.fixtures.build",
    "tests.fixtures.docker",
    "tests.fixtures.debian",
    "tests.fixtures.platforms",
]


def _fail_if_touched(before: list[Fingerprint], who: str) -> None:
    for path, old in zip(WATCHED, before, strict=True):
        found = changes(old, fingerprint(path))
        if found:
            pytest.fail(
                f"{who} touched the real {path} (a test must use its own KILN_ROOT / "
                "DOCKER_CONFIG): " + "; ".join(found[:10]),
                pytrace=False,
            )


@pytest.fixture(scope="session", autouse=True)
def _isolated_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Temporary KILN_ROOT and DOCKER_CONFIG for session- and module-scoped fixtures,
    which are set up before (and torn down after) any one test's isolation; checked
    once more at the end of the session."""
    before = [fingerprint(path) for path in WATCHED]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KILN_ROOT", str(tmp_path_factory.mktemp("session-kiln-root")))
        mp.setenv("DOCKER_CONFIG", str(tmp_path_factory.mktemp("session-docker-config")))
        yield
    _fail_if_touched(before, "a session- or module-scoped fixture")


@pytest.fixture
def kiln_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This test's KILN_ROOT: an empty directory (a fresh machine), outside ``tmp_path``
    so that a build context in ``tmp_path`` never contains it."""
    return tmp_path_factory.mktemp("kiln-root")


@pytest.fixture
def docker_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This test's DOCKER_CONFIG: an empty directory (no credentials)."""
    return tmp_path_factory.mktemp("docker-config")


@pytest.fixture(autouse=True)
def _isolated_state(
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    kiln_root: Path,
    docker_config: Path,
) -> Iterator[None]:
    from kiln.registry.dockerconfig import config_path
    from kiln.state import default_root

    before = [fingerprint(path) for path in WATCHED]
    monkeypatch.setenv("KILN_ROOT", str(kiln_root))
    monkeypatch.setenv("DOCKER_CONFIG", str(docker_config))
    # what kiln itself resolves, so that a change of its lookup cannot bypass this
    assert default_root() == kiln_root
    assert config_path() == docker_config / "config.json"
    yield
    _fail_if_touched(before, request.node.nodeid)
