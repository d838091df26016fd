"""``kiln cache serve`` / ``ls`` / ``rm`` / ``stats`` as a user runs them, and several
server instances sharing one PostgreSQL metadata store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from tests.fixtures.gha import REPO_ROOT, PostgresCluster, ServerFactory, Wire

VERSION = "9" * 64


def kiln(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT / "src")
    env.pop("KILN_CACHE_TOKEN", None)
    env.pop("KILN_CACHE_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "kiln.cli.main", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_ls_rm_stats(gha_server_factory: ServerFactory) -> None:
    server = gha_server_factory()
    with httpx.Client(timeout=30, trust_env=False) as client:
        w = Wire(client, server.token("refs/heads/main"), server.url)
        w.v1_save("deps-linux-1", VERSION, b"a" * 100)
        w.v1_save("deps-linux-2", VERSION, b"b" * 200)
        w.v2_save("tools-1", VERSION, b"c" * 300)
        w.v1_lookup(["deps-linux-1"], VERSION)
        w.v1_lookup(["absent"], VERSION)
    auth = ["--url", server.url, "--secret-file", str(server.secret_file)]

    ls = kiln("cache", "ls", *auth)
    assert ls.returncode == 0, ls.stderr
    assert "deps-linux-1" in ls.stdout and "tools-1" in ls.stdout
    assert "refs/heads/main" in ls.stdout

    listed = json.loads(kiln("cache", "ls", *auth, "--key", "deps-", "--json").stdout)
    assert sorted(e["key"] for e in listed) == ["deps-linux-1", "deps-linux-2"]

    stats = json.loads(kiln("cache", "stats", *auth, "--json").stdout)
    assert stats["entries"] == 3 and stats["bytes"] == 600
    assert stats["hits"] == 1 and stats["misses"] == 1

    rm = kiln("cache", "rm", *auth, "--key", "deps-linux-", "--prefix")
    assert rm.returncode == 0, rm.stderr
    assert rm.stdout.count("removed") == 2
    one = next(e for e in json.loads(kiln("cache", "ls", *auth, "--json").stdout))
    assert one["key"] == "tools-1"
    assert kiln("cache", "rm", *auth, str(one["id"])).returncode == 0
    assert json.loads(kiln("cache", "stats", *auth, "--json").stdout)["entries"] == 0

    # a token from `kiln cache token --admin` works the same; a scoped one sees its scope
    admin = kiln("cache", "token", "--secret-file", str(server.secret_file), "--admin").stdout
    assert kiln("cache", "ls", "--url", server.url, "--token", admin.strip()).returncode == 0
    bad = kiln("cache", "ls", "--url", server.url, "--token", "forged")
    assert bad.returncode == 1 and "401" in bad.stderr and "Traceback" not in bad.stderr
    down = kiln("cache", "stats", "--url", "http://127.0.0.1:9", "--token", admin.strip())
    assert down.returncode == 1 and "cannot reach" in down.stderr

    log = server.log_text()
    assert admin.strip() not in log and "sig=" not in log


def test_serve_user_errors(tmp_path: Path) -> None:
    bad = kiln("cache", "serve", "--root", str(tmp_path), "--max-size", "lots")
    assert bad.returncode == 2 and "invalid --max-size" in bad.stderr
    assert "Traceback" not in bad.stderr
    bad = kiln("cache", "serve", "--root", str(tmp_path), "--listen", "nowhere:port")
    assert bad.returncode == 2 and "--listen" in bad.stderr
    bad = kiln("cache", "serve", "--root", str(tmp_path), "--reservation-timeout", "soon")
    assert bad.returncode == 2 and "invalid --reservation-timeout 'soon'" in bad.stderr
    bad = kiln("cache", "serve", "--root", str(tmp_path), "--reservation-timeout", "0s")
    assert bad.returncode == 2 and "--reservation-timeout must be positive" in bad.stderr


def test_instances_share_postgres_metadata(
    gha_server_factory: ServerFactory, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Two servers over one PostgreSQL database and one storage directory behave as one:
    what one commits the other serves, and a key reserved on one conflicts on the other."""
    cluster: PostgresCluster = request.getfixturevalue("postgres_cluster")
    dsn = cluster.new_database()
    shared = tmp_path / "shared-root"
    a = gha_server_factory("--database", dsn, root=shared)
    b = gha_server_factory("--database", dsn, root=shared)
    with httpx.Client(timeout=30, trust_env=False) as client:
        wa = Wire(client, a.token("main"), a.url)
        wb = Wire(client, b.token("main"), b.url)
        wa.v2_save("shared-key", VERSION, b"written through a")
        hit = wb.v2_lookup("shared-key", VERSION).json()
        assert hit["ok"] and client.get(hit["signed_download_url"]).content == b"written through a"
        assert wa.v1_reserve("contested", VERSION).status_code == 201
        assert wb.v1_reserve("contested", VERSION).status_code == 409
    assert dsn not in a.log_text()
