"""One handler per Dockerfile instruction, applied to a stage being planned.

Handlers change the stage's image config (metadata instructions) or append a step
(RUN, COPY, ADD, WORKDIR). Values are expanded with Docker's rules: ARG and ENV values
for most instructions, nothing for RUN/CMD/ENTRYPOINT (the shell expands at run time).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable

from kiln import units
from kiln.errors import ContextError
from kiln.frontend.base import (
    BindMount,
    ContextSource,
    CopyOp,
    CopySource,
    ExecOp,
    ImageSource,
    InlineSource,
    MkdirOp,
    Mount,
    Op,
    StageSource,
    UrlSource,
)
from kiln.frontend.dockerfile import Instruction
from kiln.frontend.flags import parse_flags
from kiln.frontend.mounts import parse_mount
from kiln.frontend.stage import Planning, StageState
from kiln.image import HistoryEntry, env_with

Handler = Callable[[Planning, StageState, Instruction], None]

MAX_ID = 2**32 - 2  # the largest uid/gid (uid_t, minus the -1 that means "unchanged")
_HEREDOC_RE = re.compile(r"^<<(-?)(['\"]?)([A-Za-z0-9_]+)\2$")


def dispatch(p: Planning, st: StageState, ins: Instruction) -> None:
    if ins.cmd not in ("RUN", "COPY", "ADD", "HEALTHCHECK") and ins.flags:
        parse_flags(ins, p.path)  # raises: these instructions take no flags
    HANDLERS[ins.cmd](p, st, ins)


def _history(st: StageState, created_by: str, *, empty: bool = True) -> int:
    st.config.history.append(HistoryEntry(created_by=created_by, empty_layer=empty))
    return len(st.config.history) - 1


def _step(st: StageState, ins: Instruction, op: Op, created_by: str) -> None:
    st.pending.append((ins, op, _history(st, created_by, empty=False)))


# ---------------------------------------------------------------------------- metadata


def split_arg(ins: Instruction, p: Planning) -> list[tuple[str, str | None]]:
    """``ARG A B=x`` → [("A", None), ("B", "x")] (defaults not yet expanded)."""
    out: list[tuple[str, str | None]] = []
    for item in ins.value:
        name, eq, default = item.partition("=")
        if not name:
            raise p.error("ARG needs a name", ins.line)
        out.append((name, default if eq else None))
    return out


def _arg(p: Planning, st: StageState, ins: Instruction) -> None:
    committed = []
    for name, default in split_arg(ins, p):
        p.arg_declared(name, default, st, ins.line)
        value = st.args[name]
        committed.append(name if value is None else f"{name}={value}")
    # as BuildKit: one history entry per ARG instruction, with the values in effect
    _history(st, "ARG " + " ".join(committed))


def _env(p: Planning, st: StageState, ins: Instruction) -> None:
    pairs = p.key_values(ins, st)
    for key, value in pairs:
        st.config.set_env(key, value)
    _history(st, "ENV " + " ".join(f"{k}={v}" for k, v in pairs))


def _label(p: Planning, st: StageState, ins: Instruction) -> None:
    pairs = p.key_values(ins, st)
    for key, value in pairs:
        st.config.labels[key] = value
    _history(st, "LABEL " + " ".join(f"{k}={v}" for k, v in pairs))


def _single(p: Planning, st: StageState, ins: Instruction) -> str:
    if len(ins.value) != 1:
        raise p.error(f"{ins.cmd} takes exactly one argument", ins.line)
    return p.expand(ins.value[0], st.expansion_env(), ins.line)


def _user(p: Planning, st: StageState, ins: Instruction) -> None:
    st.config.user = _single(p, st, ins)
    _history(st, f"USER {st.config.user}")


def _stopsignal(p: Planning, st: StageState, ins: Instruction) -> None:
    st.config.stop_signal = _single(p, st, ins)
    _history(st, f"STOPSIGNAL {st.config.stop_signal}")


def _maintainer(p: Planning, st: StageState, ins: Instruction) -> None:
    st.config.extra["author"] = " ".join(ins.value)
    _history(st, f"MAINTAINER {st.config.extra['author']}")


def _expose(p: Planning, st: StageState, ins: Instruction) -> None:
    env = st.expansion_env()
    ports = []
    for raw in ins.value:
        for word in p.expand_words(raw, env, ins.line):
            ports += _exposed_ports(p, word, ins.line)
    for port in ports:
        st.config.exposed_ports[port] = {}
    _history(st, f"EXPOSE {_go_list(ports)}")


def _exposed_ports(p: Planning, word: str, line: int) -> list[str]:
    """``PORT[-END][/PROTO]`` → one ``port/proto`` per port, as BuildKit expands ranges."""
    spec, _, proto = word.partition("/")
    proto = (proto or "tcp").lower()
    m = re.fullmatch(r"(\d+)(?:-(\d+))?", spec)
    if m is None or proto not in ("tcp", "udp", "sctp"):
        raise p.error(f"invalid port {word!r} for EXPOSE", line)
    start = int(m.group(1))
    end = int(m.group(2)) if m.group(2) is not None else start
    if end > 65535 or end < start:
        raise p.error(f"invalid port range {word!r} for EXPOSE", line)
    return [f"{port}/{proto}" for port in range(start, end + 1)]


def _go_list(items: list[str]) -> str:
    """A string list as Go's ``%v`` prints it (BuildKit's history text)."""
    return "[" + " ".join(items) + "]"


def _go_quoted_list(items: list[str]) -> str:
    """A string list as Go's ``%q`` prints it: ``["a" "b"]``."""
    return "[" + " ".join(_go_quote(item) for item in items) + "]"


