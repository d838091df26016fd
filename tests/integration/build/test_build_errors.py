"""Bad input: one clear error, a non-zero exit, no traceback, nothing half-written."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.fixtures.build import corrupt, make_context

pytestmark = pytest.mark.integration


def _clean_failure(run, *needles: str, code: int) -> None:
    """Exit *code* (2: a usage, Dockerfile or context error; 1: the build or a registry
    failed), no traceback, every needle in the message."""
    assert run.returncode == code, run.stderr
    assert "Traceback" not in run.stderr
    for needle in needles:
        assert needle in run.stderr, run.stderr


def test_unknown_instruction_names_file_and_line(kiln, tmp_path: Path):
    ctx = make_context(tmp_path / "ctx", "FROM scratch\nCOPY a /a\nFROOB x\n", {"a": "a"})
    run = kiln("build", ctx)
    _clean_failure(run, "Dockerfile:3", "unknown instruction: FROOB", code=2)


def test_unknown_flag_and_stage(kiln, tmp_path: Path):
    ctx = make_context(tmp_path / "ctx", "FROM scratch\nCOPY --frm=x a /a\n", {"a": "a"})
    _clean_failure(kiln("build", ctx), "Dockerfile:2", "unknown flag for COPY: --frm", code=2)
    ctx = make_context(tmp_path / "ctx2", "FROM scratch\nCOPY --from=7 a /a\n", {"a": "a"})
    _clean_failure(kiln("build", ctx), "Dockerfile:2", "stage 7 does not exist", code=2)


def test_missing_build_arg_in_from(kiln, tmp_path: Path):
    ctx = make_context(tmp_path / "ctx", "ARG BASE\nFROM ${BASE}\nRUN true\n")
    _clean_failure(kiln("build", ctx), "Dockerfile:2", "should not be blank", "--build-arg",
                   code=2)  # fmt: skip


def test_copy_source_missing_or_outside_context(kiln, tmp_path: Path):
    ctx = make_context(tmp_path / "ctx", "FROM scratch\nCOPY missing.txt /x\n")
    _clean_failure(kiln("build", ctx), "missing.txt", "not found", code=2)
    ctx = make_context(tmp_path / "ctx2", "FROM scratch\nCOPY ../secret /x\n")
    (tmp_path / "secret").write_text("no")
    _clean_failure(kiln("build", ctx), "outside the build context", code=2)


def test_failing_run_reports_exit_code_and_output_tail(kiln, busybox_image, tmp_path: Path):
    ctx = make_context(
        tmp_path / "ctx",
        f"FROM {busybox_image}\nRUN echo first line && echo 'it broke here' >&2 && exit 7\n",
    )
    root = tmp_path / "root"
    run = kiln("build", ctx, root=root)
    _clean_failure(run, "exit code: 7", "it broke here", "RUN echo first line", code=1)
    # nothing half-written: no cache entry for the failed step, no leftover mounts
    assert not list((root / "cache" / "keys").glob("*.json"))
    mounts = Path("/proc/mounts").read_text()
    assert str(root) not in mounts


def test_unreachable_registry(kiln, tmp_path: Path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = make_context(tmp_path / "ctx", f"FROM 127.0.0.1:{port}/nothing:latest\nRUN true\n")
    _clean_failure(kiln("build", ctx), f"127.0.0.1:{port}", code=1)


def test_unauthorised_registry_then_login(kiln, auth_registry, busybox_image, tmp_path: Path):
    ctx = make_context(tmp_path / "ctx", f"FROM {busybox_image}\nRUN echo private > /p\n")
    ref = f"{auth_registry.host}/private/app:1"
    docker_config = tmp_path / "docker"
    env = {"DOCKER_CONFIG": str(docker_config)}
    run = kiln("build", "-t", ref, "--push", ctx, env=env)
    _clean_failure(run, auth_registry.host, "kiln login", code=1)
    login = subprocess.run(
        [
            sys.executable,
            "-m",
            "kiln.cli.main",
            "login",
            auth_registry.host,
            "-u",
            auth_registry.username,
            "--password-stdin",
        ],
        input=auth_registry.password,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
    )
    assert login.returncode == 0, login.stderr
    kiln("build", "-t", ref, "--push", ctx, env=env).check()
    # a second machine pulls the private image as a base
    child = make_context(tmp_path / "child", f"FROM {ref}\nRUN cat /p\n")
    kiln("build", child, root=tmp_path / "root2", env=env).check()


def test_failed_push_leaves_no_manifest(kiln, busybox_image, registry, tmp_path: Path):
    """The manifest goes last: a push that fails on a blob publishes no tag."""
    ctx = make_context(tmp_path / "ctx", f"FROM {busybox_image}\nRUN echo x > /x\n")
    root = tmp_path / "root"
    ref = f"{registry.host}/test/partial:1"
    kiln("build", ctx, root=root).check()
    # corrupt the locally stored layer (same size, other bytes): the registry refuses
    # its upload by digest verification
    blobs = sorted((root / "blobs" / "sha256").iterdir(), key=lambda p: p.stat().st_mtime)
    corrupt(blobs[-1])
    run = kiln("build", "-t", ref, "--push", ctx, root=root)
    _clean_failure(run, ref.rsplit(":", 1)[0], code=1)
    proc = subprocess.run(
        ["skopeo", "inspect", "--tls-verify=false", f"docker://{ref}"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0


def test_truncated_local_blob_is_a_miss(kiln, busybox_image, registry, tmp_path: Path):
    ctx = make_context(tmp_path / "ctx", f"FROM {busybox_image}\nRUN echo x > /x\n")
    root = tmp_path / "root"
    kiln("build", ctx, root=root).check()
    blobs = sorted((root / "blobs" / "sha256").iterdir(), key=lambda p: p.stat().st_mtime)
    blobs[-1].write_bytes(b"trunc")
    run = kiln("build", "-t", f"{registry.host}/test/trunc:1", "--push", ctx, root=root).check()
    assert run.ran == ["build 2/2 RUN echo x > /x"]


def _kill_container_of(marker: str) -> None:
    """SIGKILL what may be left of a killed build's RUN step: the processes whose command
    line holds *marker* (the step's shell) and every process in their PID namespace (the
    container's) — and nothing else on the machine (no ``pkill -f``)."""
    own_ns = os.readlink("/proc/self/ns/pid")
    found: dict[int, str] = {}
    marked: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            found[int(entry.name)] = os.readlink(entry / "ns" / "pid")
        except OSError:
            continue  # gone meanwhile
        if marker.encode() in cmdline:
            marked.add(int(entry.name))
    namespaces = {found[pid] for pid in marked} - {own_ns}
    for pid, ns in found.items():
        if pid in marked or ns in namespaces:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_a_killed_build_leaves_nothing_behind(busybox_image, tmp_path: Path, need_root):
    """kill -9 in the middle of a RUN: the next kiln run unmounts and removes the debris,
    and the step (never committed to the cache) simply runs again."""
    marker = f"kiln-killed-{secrets.token_hex(4)}"
    ctx = make_context(tmp_path / "ctx", f"FROM {busybox_image}\nRUN sleep 30 && echo {marker}\n")
    root = tmp_path / "root"
    env = {**os.environ, "KILN_ROOT": str(root)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "kiln.cli.main", "build", "--progress", "plain", str(ctx)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 30
    while str(root) not in Path("/proc/mounts").read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert str(root) in Path("/proc/mounts").read_text(), "the step never started"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    _kill_container_of(marker)
    ctx2 = make_context(tmp_path / "ctx2", f"FROM {busybox_image}\nRUN true\n")
    run = subprocess.run(
        [sys.executable, "-m", "kiln.cli.main", "build", "--progress", "plain", str(ctx2)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert str(root) not in Path("/proc/mounts").read_text()
    assert list((root / "tmp").iterdir()) == []
    # only RUN true's entry: the killed step was never committed
    assert len(list((root / "cache" / "keys").glob("*.json"))) == 1
