"""Authentication against real registries: htpasswd (Basic) and bearer tokens; kiln login."""

from __future__ import annotations

import base64
import io
import json
import os
import secrets
import stat
from pathlib import Path

import pytest
from tests.fixtures.registry import RegistryServer

from kiln.cli.main import main
from kiln.errors import AuthError
from kiln.oci import OCI_LAYER_GZIP, Descriptor, sha256_digest
from kiln.registry.client import RegistryClient
from kiln.registry.dockerconfig import Credentials, DockerConfig, StaticCredentials
from kiln.registry.reference import Reference
from kiln.registry.upload import BlobPush

pytestmark = pytest.mark.integration


def _repo(server: RegistryServer) -> Reference:
    return Reference.parse(f"{server.host}/kiln-auth/{secrets.token_hex(4)}")


def _blob(size: int = 2000) -> tuple[Descriptor, bytes]:
    data = os.urandom(size)
    return Descriptor(OCI_LAYER_GZIP, sha256_digest(data), size), data


def _creds(server: RegistryServer, password: str | None = None) -> StaticCredentials:
    assert server.username and server.password
    return StaticCredentials(
        {server.host: Credentials(server.username, password or server.password)}
    )


@pytest.fixture(params=["htpasswd", "token"])
def secured(
    request: pytest.FixtureRequest, auth_registry: RegistryServer, token_registry: RegistryServer
) -> RegistryServer:
    return auth_registry if request.param == "htpasswd" else token_registry


def test_anonymous_access_is_refused_with_a_login_hint(secured: RegistryServer) -> None:
    repo = _repo(secured)
    with RegistryClient() as client, pytest.raises(AuthError) as info:
        client.get_manifest(repo.with_tag("v1"))
    assert f"kiln login {secured.host}" in str(info.value)
    desc, data = _blob()
    with RegistryClient() as client, pytest.raises(AuthError):
        client.push_blob(repo, desc, data)


def test_wrong_password_is_refused(secured: RegistryServer) -> None:
    with RegistryClient(_creds(secured, "wrong")) as client, pytest.raises(AuthError) as info:
        client.blob_exists(_repo(secured), sha256_digest(b"x"))
    assert secured.host in str(info.value)
    assert f"kiln login {secured.host}" in str(info.value)


def test_push_mount_and_pull_with_credentials(secured: RegistryServer, tmp_path: Path) -> None:
    source, target = _repo(secured), _repo(secured)
    desc, data = _blob(30_000)
    with RegistryClient(_creds(secured)) as client:
        assert client.push_blob(source, desc, data) == BlobPush.UPLOADED
        assert client.push_blob(source, desc, data) == BlobPush.EXISTS
        assert client.push_blob(target, desc, data, [source]) == BlobPush.MOUNTED
        assert client.get_blob_bytes(target, desc.digest) == data


def test_bearer_tokens_are_scoped_and_cached(token_registry: RegistryServer) -> None:
    issuer = token_registry.token_server
    assert issuer is not None
    source, target = _repo(token_registry), _repo(token_registry)
    desc, data = _blob()
    with RegistryClient(_creds(token_registry)) as client:
        client.push_blob(source, desc, data)
        issuer.requests.clear()
        assert client.push_blob(target, desc, data, [source]) == BlobPush.MOUNTED
        scopes = [sorted(r["scopes"]) for r in issuer.requests]
        # HEAD with push rights on the target, then a token that can also read the source.
        assert scopes == [
            [f"repository:{target.repository}:pull,push"],
            sorted(
                [
                    f"repository:{source.repository}:pull",
                    f"repository:{target.repository}:pull,push",
                ]
            ),
        ]
        assert all(r["user"] == token_registry.username for r in issuer.requests)
        issuer.requests.clear()
        for _ in range(5):
            assert client.get_blob_bytes(source, desc.digest) == data
        assert [r["scopes"] for r in issuer.requests] == [[f"repository:{source.repository}:pull"]]


def test_parallel_pushes_share_one_token(token_registry: RegistryServer) -> None:
    issuer = token_registry.token_server
    assert issuer is not None
    repo = _repo(token_registry)
    blobs = [_blob(5000 + i) for i in range(8)]
    issuer.requests.clear()
    with RegistryClient(_creds(token_registry), workers=4) as client:
        results = client.push_blobs(repo, blobs)
        assert set(results.values()) == {BlobPush.UPLOADED}
        for desc, data in blobs:
            assert client.get_blob_bytes(repo, desc.digest) == data
    assert [r["scopes"] for r in issuer.requests] == [
        [f"repository:{repo.repository}:pull,push"],
        [f"repository:{repo.repository}:pull"],
    ]


