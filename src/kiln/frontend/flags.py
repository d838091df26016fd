"""Instruction flags (``--from=x``, ``--link``, repeatable ``--mount=...``), checked per
instruction."""

from __future__ import annotations

from dataclasses import dataclass, field

from kiln.errors import DockerfileError
from kiln.frontend.dockerfile import Instruction

ALLOWED: dict[str, dict[str, str]] = {
    # flag -> kind: "value" (once), "multi" (repeatable), "bool"
    "RUN": {"mount": "multi", "network": "value", "security": "value"},
    "COPY": {
        "from": "value", "chown": "value", "chmod": "value", "link": "bool",
        "parents": "bool", "exclude": "multi",
    },
    "ADD": {
        "chown": "value", "chmod": "value", "link": "bool", "checksum": "value",
        "keep-git-dir": "bool", "exclude": "multi",
    },
    "HEALTHCHECK": {
        "interval": "value", "timeout": "value", "start-period": "value",
        "start-interval": "value", "retries": "value",
    },
}  # fmt: skip


@dataclass
class Flags:
    values: dict[str, str] = field(default_factory=dict)
    multi: dict[str, list[str]] = field(default_factory=dict)
    bools: set[str] = field(default_factory=set)

    def get(self, name: str) -> str | None:
        return self.values.get(name)

    def all(self, name: str) -> list[str]:
        return self.multi.get(name, [])

    def has(self, name: str) -> bool:
        return name in self.bools


def parse_flags(ins: Instruction, path: str) -> Flags:
    allowed = ALLOWED.get(ins.cmd, {})
    out = Flags()
    for raw in ins.flags:
        name, eq, value = raw.removeprefix("--").partition("=")
        kind = allowed.get(name)
        if kind is None:
            known = ", ".join(f"--{k}" for k in sorted(allowed)) or "none"
            raise DockerfileError(
                f"unknown flag for {ins.cmd}: --{name}",
                path=path,
                line=ins.line,
                hint=f"{ins.cmd} accepts: {known}",
            )
        if kind == "bool":
            if eq and value.lower() not in ("true", "false"):
                raise DockerfileError(
                    f"--{name} takes no value or true/false", path=path, line=ins.line
                )
            if not eq or value.lower() == "true":
                out.bools.add(name)
        elif kind == "multi":
            out.multi.setdefault(name, []).append(value)
        else:
            if name in out.values:
                raise DockerfileError(f"--{name} given twice", path=path, line=ins.line)
            if not eq:
                raise DockerfileError(f"--{name} needs a value", path=path, line=ins.line)
            out.values[name] = value
    return out
