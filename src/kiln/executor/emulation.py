"""Foreign-platform RUN steps: QEMU user emulation through the kernel's binfmt_misc.

A handler registered with the ``F`` (fix binary) flag has its interpreter opened by the
kernel when it is registered, so it works inside any container without the interpreter
being there — what docker/setup-qemu-action does with tonistiigi/binfmt. :func:`register`
does the same from Debian's ``qemu-user-static`` (its ``/usr/share/binfmts`` entries give
the magic and mask), needing nothing else; it is idempotent. :func:`require` says exactly
how to get an emulator when a step needs one that is missing.
"""

from __future__ import annotations

import os
import platform as _platform
import subprocess
from dataclasses import dataclass
from pathlib import Path

from kiln.errors import KilnError

BINFMT = Path("/proc/sys/fs/binfmt_misc")
BINFMTS = Path("/usr/share/binfmts")  # Debian's handler descriptions

# OCI architecture (and variant) → QEMU's name for it
_QEMU = {"amd64": "x86_64", "arm64": "aarch64", "arm": "arm", "386": "i386",
         "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64",
         "mips64le": "mips64el", "loong64": "loongarch64"}  # fmt: skip
# what a host runs without emulation, besides its own architecture
_NATIVE = {"x86_64": {"amd64", "386"}, "aarch64": {"arm64", "arm"}}


def qemu_name(architecture: str) -> str:
    return _QEMU.get(architecture, architecture)


def is_native(architecture: str) -> bool:
    machine = _platform.machine()
    return architecture in _NATIVE.get(machine, set()) or qemu_name(architecture) == machine


@dataclass(frozen=True, slots=True)
class Handler:
    name: str  # qemu-aarch64
    state: str  # "enabled", "disabled", "missing"
    interpreter: str = ""
    fix_binary: bool = False


def handler(architecture: str) -> Handler:
    name = f"qemu-{qemu_name(architecture)}"
    try:
        lines = (BINFMT / name).read_text().splitlines()
    except OSError:
        return Handler(name, "missing")
    fields = dict(line.split(" ", 1) for line in lines[1:] if " " in line)
    return Handler(name, lines[0].strip() if lines else "disabled",
                   fields.get("interpreter", ""), "F" in fields.get("flags:", ""))  # fmt: skip


def require(architecture: str, platform: str) -> None:
    """Raise a clear error when a step of *platform* cannot run on this machine."""
    if is_native(architecture):
        return
    found = handler(architecture)
    if found.state == "enabled" and found.fix_binary:
        return
    why = {
        "missing": f"no binfmt_misc handler {found.name} is registered",
        "disabled": f"the binfmt_misc handler {found.name} is disabled",
    }.get(found.state, f"the binfmt_misc handler {found.name} lacks the F (fix binary) flag, "
                       "so it cannot run inside a container")  # fmt: skip
    raise KilnError(
        f"cannot run a {platform} step on this {_platform.machine()} machine",
        why=why,
        hint="install QEMU (apt-get install qemu-user-static) and register its handlers "
        "with `kiln setup-qemu` (as root; once per boot, like docker/setup-qemu-action)",
    )


def _description(qemu: str) -> dict[str, str]:
    path = BINFMTS / f"qemu-{qemu}"
    try:
        text = path.read_text()
    except OSError as exc:
        raise KilnError(
            f"no QEMU handler description for {qemu} ({path})",
            hint="apt-get install qemu-user-static",
        ) from exc
    return dict(line.split(" ", 1) for line in text.splitlines() if " " in line)


def register(architectures: list[str]) -> list[str]:
    """Register (or enable) the F-flagged handler of every foreign architecture given;
    returns a line per architecture saying what was done."""
    if not (BINFMT / "register").exists():
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)],
                       check=False, capture_output=True)  # fmt: skip
        if not (BINFMT / "register").exists():
            raise KilnError(f"cannot mount binfmt_misc on {BINFMT}",
                            hint="run as root on a Linux host, not in an unprivileged "
                            "container")  # fmt: skip
    done = []
    for arch in architectures:
        if is_native(arch):
            done.append(f"{arch}: native, no emulator needed")
            continue
        found = handler(arch)
        if found.state == "enabled" and found.fix_binary:
            done.append(f"{arch}: {found.name} already registered ({found.interpreter})")
            continue
        if found.state != "missing":  # there without the F flag, or disabled: replace it
            (BINFMT / found.name).write_text("-1")
        desc = _description(qemu_name(arch))
        interpreter = desc.get("interpreter", "")
        if not os.path.exists(interpreter):
            raise KilnError(f"the QEMU interpreter {interpreter} is missing",
                            hint="apt-get install qemu-user-static")  # fmt: skip
        flags = "F" + ("P" if desc.get("preserve") == "yes" else "")
        flags += "C" if desc.get("credentials") == "yes" else ""
        line = (f":{found.name}:M:{desc.get('offset', '0')}:{desc['magic']}:{desc['mask']}:"
                f"{interpreter}:{flags}")  # fmt: skip
        try:
            (BINFMT / "register").write_text(line)
        except OSError as exc:
            raise KilnError(f"cannot register {found.name}: {exc}") from exc
        done.append(f"{arch}: registered {found.name} ({interpreter}, flags {flags})")
    return done


def foreign_architectures() -> list[str]:
    """Every architecture kiln knows that this machine needs QEMU for and has an emulator
    description of (Debian's qemu-user-static installs them)."""
    found = [arch for arch in _QEMU if not is_native(arch)
             and (BINFMTS / f"qemu-{qemu_name(arch)}").exists()]  # fmt: skip
    if not found:
        raise KilnError("no QEMU emulator is installed", hint="apt-get install qemu-user-static")
    return found
