"""``kiln du`` / ``kiln prune`` / ``KILN_ROOT_MAX`` on the state real builds leave: the
sizes add up to ``du``'s, a pruned machine rebuilds the same image, the automatic cap
holds build after build, and a prune while a build runs leaves that build whole."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tests.fixtures.build import KilnRun, make_context
from tests.fixtures.kiln_state import du_bytes

pytestmark = pytest.mark.integration

Kiln = Callable[..., KilnRun]

APP = """\
ARG BASE
FROM ${BASE}
COPY app.txt /app.txt
RUN --mount=type=cache,target=/cache cp /app.txt /cache/seen && wc -c /app.txt > /size
RUN head -c 100000 /bin/busybox > /part
"""


def du_json(kiln: Kiln, root: Path | None = None) -> dict[str, Any]:
    run = kiln("du", "--format", "json", "--verbose", root=root).check()
    return json.loads(run.stdout)


def kinds(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {k["kind"]: k for k in doc["kinds"]}


def test_du_adds_up_after_builds(kiln: Kiln, busybox_image: str, kiln_root: Path,
                                 tmp_path: Path) -> None:  # fmt: skip
    ctx = make_context(tmp_path / "ctx", APP, {"app.txt": "one\n"})
    kiln("build", "--build-arg", f"BASE={busybox_image}", ctx).check()
    (ctx / "app.txt").write_text("two\n")
    kiln("build", "--build-arg", f"BASE={busybox_image}", ctx).check()
    doc = du_json(kiln)
    assert doc["total"] == sum(k["size"] for k in doc["kinds"]) == du_bytes(kiln_root)
    found = kinds(doc)
    for kind in ("step cache", "other blobs", "snapshots", "cache mounts"):
        assert found[kind]["size"] > 0 and found[kind]["count"] > 0, kind
    assert found["step cache"]["count"] >= 6  # three steps, two builds
    # nothing is in use and everything can go, but the directories and lock files
    assert doc["reclaimable"] > 0.9 * doc["total"]
    base = [e for e in doc["entries"] if e["kind"] == "other blobs"]
    assert base and all(not e["dangling"] for e in base)  # the base layer, unpacked
    table = kiln("du").check().stdout
    assert "Total:" in table and "cache mounts" in table


def test_prune_all_then_the_same_image_again(kiln: Kiln, busybox_image: str, kiln_root: Path,
                                             tmp_path: Path) -> None:  # fmt: skip
    ctx = make_context(tmp_path / "ctx", APP, {"app.txt": "hello\n"})
    args = ("build", "--build-arg", f"BASE={busybox_image}", ctx)
    env = {"SOURCE_DATE_EPOCH": "1700000000"}
    first = kiln(*args, env=env).check()
    assert len(first.ran) == 3
    kept = kiln("prune", "-f").check()  # dangling only: the cache stays
    assert kiln(*args, env=env).check().ran == []
    assert kept.stdout.strip().splitlines()[-1].startswith("Total:")
    pruned = kiln("prune", "--all", "-f").check()
    assert "step cache" in pruned.stdout and "snapshots" in pruned.stdout
    assert pruned.stdout.strip().splitlines()[-1].startswith("Total:\t")
    after = kinds(du_json(kiln))
    for kind in ("step cache", "other blobs", "snapshots", "cache mounts"):
        assert after[kind]["size"] == 0 and after[kind]["count"] == 0, kind
    again = kiln(*args, env=env).check()
    assert len(again.ran) == 3  # every step ran again
    assert again.metadata["containerimage.digest"] == first.metadata["containerimage.digest"]
    assert kiln(*args, env=env).check().ran == []


@pytest.mark.slow
def test_the_cap_holds_over_twenty_builds(kiln: Kiln, busybox_image: str, kiln_root: Path,
                                          tmp_path: Path) -> None:  # fmt: skip
    dockerfile = "ARG BASE\nFROM ${BASE}\nARG N\nRUN head -c 300000 /dev/urandom > /data.$N\n"
    ctx = make_context(tmp_path / "ctx", dockerfile)

    def build(n: int, cap: str) -> KilnRun:
        return kiln("build", "--build-arg", f"BASE={busybox_image}", "--build-arg", f"N={n}",
                    ctx, env={"KILN_ROOT_MAX": cap}).check()  # fmt: skip

    def kept() -> int:
        return du_bytes(kiln_root) - du_bytes(kiln_root / "tmp")

    build(0, "off")
    one = kept()  # the base image and one build's layer (about 0.6 MB: blob and snapshot)
    cap = one + 1_500_000  # room for about two builds more
    pruning = 0
    for n in range(1, 21):
        run = build(n, str(cap))
        assert len(run.ran) == 1
        size = kept()
        assert size <= cap, f"build {n}: {size} bytes kept, over the cap of {cap}"
        pruning += "least recently used" in run.stderr
    assert pruning >= 8  # every second or third build makes room
    newest = build(20, str(cap))
    assert newest.ran == []  # the newest build's results were kept
    oldest = build(1, str(cap))
    assert len(oldest.ran) == 1  # long gone
    assert kept() <= cap


def _popen_build(ctx: Path, out: Path, root: Path, base: str) -> subprocess.Popen[str]:
    env = dict(os.environ, KILN_ROOT=str(root))
    argv = [sys.executable, "-m", "kiln.cli.main", "build", "--progress", "plain",
            "--build-arg", f"BASE={base}", "-o", f"type=local,dest={out}", str(ctx)]  # fmt: skip
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip


@pytest.mark.slow
def test_a_prune_while_a_build_runs_leaves_it_whole(
    kiln: Kiln, busybox_image: str, kiln_root: Path, tmp_path: Path
) -> None:
    other = make_context(tmp_path / "other", APP, {"app.txt": "unrelated\n"})
    kiln("build", "--build-arg", f"BASE={busybox_image}", other).check()  # prunable state
    slow = """\
ARG BASE
FROM ${BASE}
COPY app.txt /app.txt
RUN --mount=type=cache,target=/cache sh -c 'cp /app.txt /cache/a; sleep 5; \
cat /cache/a /bin/busybox > /result'
"""
    ctx = make_context(tmp_path / "ctx", slow, {"app.txt": "mine\n"})
    out = tmp_path / "out"
    lines: list[str] = []
    with _popen_build(ctx, out, kiln_root, busybox_image) as proc:
        reader = threading.Thread(target=lambda: lines.extend(proc.stderr or []), daemon=True)
        reader.start()
        deadline = time.monotonic() + 60
        while not any("RUN --mount=type=cache" in line for line in lines):
            assert proc.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, "".join(lines)
            time.sleep(0.05)
        time.sleep(1)  # the step is running: its snapshots are mounted, its mount in use
        pruned = kiln("prune", "--all", "-f", "--verbose")
        assert pruned.returncode == 0, pruned.stderr
        shown = f"prune:\n{pruned.stdout}{pruned.stderr}\nbuild:\n"
        assert proc.wait(60) == 0, shown + "".join(lines)
        reader.join(5)
    total = pruned.stdout.strip().splitlines()[-1]
    assert total.startswith("Total:\t") and total != "Total:\t0 B", shown
    assert "in use by running builds" in pruned.stderr, shown
    busybox = (out / "bin" / "busybox").read_bytes()
    assert (out / "result").read_bytes() == b"mine\n" + busybox
    again = kiln("build", "--build-arg", f"BASE={busybox_image}", ctx).check()
    assert again.ran == [], shown + again.stderr  # what the running build used and made stays
    assert kiln("build", "--build-arg", f"BASE={busybox_image}", other).check().ran != []
