"""``RUN --mount=...`` parsing (BuildKit's syntax: CSV ``key=value`` fields)."""

from __future__ import annotations

import csv
import posixpath
from collections.abc import Callable

from kiln import units
from kiln.errors import DockerfileError
from kiln.frontend.base import BindMount, CacheMount, Mount, SecretMount, TmpfsMount
from kiln.source.image import ImageBase

# resolves a ``from=`` value to a stage index or an image
FromResolver = Callable[[str], "int | ImageBase"]

_KEYS = {
    "bind": {"target", "source", "from", "readonly", "rw", "readwrite"},
    "cache": {
        "target", "id", "sharing", "from", "source", "mode", "uid", "gid", "readonly",
    },
    "tmpfs": {"target", "size"},
    "secret": {"target", "id", "required", "mode", "uid", "gid", "env"},
}  # fmt: skip
_ALIASES = {"dst": "target", "destination": "target", "src": "source", "ro": "readonly"}


def parse_mount(
    text: str, *, workdir: str, resolve_from: FromResolver, path: str, line: int
) -> Mount:
    def fail(what: str, hint: str | None = None) -> DockerfileError:
        return DockerfileError(f"--mount={text}: {what}", path=path, line=line, hint=hint)

    fields: dict[str, str] = {}
    for item in next(csv.reader([text])) if text else []:
        key, eq, value = item.partition("=")
        key = _ALIASES.get(key.strip().lower(), key.strip().lower())
        fields[key] = value if eq else "true"
    mtype = fields.pop("type", "bind")
    if mtype not in _KEYS:
        raise fail(f"unsupported mount type {mtype!r}", "use bind, cache, tmpfs or secret")
    unknown = set(fields) - _KEYS[mtype]
    if unknown:
        raise fail(f"unknown option {sorted(unknown)[0]!r} for type={mtype}")
    target = fields.get("target", "")
    if mtype == "secret" and not target and "env" not in fields:
        target = "/run/secrets/" + fields.get("id", "")
    if not target and mtype != "secret":
        raise fail("a target is required")
    if target and not target.startswith("/"):
        target = posixpath.normpath(posixpath.join(workdir or "/", target))
    elif target:
        target = posixpath.normpath(target)

    def boolean(key: str, default: bool = False) -> bool:
        value = fields.get(key)
        if value is None:
            return default
        if value.lower() in ("true", "1", ""):
            return True
        if value.lower() in ("false", "0"):
            return False
        raise fail(f"{key} must be true or false")

    def number(key: str, default: int, base: int = 10) -> int:
        value = fields.get(key)
        if value is None:
            return default
        try:
            return int(value, base)
        except ValueError as exc:
            raise fail(f"{key} must be a number") from exc

    from_stage: int | None = None
    from_image: ImageBase | None = None
    if "from" in fields:
        resolved = resolve_from(fields["from"])
        if isinstance(resolved, int):
            from_stage = resolved
        else:
            from_image = resolved

    if mtype == "bind":
        if from_image is not None:
            return BindMount(target, fields.get("source", "/"), None, from_image, _rw(fields))
        return BindMount(target, fields.get("source", "/"), from_stage, None, _rw(fields))
    if mtype == "cache":
        sharing = fields.get("sharing", "shared")
        if sharing not in ("shared", "private", "locked"):
            raise fail("sharing must be shared, private or locked")
        if from_image is not None:
            raise fail("a cache mount can only be seeded from a stage")
        return CacheMount(
            target=target,
            id=fields.get("id") or target,
            sharing=sharing,  # type: ignore[arg-type]
            from_stage=from_stage,
            source=fields.get("source", ""),
            mode=number("mode", 0o755, 8),
            uid=number("uid", 0),
            gid=number("gid", 0),
            readonly=boolean("readonly"),
        )
    if mtype == "tmpfs":
        return TmpfsMount(target, _size(fields.get("size", "0"), fail))
    if not fields.get("id") and not target:
        raise fail("a secret needs an id")
    return SecretMount(
        target=target,
        id=fields.get("id") or posixpath.basename(target),
        required=boolean("required"),
        mode=number("mode", 0o400, 8),
        uid=number("uid", 0),
        gid=number("gid", 0),
        env=fields.get("env"),
    )


def _rw(fields: dict[str, str]) -> bool:
    return any(fields.get(k, "false").lower() in ("true", "1", "") for k in ("rw", "readwrite"))


def _size(text: str, fail: Callable[[str], DockerfileError]) -> int:
    try:
        return units.parse_size(text)
    except ValueError as exc:
        raise fail("size must be a number with an optional unit (k, m, g)") from exc
