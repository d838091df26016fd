"""Layer chains the overlay mount must handle: repeated layers, and very many of them."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from tests.fixtures.build import make_context

from kiln.snapshot.overlay import mount_overlay, unmount

pytestmark = pytest.mark.integration


def test_byte_identical_layers_in_one_chain_mount(kiln, busybox_image, tmp_path: Path):
    """``RUN true`` three times makes three identical layers (the /dev, /proc, /sys mount
    points): overlayfs refuses a repeated lowerdir, so each is listed once."""
    ctx = make_context(
        tmp_path / "ctx",
        "ARG BASE\nFROM ${BASE}\nRUN true\nRUN true\nRUN true\n"
        "RUN if false; then :; fi\nRUN echo done > /done\n",
    )
    out = tmp_path / "out"
    run = kiln("build", "--build-arg", f"BASE={busybox_image}", "-o", f"type=local,dest={out}",
               ctx).check()  # fmt: skip
    assert len(run.ran) == 5
    assert (out / "done").read_text() == "done\n"


def test_over_a_hundred_lowers_mount(tmp_path: Path, need_root: None) -> None:
    root = tmp_path / "snapshots"
    (root / "l").mkdir(parents=True)
    names = []
    for n in range(150):
        layer = root / f"{n:064x}"
        layer.mkdir()
        (layer / f"file{n}").write_text(f"{n}\n")
        (layer / "top").write_text(f"{n}\n")  # the top-most layer's copy must win
        (root / "l" / f"{n:016x}").symlink_to(f"../{layer.name}")
        names.append(f"l/{n:016x}")
    target = tmp_path / "mnt"
    target.mkdir()
    mount_overlay(root, list(reversed(names)), target)  # top-most first
    try:
        assert (target / "file0").read_text() == "0\n"
        assert (target / "file149").read_text() == "149\n"
        assert (target / "top").read_text() == "149\n"
        assert subprocess.run(["findmnt", str(target)], capture_output=True).returncode == 0
    finally:
        unmount(target)