def test_a_refused_token_is_replaced(token_registry: RegistryServer) -> None:
    issuer = token_registry.token_server
    assert issuer is not None
    repo = _repo(token_registry)
    desc, data = _blob()
    with RegistryClient(_creds(token_registry)) as client:
        client.push_blob(repo, desc, data)
        # Make every cached token one the registry rejects (as if revoked or expired).
        tokens = client._session.auth._tokens
        for cached in tokens.values():
            cached.value = cached.value[:-8] + "AAAAAAAA"
        issuer.requests.clear()
        assert client.get_blob_bytes(repo, desc.digest) == data  # a pull scope: new token
        assert client.push_blob(repo, desc, data) == BlobPush.EXISTS  # stale: replaced
        assert [r["scopes"] for r in issuer.requests] == [
            [f"repository:{repo.repository}:pull"],
            [f"repository:{repo.repository}:pull,push"],
        ]


def test_docker_config_credentials_are_used(auth_registry: RegistryServer, tmp_path: Path) -> None:
    config = DockerConfig(tmp_path / "config.json")
    assert auth_registry.username and auth_registry.password
    config.store(auth_registry.host, Credentials(auth_registry.username, auth_registry.password))
    desc, data = _blob()
    with RegistryClient(DockerConfig(tmp_path / "config.json")) as client:
        assert client.push_blob(_repo(auth_registry), desc, data) == BlobPush.UPLOADED


# -- kiln login / logout ----------------------------------------------------------------
def _login(
    monkeypatch: pytest.MonkeyPatch, server: RegistryServer, password: str, *extra: str
) -> int:
    monkeypatch.setattr("sys.stdin", io.StringIO(password + "\n"))
    assert server.username
    return main(["login", server.host, "-u", server.username, "--password-stdin", *extra])


def test_kiln_login_stores_verified_credentials(
    secured: RegistryServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    config_file = tmp_path / "docker" / "config.json"
    assert secured.password

    assert _login(monkeypatch, secured, "not-the-password") == 1
    err = capsys.readouterr().err
    assert f"login to {secured.host} failed" in err
    assert "Traceback" not in err
    assert not config_file.exists()

    assert _login(monkeypatch, secured, secured.password) == 0
    assert "Login Succeeded" in capsys.readouterr().out
    auths = json.loads(config_file.read_text())["auths"]
    expected = base64.b64encode(f"{secured.username}:{secured.password}".encode()).decode()
    assert auths == {secured.host: {"auth": expected}}
    assert stat.S_IMODE(config_file.stat().st_mode) == 0o600

    # What was stored works for a push through the default credential source.
    desc, data = _blob()
    with RegistryClient(DockerConfig()) as client:
        assert client.push_blob(_repo(secured), desc, data) == BlobPush.UPLOADED

    assert main(["logout", secured.host]) == 0
    assert json.loads(config_file.read_text())["auths"] == {}
    assert main(["logout", secured.host]) == 0
    assert "Not logged in" in capsys.readouterr().out


def test_kiln_login_password_flag_warns(
    auth_registry: RegistryServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    assert auth_registry.username and auth_registry.password
    code = main(
        ["login", auth_registry.host, "-u", auth_registry.username, "-p", auth_registry.password]
    )
    assert code == 0
    assert "--password-stdin" in capsys.readouterr().err
    assert DockerConfig(tmp_path / "config.json").get(auth_registry.host) == Credentials(
        auth_registry.username, auth_registry.password
    )


def test_kiln_login_usage_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    monkeypatch.setattr("sys.stdin", io.StringIO("pw\n"))
    assert main(["login", "127.0.0.1:1", "--password-stdin"]) == 2
    assert "--username" in capsys.readouterr().err
    assert main(["login", "not a host!", "-u", "x", "-p", "y"]) == 2
    assert "invalid registry" in capsys.readouterr().err
    # An unreachable registry is a registry error, not a crash.
    monkeypatch.setattr("sys.stdin", io.StringIO("pw\n"))
    assert main(["login", "127.0.0.1:1", "-u", "x", "--password-stdin"]) == 1
    assert "cannot reach registry 127.0.0.1:1" in capsys.readouterr().err
    assert not (tmp_path / "config.json").exists()
