"""The default gha scope: unique per build of a matrix, platforms included."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.cache.backends.gha import default_scope
from kiln.oci import Platform

AMD = Platform("linux", "amd64")
ARM = Platform("linux", "arm64")


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "services" / "api").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_scope_names_context_dockerfile_target_and_platform(repo: Path):
    ctx = repo / "services" / "api"
    assert (
        default_scope(ctx, ctx / "Dockerfile", "app", [AMD]) == "kiln-services-api-app-linux-amd64"
    )
    assert default_scope(ctx, ctx / "prod.Dockerfile", None, [ARM]) == (
        "kiln-services-api-prod.Dockerfile-linux-arm64"
    )
    assert default_scope(repo, repo / "Dockerfile", None, [AMD]) == "kiln-linux-amd64"


def test_per_platform_jobs_and_a_multi_platform_build_never_share_a_scope(repo: Path):
    ctx = repo / "services" / "api"
    scopes = {default_scope(ctx, ctx / "Dockerfile", None, platforms)
              for platforms in ([AMD], [ARM], [AMD, ARM])}  # fmt: skip
    assert scopes == {"kiln-services-api-linux-amd64", "kiln-services-api-linux-arm64",
                      "kiln-services-api-linux-amd64-linux-arm64"}  # fmt: skip


def test_a_long_scope_is_shortened_with_a_digest(repo: Path):
    deep = repo.joinpath(*["segment"] * 20)
    deep.mkdir(parents=True)
    scope = default_scope(deep, deep / "Dockerfile", None, [AMD, ARM])
    assert len(scope) <= 110 and scope.startswith("kiln-segment-segment")
    assert scope != default_scope(deep, deep / "Dockerfile", None, [AMD])
