"""Reading a Dockerfile: directives, the official BuildKit parser, stage splitting.

Parsing is done by the ``dockerfile`` package (a binding of BuildKit's own parser), so
line continuations, heredocs and flags behave exactly as in BuildKit. This module turns its
output into global ARGs plus raw stages, and rejects what BuildKit rejects (unknown
instructions, instructions before the first FROM, malformed FROM lines), naming file and line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import dockerfile as _parser

from kiln.errors import DockerfileError

KNOWN_INSTRUCTIONS = frozenset(
    {
        "ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK",
        "LABEL", "MAINTAINER", "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME",
        "WORKDIR",
    }
)  # fmt: skip

_DIRECTIVE_RE = re.compile(r"^#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$")
_STAGE_NAME_RE = re.compile(r"^[a-z][a-z0-9\-_.]*$")


@dataclass(frozen=True, slots=True)
class Instruction:
    cmd: str  # upper case
    flags: tuple[str, ...]
    value: tuple[str, ...]
    original: str
    line: int
    json: bool
    heredocs: tuple[tuple[str, str], ...] = ()  # (name, content)
    sub_cmd: str | None = None

    @property
    def display(self) -> str:
        """The instruction as a user recognises it: first line, whitespace collapsed."""
        first = self.original.split("\n", 1)[0]
        return " ".join(first.split())


@dataclass
class RawStage:
    index: int
    base: str
    name: str | None
    platform: str | None
    line: int
    instructions: list[Instruction] = field(default_factory=list)
    from_text: str = ""


@dataclass
class ParsedDockerfile:
    path: str
    escape: str
    meta_args: list[Instruction]
    stages: list[RawStage]
    directives: dict[str, str]


def parse_directives(text: str) -> dict[str, str]:
    """Parser directives (``# syntax=``, ``# escape=``) at the very top of the file."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        m = _DIRECTIVE_RE.match(line.strip())
        if not m:
            break
        key = m.group(1).lower()
        if key in out:
            break
        out[key] = m.group(2)
    return out


def parse_text(text: str, path: str) -> ParsedDockerfile:
    if "\x00" in text:  # the parser reads C strings: it would silently stop there
        nul_line = text.count("\n", 0, text.index("\x00")) + 1
        raise DockerfileError("the Dockerfile contains a NUL byte", path=path, line=nul_line,
                              hint="remove it: a Dockerfile is text")  # fmt: skip
    directives = parse_directives(text)
    escape = directives.get("escape", "\\")
    if escape not in ("\\", "`"):
        raise DockerfileError(
            f"invalid escape token {escape!r}", path=path, line=1, hint="use \\ or `"
        )
    try:
        commands = _parser.parse_string(text)
    except _parser.GoParseError as exc:
        line = _line_of(str(exc))
        raise DockerfileError(f"cannot parse Dockerfile: {exc}", path=path, line=line) from exc
    return _split(commands, path, escape, directives)


def parse_file(path: Path) -> ParsedDockerfile:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise DockerfileError(
            "Dockerfile not found", path=str(path), hint="pass the right file with -f FILE"
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise DockerfileError(f"cannot read Dockerfile: {exc}", path=str(path)) from exc
    return parse_text(text, str(path))


def parse_instruction_text(text: str, path: str, line: int) -> Instruction:
    """Parse one instruction (an ONBUILD trigger) with the same parser."""
    try:
        commands = _parser.parse_string(text + "\n")
    except _parser.GoParseError as exc:
        raise DockerfileError(f"invalid ONBUILD trigger {text!r}: {exc}", path=path) from exc
    if len(commands) != 1:
        raise DockerfileError(f"invalid ONBUILD trigger {text!r}", path=path, line=line)
    ins = _instruction(commands[0], path)
    return Instruction(
        ins.cmd, ins.flags, ins.value, ins.original, line, ins.json, ins.heredocs, ins.sub_cmd
    )


def _line_of(message: str) -> int | None:
    m = re.search(r"line (\d+)", message)
    return int(m.group(1)) if m else None


def _instruction(cmd: _parser.Command, path: str) -> Instruction:
    name = cmd.cmd.upper()
    if name not in KNOWN_INSTRUCTIONS:
        raise DockerfileError(
            f"unknown instruction: {cmd.cmd}",
            path=path,
            line=cmd.start_line,
            hint="see https://docs.docker.com/reference/dockerfile/ for the instructions",
        )
    return Instruction(
        cmd=name,
        flags=tuple(cmd.flags),
        value=tuple(cmd.value),
        original=cmd.original,
        line=cmd.start_line,
        json=bool(cmd.json),
        heredocs=tuple((h.name, h.content) for h in cmd.heredocs),
        sub_cmd=cmd.sub_cmd.upper() if cmd.sub_cmd else None,
    )


def _split(
    commands: list[_parser.Command], path: str, escape: str, directives: dict[str, str]
) -> ParsedDockerfile:
    meta: list[Instruction] = []
    stages: list[RawStage] = []
    for cmd in commands:
        ins = _instruction(cmd, path)
        if ins.cmd == "FROM":
            stages.append(_stage(ins, len(stages), path))
        elif not stages:
            if ins.cmd != "ARG":
                raise DockerfileError(
                    f"{ins.cmd} before the first FROM",
                    path=path,
                    line=ins.line,
                    hint="only ARG may come before FROM",
                )
            meta.append(ins)
        else:
            stages[-1].instructions.append(ins)
    if not stages:
        raise DockerfileError(
            "the Dockerfile has no FROM instruction",
            path=path,
            hint="every Dockerfile starts a stage with FROM",
        )
    return ParsedDockerfile(path, escape, meta, stages, directives)


def _stage(ins: Instruction, index: int, path: str) -> RawStage:
    platform: str | None = None
    for flag in ins.flags:
        key, _, value = flag.lstrip("-").partition("=")
        if key == "platform":
            platform = value
        else:
            raise DockerfileError(f"unknown flag for FROM: --{key}", path=path, line=ins.line)
    values = list(ins.value)
    name: str | None = None
    if len(values) == 3 and values[1].lower() == "as":
        name = values[2].lower()
        if not _STAGE_NAME_RE.match(name):
            raise DockerfileError(
                f"invalid stage name {values[2]!r}",
                path=path,
                line=ins.line,
                hint="stage names start with a letter and use letters, digits, -, _ and .",
            )
    elif len(values) != 1:
        raise DockerfileError(
            "FROM takes an image and optionally AS <name>", path=path, line=ins.line
        )
    return RawStage(index, values[0], name, platform, ins.line, from_text=ins.display)
