from __future__ import annotations

import pytest

from kiln.errors import UsageError
from kiln.registry.reference import Reference, normalise_registry

D = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest", "canonical"),
    [
        ("busybox", "docker.io", "library/busybox", "latest", None,
         "docker.io/library/busybox:latest"),
        ("busybox:1.36", "docker.io", "library/busybox", "1.36", None,
         "docker.io/library/busybox:1.36"),
        ("library/busybox", "docker.io", "library/busybox", "latest", None,
         "docker.io/library/busybox:latest"),
        ("user/app", "docker.io", "user/app", "latest", None, "docker.io/user/app:latest"),
        ("docker.io/busybox", "docker.io", "library/busybox", "latest", None,
         "docker.io/library/busybox:latest"),
        ("index.docker.io/user/app:v1", "docker.io", "user/app", "v1", None,
         "docker.io/user/app:v1"),
        ("localhost/app", "localhost", "app", "latest", None, "localhost/app:latest"),
        ("localhost:5000/x/y:t", "localhost:5000", "x/y", "t", None, "localhost:5000/x/y:t"),
        ("127.0.0.1:5000/cache", "127.0.0.1:5000", "cache", "latest", None,
         "127.0.0.1:5000/cache:latest"),
        ("ghcr.io/org/team/app:sha-1", "ghcr.io", "org/team/app", "sha-1", None,
         "ghcr.io/org/team/app:sha-1"),
        (f"host.example/x@{D}", "host.example", "x", None, D, f"host.example/x@{D}"),
        (f"busybox:1.36@{D}", "docker.io", "library/busybox", "1.36", D,
         f"docker.io/library/busybox:1.36@{D}"),
        ("[::1]:5000/a/b:c", "[::1]:5000", "a/b", "c", None, "[::1]:5000/a/b:c"),
        ("Registry.Example/a", "Registry.Example", "a", "latest", None,
         "Registry.Example/a:latest"),
        ("a/b__c/d-e.f", "docker.io", "a/b__c/d-e.f", "latest", None,
         "docker.io/a/b__c/d-e.f:latest"),
    ],
)  # fmt: skip
def test_parse_normalises_like_docker(
    text: str,
    registry: str,
    repository: str,
    tag: str | None,
    digest: str | None,
    canonical: str,
) -> None:
    ref = Reference.parse(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (
        registry,
        repository,
        tag,
        digest,
    )
    assert str(ref) == canonical
    assert Reference.parse(str(ref)) == ref  # the canonical form round-trips


@pytest.mark.parametrize(
    "text",
    [
        "",
        " busybox",
        "Busybox",
        "docker.io/Library/busybox",
        "busybox:",
        "busybox:-bad",
        "busybox@sha256:short",
        "busybox@md5:" + "a" * 32,
        "a//b",
        "a/b/",
        "host:port:5000/x",
        "bad_host-/x/y" + "z" * 300,
        "x:" + "t" * 200,
    ],
)
def test_invalid_references_name_the_reference(text: str) -> None:
    with pytest.raises(UsageError) as info:
        Reference.parse(text)
    assert repr(text) in str(info.value)


def test_uppercase_repository_explains_why() -> None:
    with pytest.raises(UsageError) as info:
        Reference.parse("ghcr.io/Org/App")
    assert "lowercase" in str(info.value)


def test_helpers() -> None:
    ref = Reference.parse("busybox:1.36")
    assert ref.api_host == "registry-1.docker.io"
    assert ref.name == "docker.io/library/busybox"
    assert str(ref.repo_ref) == "docker.io/library/busybox"
    assert ref.repo_ref.tag is None and ref.repo_ref.digest is None
    assert ref.reference == "1.36"
    pinned = ref.with_digest(D)
    assert pinned.reference == D and pinned.tag == "1.36"
    assert str(pinned.with_tag("2")) == "docker.io/library/busybox:2"
    local = Reference.parse("127.0.0.1:5000/x")
    assert local.api_host == "127.0.0.1:5000"
    with pytest.raises(UsageError):
        ref.with_tag("bad tag")
    with pytest.raises(UsageError):
        ref.with_digest("sha256:nothex")


@pytest.mark.parametrize(
    ("key", "host"),
    [
        ("https://index.docker.io/v1/", "docker.io"),
        ("index.docker.io", "docker.io"),
        ("registry-1.docker.io", "docker.io"),
        ("docker.io", "docker.io"),
        ("http://127.0.0.1:5000/v2/", "127.0.0.1:5000"),
        ("GHCR.io", "ghcr.io"),
    ],
)
def test_normalise_registry(key: str, host: str) -> None:
    assert normalise_registry(key) == host
