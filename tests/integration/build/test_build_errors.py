"""Bad input: one clear error, a non-zero exit, no traceback, nothing half-written."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from tests.fixtures.build import corrupt, make_context

pytestmark = pytest.mark.integration


def _clean_failure(run, *needles: str, code: int | None = None) -> None:
    assert run.returncode != 0
    if code is not None:
        assert run.returncode == code
    assert "Traceback" not in run.stderr
    for needle in needles:
        assert needle in run.stderr, run.stderr


def test_unknown_instruction_names_file_and_line(kiln, tmp_path: Path):
    ctx = make_context(tmp_path / "ctx", "FROM scratch\nCOPY a /a\nFROOB x\n", {"a": "a"})
    run = kiln("build", ctx)
    _clean_failure(run, "Dockerfile:3", "unknown instruction: FROOB", code=2)


def test_unknown_flag_and_stage(kiln, tmp_path: Path):
    ctx = make_context(tmp_path / "ctx", "FROM scratch\nCOPY --frm=x a /a\n", {"a": "a"})
    _clean_failure(kiln("build", ctx), "Dockerfile:2", "unknown flag for COPY: --frm")
    ctx = make_context(tmp_path / "ctx2", "FROM scratch\nCOPY --from=7 a /a\n", {"a": "a"})
    _clean_failure(kiln("build", ctx), "Dockerfile:2", "stage 7 does not exist")


def test_missing_build_arg_in_from(kiln, tmp_path: Path):
    ctx = make_context(tmp_path / "ctx", "ARG BASE\nFROM ${BASE}\nRUN true\n")
    _clean_failure(kiln("build", ctx), "Dockerfile:2", "should not be blank", "--build-arg")


def test_copy_source_missing_or_outside_context(kiln, tmp_path: Path):
    ctx = make_context(tmp_path / "ctx", "FROM scratch\nCOPY missing.txt /x\n")
    _clean_failure(kiln("build", ctx), "missing.txt", "not found")
    ctx = make_context(tmp_path / "ctx2", "FROM scratch\nCOPY ../secret /x\n")
    (tmp_path / "secret").write_text("no")
    _clean_failure(kiln("build", ctx), "outside the build context")


def test_failing_run_reports_exit_code_and_output_tail(kiln, busybox_image, tmp_path: Path):
    ctx = make_context(
        tmp_path / "ctx",
        f"FROM {busybox_image}\nRUN echo first line && echo 'it broke here' >&2 && exit 7\n",
    )
    root = tmp_path / "root"
    run = kiln("build", ctx, root=root)
    _clean_failure(run, "exit code: 7", "it broke here", "RUN echo first line")
    # nothing half-written: no cache entry for the failed step, no leftover mounts
    assert not list((root / "cache" / "keys").glob("*.json"))
    mounts = Path("/proc/mounts").read_text()
    assert str(root) not in mounts


def test_unreachable_registry(kiln, tmp_path: Path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = make_context(tmp_path / "ctx", f"FROM 127.0.0.1:{port}/nothing:latest\nRUN true\n")
    _clean_failure(kiln("build", ctx), f"127.0.0.1:{port}")


def test_unauthorised_registry_then_login(kiln, auth_registry, busybox_image, tmp_path: Path):
    ctx = make_context(tmp_path / "ctx", f"FROM {busybox_image}\nRUN echo private > /p\n")
    ref = f"{auth_registry.host}/private/app:1"
    docker_config = tmp_path / "docker"
    env = {"DOCKER_CONFIG": str(docker_config)}
    run = kiln("build", "-t", ref, "--push", ctx, env=env)
    _clean_failure(run, auth_registry.host, "kiln login")
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


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("type=tarball,dest=x", "unknown type 'tarball'"),
        ("type=oci", "dest is required"),
        ("type=local,dest=x,colour=red", "unknown attribute 'colour'"),
        ("type=registry", "no image name"),
        ("type=oci,dest", "is not key=value"),
        ("type=registry,name=example.com/Bad:1", "invalid image reference"),
    ],
)
def test_malformed_output(kiln, tmp_path: Path, spec: str, needle: str):
    ctx = make_context(tmp_path / "ctx", "FROM scratch\n")
    _clean_failure(kiln("build", "-o", spec, ctx), needle, code=2)


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
    assert run.returncode != 0
    assert "Traceback" not in run.stderr
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


def test_a_killed_build_leaves_nothing_behind(busybox_image, tmp_path: Path, need_root):
    """kill -9 in the middle of a RUN: the next kiln run unmounts and removes the debris,
    and the step (never committed to the cache) simply runs again."""
    import signal
    import time

    ctx = make_context(tmp_path / "ctx", f"FROM {busybox_image}\nRUN sleep 30 && echo done\n")
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
    subprocess.run(["pkill", "-KILL", "-f", "sleep 30"], capture_output=True)
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
    assert not list((root / "cache" / "keys").glob("*.json"))[1:]  # only RUN true's entry
