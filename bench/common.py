"""Shared pieces of kiln's benchmark scripts: a local registry, the busybox base image,
a realistic generated build context, and a timed, memory-measured run of the CLI."""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

MULTI_STAGE = """\
ARG BASE
FROM ${BASE} AS deps
COPY vendor/ /opt/vendor/
RUN sleep 1 && du -sk /opt/vendor > /deps.txt

FROM ${BASE} AS build
WORKDIR /src
COPY src/ ./
RUN sleep 2 && find . -type f | wc -l > /count && tar czf /out.tgz .

FROM ${BASE}
COPY --from=deps /deps.txt /app/
COPY --from=build /out.tgz /count /app/
COPY assets/ /app/assets/
COPY app.txt /app/
CMD ["cat", "/app/count"]
"""


@contextmanager
def local_registry(workdir: Path) -> Iterator[str]:
    """A Distribution registry on a free loopback port; yields ``127.0.0.1:PORT``."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = workdir / "registry.yml"
    storage = workdir / "storage"
    config.write_text(
        "version: 0.1\n"
        f"storage: {{filesystem: {{rootdirectory: {storage}}}, delete: {{enabled: true}}}}\n"
        f"http: {{addr: 127.0.0.1:{port}}}\nlog: {{level: error}}\n"
    )
    proc = subprocess.Popen(
        ["docker-registry", "serve", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait()


@dataclass
class Run:
    seconds: float
    peak_rss_mb: float
    metadata: dict[str, Any]


_COMPILED: set[Path] = set()


def compiled(src: Path) -> None:
    """Byte-compile kiln's sources once, as a wheel install does, so that a timed run does
    not compile every module again (``PYTHONDONTWRITEBYTECODE`` is set on this machine)."""
    if src not in _COMPILED:
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(src)], check=True,
                       env={k: v for k, v in os.environ.items()
                            if k != "PYTHONDONTWRITEBYTECODE"})  # fmt: skip
        _COMPILED.add(src)


def run_measured(argv: list[str], env: dict[str, str], **popen: Any
                 ) -> tuple[subprocess.CompletedProcess[bytes], float]:  # fmt: skip
    """Run *argv* to its end; the finished process and its peak RSS in MB (the largest of
    it and its descendants).

    The peak is GNU time's: a process forked from this (large) benchmark would report
    this process's RSS at the fork as its own peak (Linux keeps the high-water mark across
    exec), so the command is started by ``/usr/bin/time``, whose own memory is small."""
    with tempfile.TemporaryDirectory() as tmp:
        rss = Path(tmp) / "rss"
        proc = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", str(rss), *argv], env=env,
                              **popen)  # fmt: skip
        peak_kib = int(rss.read_text().split()[-1])  # after a failure: a note, then %M
    return proc, peak_kib / 1024


def kiln(
    *args: str | Path, root: Path, metadata: bool = True, env: dict[str, str] | None = None
) -> Run:
    """Run the kiln CLI in a subprocess; wall time, peak RSS (:func:`run_measured`) and
    metadata."""
    meta = root.parent / f"{root.name}.meta.json"
    argv = [sys.executable, "-m", "kiln.cli.main", *map(str, args)]
    if metadata and args and args[0] == "build":
        argv[4:4] = ["--metadata-file", str(meta), "--progress", "quiet"]
    env = {**os.environ, **(env or {}), "KILN_ROOT": str(root)}
    compiled(Path(env.get("PYTHONPATH", "").split(os.pathsep)[0] or REPO / "src"))
    start = time.monotonic()
    proc, peak = run_measured(argv, env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seconds = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit(f"kiln {' '.join(map(str, args))} failed:\n{proc.stderr.decode()}")
    data = json.loads(meta.read_text()) if meta.exists() else {}
    return Run(seconds, peak, data)


def busybox_base(registry: str, workdir: Path) -> str:
    ctx = workdir / "base"
    subprocess.run(
        [str(REPO / "scripts" / "busybox-rootfs"), str(ctx / "rootfs")],
        check=True,
        capture_output=True,
    )
    (ctx / "Dockerfile").write_text('FROM scratch\nCOPY rootfs/ /\nCMD ["sh"]\n')
    ref = f"{registry}/bench/busybox:latest"
    kiln("build", "-t", ref, "--push", ctx, root=workdir / "base-root", metadata=False)
    return ref


def generate_context(dest: Path, *, small_files: int = 3000, big_mb: int = 40) -> Path:
    """Thousands of small text files, tens of MB of incompressible data."""
    rng = random.Random(42)
    words = [f"w{n}" for n in range(500)]
    for i in range(small_files):
        path = dest / "src" / f"pkg{i % 40}" / f"mod{i}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(" ".join(rng.choice(words) for _ in range(rng.randint(50, 600))))
    for i in range(4):
        path = dest / "vendor" / f"blob{i}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(big_mb * (1 << 20) // 4))
    (dest / "assets").mkdir(parents=True, exist_ok=True)
    for i in range(50):
        (dest / "assets" / f"a{i}.dat").write_bytes(rng.randbytes(64 << 10))
    (dest / "app.txt").write_text("app v1\n")
    (dest / "Dockerfile").write_text(MULTI_STAGE)
    return dest


@contextmanager
def workdir(prefix: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=os.environ.get("KILN_BENCH_TMP", "/var/tmp")))
    try:
        yield path
    finally:
        subprocess.run(["umount", "-R", str(path)], capture_output=True)
        shutil.rmtree(path, ignore_errors=True)