_GO_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r",
               "\t": "\\t", "\v": "\\v", "\\": "\\\\", '"': '\\"'}  # fmt: skip


def _go_quote(text: str) -> str:
    out = []
    for ch in text:
        if ch in _GO_ESCAPES:
            out.append(_GO_ESCAPES[ch])
        elif ch.isprintable():
            out.append(ch)
        elif ord(ch) < 0x80:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) <= 0xFFFF:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    return '"' + "".join(out) + '"'


def _volume(p: Planning, st: StageState, ins: Instruction) -> None:
    env = st.expansion_env()
    paths = [p.expand(v, env, ins.line) for v in ins.value]
    if not paths or any(not v.strip() for v in paths):
        raise p.error("VOLUME needs a non-empty path", ins.line)
    for v in paths:
        st.config.volumes[v] = {}
    _history(st, f"VOLUME {_go_list(paths)}")


def _command_list(p: Planning, st: StageState, ins: Instruction) -> list[str]:
    if ins.json:
        return list(ins.value)
    return [*st.shell, " ".join(ins.value)]


def _cmd(p: Planning, st: StageState, ins: Instruction) -> None:
    st.config.cmd = _command_list(p, st, ins)
    st.cmd_set = True
    _history(st, f"CMD {_go_quoted_list(st.config.cmd)}")


def _entrypoint(p: Planning, st: StageState, ins: Instruction) -> None:
    st.config.entrypoint = _command_list(p, st, ins)
    if not st.cmd_set:
        st.config.cmd = None
    _history(st, f"ENTRYPOINT {_go_quoted_list(st.config.entrypoint)}")


def _shell(p: Planning, st: StageState, ins: Instruction) -> None:
    if not ins.json or not ins.value:
        raise p.error(
            "SHELL requires the JSON form", ins.line, hint='write SHELL ["/bin/bash", "-c"]'
        )
    st.config.shell = list(ins.value)
    _history(st, f"SHELL {_go_list(st.config.shell)}")


def _duration(p: Planning, text: str, line: int) -> int:
    """A Go duration in nanoseconds, as the image config stores healthcheck times."""
    try:
        return round(units.parse_duration(text) * 1e9)
    except ValueError as exc:
        raise p.error(
            f"invalid duration {text!r}", line, hint="use values like 30s or 1m30s"
        ) from exc


def _healthcheck(p: Planning, st: StageState, ins: Instruction) -> None:
    flags = parse_flags(ins, p.path)
    values = list(ins.value)
    kind = values[0].upper() if values else ""
    if kind == "NONE":
        if len(values) != 1 or ins.flags:
            raise p.error("HEALTHCHECK NONE takes no other arguments", ins.line)
        st.config.healthcheck = {"Test": ["NONE"]}
    elif kind == "CMD" and len(values) > 1:
        test = ["CMD", *values[1:]] if ins.json else ["CMD-SHELL", " ".join(values[1:])]
        hc: dict[str, object] = {"Test": test}
        for flag, key in (
            ("interval", "Interval"),
            ("timeout", "Timeout"),
            ("start-period", "StartPeriod"),
            ("start-interval", "StartInterval"),
        ):
            value = flags.get(flag)
            if value:
                hc[key] = _duration(p, value, ins.line)
        retries = flags.get("retries")
        if retries:
            if not retries.isdigit():
                raise p.error("--retries must be a whole number", ins.line)
            hc["Retries"] = int(retries)
        st.config.healthcheck = hc
    else:
        raise p.error("HEALTHCHECK takes NONE or CMD <command>", ins.line)
    _history(st, "HEALTHCHECK " + json.dumps(st.config.healthcheck))


