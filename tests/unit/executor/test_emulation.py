"""QEMU handlers: what a missing, disabled or container-unsafe one says, and registration
from Debian's handler descriptions (a fake binfmt_misc directory: no kernel state)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.errors import KilnError
from kiln.executor import emulation


@pytest.fixture
def binfmt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "binfmt_misc"
    folder.mkdir()
    (folder / "register").write_text("")
    descriptions = tmp_path / "binfmts"
    descriptions.mkdir()
    interpreter = tmp_path / "qemu-aarch64-static"
    interpreter.write_text("")
    (descriptions / "qemu-aarch64").write_text(
        f"package qemu-user-static\ninterpreter {interpreter}\nmagic \\x7fELF\noffset 0\n"
        "mask \\xff\\xff\\xff\\xff\ncredentials no\nfix_binary yes\npreserve yes\n"
    )
    monkeypatch.setattr(emulation, "BINFMT", folder)
    monkeypatch.setattr(emulation, "BINFMTS", descriptions)
    monkeypatch.setattr(emulation, "is_native", lambda arch: arch == "amd64")
    return folder


def handler_file(binfmt: Path, state: str, flags: str) -> None:
    (binfmt / "qemu-aarch64").write_text(
        f"{state}\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: {flags}\n"
    )


@pytest.mark.parametrize(
    ("state", "flags", "needle"),
    [
        (None, "", "no binfmt_misc handler qemu-aarch64 is registered"),
        ("disabled", "PF", "qemu-aarch64 is disabled"),
        ("enabled", "P", "lacks the F (fix binary) flag"),
    ],
)
def test_a_foreign_step_without_a_usable_emulator_says_how_to_get_one(
    binfmt: Path, state: str | None, flags: str, needle: str
):
    if state is not None:
        handler_file(binfmt, state, flags)
    with pytest.raises(KilnError) as info:
        emulation.require("arm64", "linux/arm64")
    text = str(info.value)
    assert "cannot run a linux/arm64 step" in text and needle in text
    assert "apt-get install qemu-user-static" in text and "kiln setup-qemu" in text


def test_an_enabled_fix_binary_handler_or_a_native_platform_needs_nothing(binfmt: Path):
    emulation.require("amd64", "linux/amd64")  # native: no handler looked at
    handler_file(binfmt, "enabled", "PF")
    emulation.require("arm64", "linux/arm64")


def test_register_writes_an_F_flagged_handler_from_the_debian_description(binfmt: Path):
    done = emulation.register(["arm64", "amd64"])
    line = (binfmt / "register").read_text()
    assert line.startswith(":qemu-aarch64:M:0:\\x7fELF:\\xff\\xff\\xff\\xff:")
    assert line.endswith(":FP")  # fix binary (works in containers), preserve argv[0]
    assert done[1] == "amd64: native, no emulator needed"
    handler_file(binfmt, "enabled", "PF")  # what the kernel then shows
    (binfmt / "register").write_text("")
    assert "already registered" in emulation.register(["arm64"])[0]
    assert (binfmt / "register").read_text() == ""  # idempotent: nothing written again


def test_a_handler_without_the_F_flag_is_replaced(binfmt: Path):
    handler_file(binfmt, "enabled", "P")
    emulation.register(["arm64"])
    assert (binfmt / "qemu-aarch64").read_text() == "-1"  # removed, then registered anew
    assert (binfmt / "register").read_text().endswith(":FP")


def test_register_without_the_emulator_package_says_what_to_install(binfmt: Path):
    (emulation.BINFMTS / "qemu-aarch64").unlink()
    with pytest.raises(KilnError, match="no QEMU handler description") as info:
        emulation.register(["arm64"])
    assert "apt-get install qemu-user-static" in str(info.value)
