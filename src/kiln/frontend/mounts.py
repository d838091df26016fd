"""``RUN --mount=...`` parsing (BuildKit's syntax: CSV ``key=value`` fields)."""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from typing import Literal

from kiln.attrs import Attrs
from kiln.errors import DockerfileError, KilnError
from kiln.frontend.base import BindMount, CacheMount, Mount, SecretMount, TmpfsMount
from kiln.source.image import ImageBase

# resolves a ``from=`` value to a stage index or an image
FromResolver = Callable[[str], "int | ImageBase"]

_KEYS = {
    "bind": {"target", "source", "from", "readonly", "rw"},
    "cache": {
        "target", "id", "sharing", "from", "source", "mode", "uid", "gid", "readonly",
    },
    "tmpfs": {"target", "size"},
    "secret": {"target", "id", "required", "mode", "uid", "gid", "env"},
}  # fmt: skip
_ALIASES = {"dst": "target", "destination": "target", "src": "source", "ro": "readonly",
            "readwrite": "rw"}  # fmt: skip
# keys BuildKit accepts without a value (meaning true)
_BARE = frozenset({"readonly", "rw", "required"})
_SHARING: tuple[Literal["shared", "private", "locked"], ...] = ("shared", "private", "locked")


def parse_mount(
    text: str, *, workdir: str, resolve_from: FromResolver, path: str, line: int
) -> Mount:
    def fail(what: str, hint: str | None = None) -> KilnError:
        return DockerfileError(f"--mount={text}: {what}", path=path, line=line, hint=hint)

    attrs = Attrs.parse(text, fail, bare=_BARE, aliases=_ALIASES)
    mtype = attrs.pop("type", "bind")
    if mtype not in _KEYS:
        raise fail(f"unsupported mount type {mtype!r}", "use bind, cache, tmpfs or secret")
    attrs.check(_KEYS[mtype], mtype)
    target = attrs.get("target")
    if mtype == "secret" and not attrs.get("id") and not target:
        raise fail("a secret needs an id")
    if mtype == "secret" and not target and "env" not in attrs:
        target = "/run/secrets/" + attrs.get("id")
    if not target and mtype != "secret":
        raise fail("a target is required")
    if target and not target.startswith("/"):
        target = posixpath.normpath(posixpath.join(workdir or "/", target))
    elif target:
        target = posixpath.normpath(target)

    from_stage: int | None = None
    from_image: ImageBase | None = None
    if "from" in attrs:
        resolved = resolve_from(attrs.get("from"))
        if isinstance(resolved, int):
            from_stage = resolved
        else:
            from_image = resolved

    if mtype == "bind":
        # read-only unless made writable; as BuildKit, the last of readonly/rw given wins
        readwrite = False
        for key in [k for k in attrs.values if k in ("readonly", "rw")]:
            readwrite = attrs.boolean(key, True) == (key == "rw")
        source = attrs.get("source", "/")
        if from_image is not None:
            return BindMount(target, source, None, from_image, readwrite)
        return BindMount(target, source, from_stage, None, readwrite)
    if mtype == "cache":
        if from_image is not None:
            raise fail("a cache mount can only be seeded from a stage")
        return CacheMount(
            target=target,
            id=attrs.get("id") or target,
            sharing=attrs.choice("sharing", _SHARING, "shared"),
            from_stage=from_stage,
            source=attrs.get("source"),
            mode=attrs.integer("mode", 0o755, base=8),
            uid=attrs.integer("uid", 0),
            gid=attrs.integer("gid", 0),
            readonly=attrs.boolean("readonly", False),
        )
    if mtype == "tmpfs":
        return TmpfsMount(target, attrs.size("size") or 0)
    return SecretMount(
        target=target,
        id=attrs.get("id") or posixpath.basename(target),
        required=attrs.boolean("required", False),
        mode=attrs.integer("mode", 0o400, base=8),
        uid=attrs.integer("uid", 0),
        gid=attrs.integer("gid", 0),
        env=attrs.optional("env"),
    )
