"""RUN --mount parsing: BuildKit's keys and defaults, read by the one attribute grammar."""

from __future__ import annotations

import pytest

from kiln.errors import DockerfileError
from kiln.frontend.base import BindMount, CacheMount, SecretMount, TmpfsMount
from kiln.frontend.base import Mount as MountType
from kiln.frontend.mounts import parse_mount


def mount(text: str, workdir: str = "/work") -> MountType:
    stages = {"build": 0}

    def resolve(name: str) -> int:
        return stages[name]

    return parse_mount(text, workdir=workdir, resolve_from=resolve, path="Dockerfile", line=3)


def test_defaults_and_aliases():
    assert mount("type=bind,target=/src") == BindMount("/src", "/", None, None, False)
    assert mount("target=rel,src=sub,from=build,rw") == BindMount("/work/rel", "sub", 0, None, True)
    assert mount("type=bind,dst=/s,readwrite=true").readwrite is True  # type: ignore[union-attr]
    # as BuildKit: read-only by default, and the last of readonly / rw given wins
    for flags, writable in [("ro,rw", True), ("rw,ro", False), ("readonly=false", True),
                            ("rw=f", False), ("readonly=T,rw=1", True)]:  # fmt: skip
        assert mount(f"type=bind,target=/s,{flags}").readwrite is writable, flags  # type: ignore[union-attr]
    assert mount("type=cache,target=/root/.cache") == CacheMount("/root/.cache", "/root/.cache")
    cache = mount("type=cache,id=go,target=/c,sharing=locked,mode=0700,uid=1000,gid=1000,ro")
    assert cache == CacheMount("/c", "go", "locked", None, "", 0o700, 1000, 1000, True)
    assert mount("type=tmpfs,target=/t,size=64MiB") == TmpfsMount("/t", 64 * 1024**2)
    assert mount("type=secret,id=tok") == SecretMount("/run/secrets/tok", "tok")
    assert mount("type=secret,id=tok,env=TOKEN,required") == SecretMount(
        "", "tok", required=True, env="TOKEN"
    )


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("type=cache,target=/c,target=/d", "target is given twice"),
        ("type=cache,dst=/c,target=/d", "target is given twice"),
        ("type=bind,target=/s,rw=maybe", "rw must be true or false, not 'maybe'"),
        ("type=bind,target=/s,ro=", "readonly must be true or false, not ''"),
        ("type=cache,target=/c,sharing=open", "sharing must be shared, private or locked"),
        ("type=cache,target=/c,uid=root", "uid must be a whole number"),
        ("type=cache,target=/c,mode=rwx", "mode must be an octal number"),
        ("type=tmpfs,target=/t,size=big", "size must be a size"),
        ("type=cache,target", "'target' is not key=value"),
        ("type=ssh", "unsupported mount type 'ssh'"),
        ("type=tmpfs,target=/t,id=x", "unknown attribute 'id' for type=tmpfs"),
        ("type=cache", "a target is required"),
        ("type=secret", "a secret needs an id"),
    ],
)
def test_bad_mounts_name_the_attribute_and_line(text, needle):
    with pytest.raises(DockerfileError, match=needle) as info:
        mount(text)
    assert info.value.what.startswith(f"Dockerfile:3: --mount={text}: ")
    assert info.value.exit_code == 2
