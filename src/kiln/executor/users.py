"""USER / --chown resolution through the image's own /etc/passwd and /etc/group."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kiln.errors import KilnError
from kiln.executor.paths import resolve_in_root


@dataclass(frozen=True, slots=True)
class Identity:
    uid: int
    gid: int
    additional_gids: tuple[int, ...] = ()


def _read_db(root: Path, name: str) -> list[list[str]]:
    path = resolve_in_root(root, f"/etc/{name}")
    try:
        text = path.read_text(errors="replace")
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return []
    return [line.split(":") for line in text.splitlines() if line and not line.startswith("#")]


def resolve_user(root: Path, spec: str, *, what: str = "user") -> Identity:
    """Resolve ``user[:group]`` (names or numbers) as Docker does.

    A numeric uid needs no passwd entry; a name must exist. Without a group, the user's
    primary group from passwd is used (0 when the uid is unknown), plus supplementary groups.
    """
    spec = spec or "0"
    user, _, group = spec.partition(":")
    passwd = _read_db(root, "passwd")
    uid: int | None = None
    gid: int | None = None
    username = ""
    if user.isdigit():
        uid = int(user)
        for entry in passwd:
            if len(entry) > 3 and entry[2] == user:
                username, gid = entry[0], _int(entry[3])
                break
    else:
        for entry in passwd:
            if len(entry) > 3 and entry[0] == user:
                username, uid, gid = user, _int(entry[2]), _int(entry[3])
                break
        if uid is None:
            raise KilnError(
                f"unable to find {what} {user}: no matching entries in passwd file",
                hint=f"create the {what} in an earlier step or use a numeric id",
            )
    groups = _read_db(root, "group")
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            found = [e for e in groups if len(e) > 2 and e[0] == group]
            if not found:
                raise KilnError(
                    f"unable to find group {group}: no matching entries in group file",
                    hint="create the group in an earlier step or use a numeric id",
                )
            gid = _int(found[0][2])
        return Identity(uid or 0, gid or 0)
    extra: list[int] = []
    if username:
        for entry in groups:
            if len(entry) > 3 and username in entry[3].split(","):
                g = _int(entry[2])
                if g is not None and g != gid and g not in extra:
                    extra.append(g)
    return Identity(uid or 0, gid or 0, tuple(extra))


def _int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None