def _onbuild(p: Planning, st: StageState, ins: Instruction) -> None:
    if ins.sub_cmd in (None, "ONBUILD", "FROM", "MAINTAINER"):
        raise p.error(f"{ins.sub_cmd or 'an empty'} trigger is not allowed in ONBUILD", ins.line)
    trigger = ins.original.split(None, 1)[1] if " " in ins.original.strip() else ""
    st.config.onbuild.append(trigger)  # no history entry: BuildKit records none


# ---------------------------------------------------------------------------- filesystem


def _workdir(p: Planning, st: StageState, ins: Instruction) -> None:
    written = p.workdir_join(st, _single(p, st, ins))  # a trailing / is kept, as BuildKit
    path = written.rstrip("/") or "/"
    st.config.workdir = written
    _step(st, ins, MkdirOp(path=path, user=st.config.user), f"WORKDIR {written}")


def _run(p: Planning, st: StageState, ins: Instruction) -> None:
    flags = parse_flags(ins, p.path)
    network = flags.get("network") or p.options.network
    if network not in ("default", "none", "host"):
        raise p.error(f"invalid --network {network!r}", ins.line, hint="use default, none or host")
    if (flags.get("security") or "sandbox") != "sandbox":
        raise p.error("RUN --security=insecure is not supported", ins.line)
    env_for_flags = st.expansion_env()
    workdir = st.config.workdir or "/"
    mounts = tuple(
        parse_mount(
            p.expand(m, env_for_flags, ins.line),
            workdir=workdir,
            resolve_from=lambda name: p.stage_source(name, st.plan.index, ins.line),
            path=p.path,
            line=ins.line,
        )
        for m in flags.all("mount")
    )
    mounts = tuple(_with_context_digest(p, m, ins.line) for m in mounts)
    files: tuple[tuple[str, str, int], ...] = ()
    if ins.json:
        args = list(ins.value)
    else:
        command = " ".join(ins.value)
        marker = _HEREDOC_RE.match(command.strip())
        if ins.heredocs and marker and len(ins.heredocs) == 1:
            name, content = ins.heredocs[0]
            if content.startswith("#!"):
                script = f"/dev/pipes/{name}"
                files = ((script, content, 0o755),)
                args = [script]
            else:
                args = [*st.shell, content]
        elif ins.heredocs:
            body = "".join(f"{content}{name}\n" for name, content in ins.heredocs)
            args = [*st.shell, f"{command}\n{body}"]
        else:
            args = [*st.shell, command]
    arg_env = [f"{k}={v}" for k, v in st.arg_values().items()]
    env = env_with(st.config.env, arg_env, replace=False)  # ENV wins over ARG, as BuildKit
    op = ExecOp(
        args=tuple(args),
        env=tuple(env),
        user=st.config.user,
        workdir=workdir,
        network=network,
        mounts=mounts,
        files=files,
        proxy_env=tuple(p.proxy_env(st)),
        platform=str(st.plan.platform or p.options.platform),
        arg_names=tuple(sorted(set(st.arg_values()) - set(st.config.env_map()))),
    )
    prefix = f"|{len(arg_env)} {' '.join(arg_env)} " if arg_env else ""
    _step(st, ins, op, f"RUN {prefix}{' '.join(args)} # buildkit")


def _with_context_digest(p: Planning, mount: Mount, line: int) -> Mount:
    """A bind mount of the build context is keyed by the content it binds."""
    if isinstance(mount, BindMount) and mount.from_stage is None and mount.from_image is None:
        source = mount.source.lstrip("/") or "."
        try:
            digest = p.context.digest([source], chown=None, chmod=None)
        except ContextError as exc:  # where it is written: the mount, the line
            raise p.error(f"--mount {exc.what}", line, hint=exc.hint) from exc
        return dataclasses.replace(mount, context_digest=digest)
    return mount


def _copy(p: Planning, st: StageState, ins: Instruction) -> None:
    _copy_or_add(p, st, ins, add=False)


