"""The real ``@actions/cache`` npm client (6.x) against ``kiln cache serve``, both APIs.

v1: ``ACTIONS_CACHE_URL`` with ``GITHUB_SERVER_URL`` of a self-hosted forge (the client
then speaks the REST API). v2: ``ACTIONS_CACHE_SERVICE_V2=1`` and ``ACTIONS_RESULTS_URL``
(twirp, uploads through @azure/storage-blob to the signed URL).
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
from pathlib import Path

import httpx
import pytest
from tests.fixtures.gha import GhaServer, NpmHarness

from kiln.gha.scopes import READ

MODES = ["v1", "v2"]


def make_tree(root: Path, seed: str, big: int = 0) -> dict[str, str]:
    root.mkdir(parents=True, exist_ok=True)
    (root / "sub").mkdir(exist_ok=True)
    (root / "a.txt").write_text(f"hello from {seed}\n")
    (root / "sub" / "b.bin").write_bytes(secrets.token_bytes(200_000))
    if big:
        with open(root / "big.bin", "wb") as fh:
            for _ in range(big // (1 << 20)):
                fh.write(os.urandom(1 << 20))
    return tree(root)


def tree(root: Path) -> dict[str, str]:
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            h = hashlib.sha256()
            with open(path, "rb") as fh:
                while chunk := fh.read(1 << 20):
                    h.update(chunk)
            out[str(path.relative_to(root))] = h.hexdigest()
    return out


def assert_no_secrets_logged(server: GhaServer, *tokens: str) -> None:
    log = server.log_text()
    assert log, "the server should log requests"
    for token in tokens:
        assert token not in log
    assert "sig=" not in log and not re.search(r"[?&]se=\d", log)
    assert "Bearer" not in log


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.mark.parametrize("mode", MODES)
def test_save_and_restore_exact(
    npm_harness: NpmHarness, gha_server: GhaServer, workdir: Path, mode: str
) -> None:
    token = gha_server.token("refs/heads/main")
    env = npm_harness.env(gha_server, token, mode, workdir)
    saved = make_tree(workdir / "data", mode)
    key = f"{mode}-exact-{secrets.token_hex(4)}"
    result = npm_harness.run("save", workdir, "data", key, env=env)
    assert isinstance(result["result"], int) and result["result"] > 0, result["log"]
    assert f"Cache service version: {mode}" in result["log"]
    shutil.rmtree(workdir / "data")
    restored = npm_harness.run("restore", workdir, "data", key, env=env)
    assert restored["result"] == key, restored["log"]
    assert tree(workdir / "data") == saved
    assert_no_secrets_logged(gha_server, token)


@pytest.mark.parametrize("mode", MODES)
def test_prefix_and_restore_keys(
    npm_harness: NpmHarness, gha_server: GhaServer, workdir: Path, mode: str
) -> None:
    env = npm_harness.env(gha_server, gha_server.token("refs/heads/main"), mode, workdir)
    run = secrets.token_hex(4)
    old = make_tree(workdir / "data", "old")
    assert npm_harness.run("save", workdir, "data", f"{mode}-deps-{run}-aaa", env=env)["result"] > 0
    new = make_tree(workdir / "data", "new")
    assert old != new
    assert npm_harness.run("save", workdir, "data", f"{mode}-deps-{run}-bbb", env=env)["result"] > 0
    shutil.rmtree(workdir / "data")
    # the primary key as a prefix: the newest entry
    got = npm_harness.run("restore", workdir, "data", f"{mode}-deps-{run}-", env=env)
    assert got["result"] == f"{mode}-deps-{run}-bbb", got["log"]
    assert tree(workdir / "data") == new
    shutil.rmtree(workdir / "data")
    # a miss on the primary key, then restore keys in order
    got = npm_harness.run(
        "restore", workdir, "data", f"{mode}-deps-{run}-zzz",
        f"{mode}-nothing-", f"{mode}-deps-{run}-aaa", f"{mode}-deps-",
        env=env,
    )  # fmt: skip
    assert got["result"] == f"{mode}-deps-{run}-aaa", got["log"]
    assert tree(workdir / "data") == old
    # nothing at all
    miss = npm_harness.run("restore", workdir, "data", f"{mode}-absent-{run}", env=env)
    assert miss["result"] is None


@pytest.mark.parametrize("mode", MODES)
def test_version_mismatch_is_a_miss(
    npm_harness: NpmHarness, gha_server: GhaServer, workdir: Path, mode: str
) -> None:
    """The version hashes the paths: the same key saved for other paths does not match."""
    env = npm_harness.env(gha_server, gha_server.token("refs/heads/main"), mode, workdir)
    key = f"{mode}-version-{secrets.token_hex(4)}"
    make_tree(workdir / "data", "x")
    assert npm_harness.run("save", workdir, "data", key, env=env)["result"] > 0
    make_tree(workdir / "other", "y")
    miss = npm_harness.run("restore", workdir, "other", key, env=env)
    assert miss["result"] is None, miss["log"]
    hit = npm_harness.run("lookup", workdir, "data", key, env=env)
    assert hit["result"] == key


@pytest.mark.parametrize("mode", MODES)
def test_concurrent_saves_of_one_key(
    npm_harness: NpmHarness, gha_server: GhaServer, workdir: Path, mode: str
) -> None:
    token = gha_server.token("refs/heads/main")
    key = f"{mode}-race-{secrets.token_hex(4)}"
    trees, procs = [], []
    for i in range(4):
        cwd = workdir / f"job{i}"
        trees.append(make_tree(cwd / "data", f"job{i}"))
        env = npm_harness.env(gha_server, token, mode, cwd)
        procs.append(npm_harness.start("save", cwd, "data", key, env=env))
    results = [npm_harness.finish(p) for p in procs]
    ids = [r["result"] for r in results]
    assert sum(1 for i in ids if i != -1) == 1, [r["log"] for r in results]
    winner = next(n for n, i in enumerate(ids) if i != -1)
    losers = [r for i, r in zip(ids, results, strict=True) if i == -1]
    assert all("another job may be creating this cache" in r["log"] for r in losers)
    listed = httpx.get(
        f"{gha_server.url}_kiln/v1/entries",
        params={"key": key},
        headers={"Authorization": f"Bearer {gha_server.token(admin=True)}"},
    ).json()["entries"]
    assert len(listed) == 1
    cwd = workdir / "restore"
    cwd.mkdir()
    env = npm_harness.env(gha_server, token, mode, cwd)
    assert npm_harness.run("restore", cwd, "data", key, env=env)["result"] == key
    assert tree(cwd / "data") == trees[winner]


@pytest.mark.parametrize("mode", MODES)
def test_read_only_token(
    npm_harness: NpmHarness, gha_server: GhaServer, workdir: Path, mode: str
) -> None:
    """A pull request's token: reads the base branch's scope, cannot write into it."""
    key = f"{mode}-ro-{secrets.token_hex(4)}"
    main_env = npm_harness.env(gha_server, gha_server.token("refs/heads/main"), mode, workdir)
    saved = make_tree(workdir / "data", "main")
    assert npm_harness.run("save", workdir, "data", key, env=main_env)["result"] > 0
    ro_token = gha_server.token(("refs/heads/main", READ))
    ro_env = npm_harness.env(gha_server, ro_token, mode, workdir)
    make_tree(workdir / "data", "pr")
    denied = npm_harness.run("save", workdir, "data", f"{key}-pr", env=ro_env)
    assert denied["result"] == -1, denied["log"]
    if mode == "v1":
        assert "cache write denied" in denied["log"]
    shutil.rmtree(workdir / "data")
    got = npm_harness.run("restore", workdir, "data", key, env=ro_env)
    assert got["result"] == key and tree(workdir / "data") == saved
    miss = npm_harness.run("lookup", workdir, "data", f"{key}-pr", env=main_env)
    assert miss["result"] is None  # nothing was written
    assert_no_secrets_logged(gha_server, ro_token)


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_entry_over_128_mib(
    npm_harness: NpmHarness, gha_server: GhaServer, workdir: Path, mode: str
) -> None:
    """v2: past @azure/storage-blob's 128 MiB single shot, so staged blocks + block list;
    v1: 32 MiB chunks, four in parallel, out of order."""
    env = npm_harness.env(gha_server, gha_server.token("refs/heads/main"), mode, workdir)
    key = f"{mode}-big-{secrets.token_hex(4)}"
    saved = make_tree(workdir / "data", "big", big=136 << 20)  # random: zstd cannot shrink it
    before = gha_server.log_text().count("PUT /kiln/cache/")
    result = npm_harness.run("save", workdir, "data", key, env=env)
    assert result["result"] > 0, result["log"]
    if mode == "v2":
        puts = gha_server.log_text().count("PUT /kiln/cache/") - before
        assert puts >= 4  # at least 3 blocks of 64 MiB and the block list
    shutil.rmtree(workdir / "data")
    got = npm_harness.run("restore", workdir, "data", key, env=env)
    assert got["result"] == key, got["log"]
    assert tree(workdir / "data") == saved
