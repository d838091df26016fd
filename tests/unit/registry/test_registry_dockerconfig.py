from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import pytest

from kiln.errors import KilnError
from kiln.registry.dockerconfig import (
    Credentials,
    DockerConfig,
    StaticCredentials,
    config_path,
)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _write(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def test_config_path_honours_docker_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "d"))
    assert config_path() == tmp_path / "d" / "config.json"
    monkeypatch.delenv("DOCKER_CONFIG")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert config_path() == tmp_path / "home" / ".docker" / "config.json"


def test_reads_every_entry_form(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    _write(
        path,
        {
            "credsStore": "desktop",  # helpers are not supported, but must not break us
            "credHelpers": {"gcr.io": "gcloud"},
            "auths": {
                "https://index.docker.io/v1/": {"auth": _b64("hubuser:hub:pass")},
                "ghcr.io": {"username": "gh", "password": "tok"},
                "http://127.0.0.1:5000/v2/": {"auth": _b64("local:pw")},
                "quay.io": {"auth": _b64("q:x"), "identitytoken": "refresh-me"},
                "empty.example": {},
                "broken.example": {"auth": "!!not base64!!"},
            },
        },
    )
    config = DockerConfig(path)
    hub = config.get("docker.io")
    assert hub == Credentials("hubuser", "hub:pass")
    assert config.get("registry-1.docker.io") == hub  # the API host maps to Docker Hub
    assert config.get("ghcr.io") == Credentials("gh", "tok")
    assert config.get("127.0.0.1:5000") == Credentials("local", "pw")
    assert config.get("quay.io") == Credentials("q", "x", "refresh-me")
    assert config.get("empty.example") is None
    assert config.get("broken.example") is None
    assert "hub:pass" not in repr(hub)


def test_credential_helpers_are_not_run_but_explained(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "config.json"
    _write(path, {"credsStore": "desktop", "credHelpers": {"gcr.io": "gcloud"}, "auths": {}})
    config = DockerConfig(path)
    with caplog.at_level("WARNING", logger="kiln.registry.dockerconfig"):
        assert config.get("gcr.io") is None
        assert config.get("gcr.io") is None
        assert config.get("ghcr.io") is None
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2  # once per host
    assert "'gcloud'" in messages[0] and "kiln login gcr.io" in messages[0]
    assert "'desktop'" in messages[1]


def test_missing_or_empty_file_means_no_credentials(tmp_path: Path) -> None:
    assert DockerConfig(tmp_path / "nope.json").get("ghcr.io") is None
    (tmp_path / "empty.json").write_text("")
    assert DockerConfig(tmp_path / "empty.json").get("ghcr.io") is None


def test_unparsable_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text("{not json")
    with pytest.raises(KilnError) as info:
        DockerConfig(path).get("ghcr.io")
    assert str(path) in str(info.value)


def test_store_keeps_other_keys_and_is_private(tmp_path: Path) -> None:
    path = tmp_path / "docker" / "config.json"
    _write(
        path,
        {
            "credsStore": "pass",
            "proxies": {"default": {"httpProxy": "http://proxy:3128"}},
            "auths": {"other.example": {"auth": _b64("o:p")}},
        },
    )
    path.chmod(0o644)
    config = DockerConfig(path)
    config.store("127.0.0.1:5000", Credentials("me", "pw"))
    data = json.loads(path.read_text())
    assert data["credsStore"] == "pass"
    assert data["proxies"] == {"default": {"httpProxy": "http://proxy:3128"}}
    assert data["auths"]["other.example"] == {"auth": _b64("o:p")}
    assert data["auths"]["127.0.0.1:5000"] == {"auth": _b64("me:pw")}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["config.json"]  # no temp files left
    # The same object sees its own write (the file is re-read when it changes).
    assert config.get("127.0.0.1:5000") == Credentials("me", "pw")


def test_store_docker_hub_uses_dockers_key_and_replaces_aliases(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    _write(path, {"auths": {"index.docker.io": {"auth": _b64("old:old")}}})
    config = DockerConfig(path)
    config.store("docker.io", Credentials("new", "pw"))
    auths = json.loads(path.read_text())["auths"]
    assert auths == {"https://index.docker.io/v1/": {"auth": _b64("new:pw")}}
    assert config.get("registry-1.docker.io") == Credentials("new", "pw")


def test_store_creates_the_file(tmp_path: Path) -> None:
    path = tmp_path / "fresh" / "config.json"
    DockerConfig(path).store("ghcr.io", Credentials("a", "b"))
    assert json.loads(path.read_text()) == {"auths": {"ghcr.io": {"auth": _b64("a:b")}}}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_remove(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    _write(
        path,
        {
            "auths": {"https://ghcr.io": {"auth": _b64("a:b")}, "x.io": {"auth": _b64("c:d")}},
            "other": 1,
        },
    )
    config = DockerConfig(path)
    assert config.remove("ghcr.io") is True
    assert config.remove("ghcr.io") is False
    data = json.loads(path.read_text())
    assert data == {"auths": {"x.io": {"auth": _b64("c:d")}}, "other": 1}
    assert config.get("ghcr.io") is None


def test_static_credentials_fold_docker_hub_aliases() -> None:
    source = StaticCredentials({"docker.io": Credentials("u", "p")})
    assert source.get("registry-1.docker.io") == Credentials("u", "p")
    assert source.get("ghcr.io") is None