def _add(p: Planning, st: StageState, ins: Instruction) -> None:
    _copy_or_add(p, st, ins, add=True)


def _copy_or_add(p: Planning, st: StageState, ins: Instruction, *, add: bool) -> None:
    flags = parse_flags(ins, p.path)
    if flags.all("exclude") or flags.has("parents") or flags.has("keep-git-dir"):
        raise p.error(f"{ins.cmd} --exclude/--parents/--keep-git-dir are not supported", ins.line)
    values = list(ins.value)
    if len(values) < 2:
        raise p.error(
            f"{ins.cmd} requires at least two arguments: sources and a destination", ins.line
        )
    env = st.expansion_env()
    written_dest = p.expand(values[-1], env, ins.line)
    dest = p.workdir_join(st, written_dest)
    raw_srcs = values[:-1]
    chown = p.expand(flags.get("chown") or "", env, ins.line) or None
    if chown is not None and any(part.isdigit() and int(part) > MAX_ID
                                 for part in chown.split(":", 1)):  # fmt: skip
        raise p.error(f"invalid --chown={chown}: an id is at most {MAX_ID}", ins.line)
    chmod = p.expand(flags.get("chmod") or "", env, ins.line) or None
    if chmod is not None and not re.fullmatch(r"[0-7]{3,4}", chmod):
        raise p.error(f"invalid --chmod={chmod}", ins.line, hint="use an octal mode like 0755")
    heredocs = dict(ins.heredocs)
    markers = [_HEREDOC_RE.match(s) for s in raw_srcs]
    source: CopySource
    if any(markers):
        if not all(markers):
            raise p.error("heredoc and file sources cannot be mixed", ins.line)
        files = []
        for m in markers:
            assert m is not None
            name, quoted = m.group(3), bool(m.group(2))
            content = heredocs.get(name, "")
            files.append((name, content if quoted else p.expand(content, env, ins.line)))
        source, srcs = InlineSource(tuple(files)), [name for name, _ in files]
    else:
        srcs = [p.expand(s, env, ins.line) for s in raw_srcs]
        from_name = p.expand(flags.get("from") or "", env, ins.line)
        checksum = flags.get("checksum")
        urls = [s for s in srcs if re.match(r"^https?://", s)]
        if from_name:
            if add:
                raise p.error("ADD does not take --from", ins.line)
            resolved = p.stage_source(from_name, st.plan.index, ins.line)
            source = StageSource(resolved) if isinstance(resolved, int) else ImageSource(resolved)
        elif urls:
            if not add:
                raise p.error("COPY cannot take a URL: use ADD", ins.line)
            if len(srcs) != 1:
                raise p.error("ADD takes one URL per instruction", ins.line)
            source = UrlSource(urls[0], checksum, p.url_digest(urls[0], checksum, ins.line))
        else:
            if checksum:
                raise p.error("--checksum is only valid for URL sources", ins.line)
            source = ContextSource(p.context.digest(srcs, chown=chown, chmod=chmod))
    if len(srcs) > 1 and not dest.endswith("/"):
        raise p.error(
            f"when using {ins.cmd} with more than one source, the destination must be a "
            "directory and end with a /",
            ins.line,
        )
    op = CopyOp(
        source=source,
        srcs=tuple(srcs),
        dest=dest,
        chown=chown,
        chmod=chmod,
        link=flags.has("link"),
        add=add,
    )
    # BuildKit's history text: flags since v0.13 (never --from), sources and the
    # destination as written (expanded, not resolved against WORKDIR)
    words = [ins.cmd]
    words += [f"--chown={chown}"] if chown else []
    words += [f"--chmod={chmod}"] if chmod else []
    words += [f"<<{s}" for s in srcs] if isinstance(source, InlineSource) else srcs
    _step(st, ins, op, f"{' '.join(words)} {written_dest} # buildkit")


HANDLERS: dict[str, Handler] = {
    "ADD": _add,
    "ARG": _arg,
    "CMD": _cmd,
    "COPY": _copy,
    "ENTRYPOINT": _entrypoint,
    "ENV": _env,
    "EXPOSE": _expose,
    "HEALTHCHECK": _healthcheck,
    "LABEL": _label,
    "MAINTAINER": _maintainer,
    "ONBUILD": _onbuild,
    "RUN": _run,
    "SHELL": _shell,
    "STOPSIGNAL": _stopsignal,
    "USER": _user,
    "VOLUME": _volume,
    "WORKDIR": _workdir,
}
